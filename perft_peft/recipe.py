"""What every recipe shares: flags and config files, model and data loading (real or ``--tiny``), training with
PerftTrainer, saving the adapter (gathered under ZeRO-3) and pushing it to the Hub.

A recipe script only builds its peft config; the rest is here and tested here. Order matters under DeepSpeed
ZeRO-3: the TrainingArguments are created before the model, so ``from_pretrained`` loads it already partitioned
(``zero3_init_flag`` in the accelerate config) instead of materialising all of Mixtral on every rank.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import yaml

from .data import ensure_pad_token, fixture_path, load_llm_adapters_dataset, make_collator, tokenize_dataset

PROBE_TEXT = "Below is an instruction that describes a task. ### Response:"


def parser(description: str, default_config: str | os.PathLike) -> argparse.ArgumentParser:
    """The flags every recipe has; defaults come from a YAML file (``--config``, the recipe's own by default)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=str(default_config),
                   help="YAML file with this recipe's defaults (the papers' settings); flags override it")
    p.add_argument("--model", help="base model: a Hub id or a local directory")
    p.add_argument("--family", help="transformers model type of the tiny model --tiny builds (e.g. mixtral, olmoe)")
    p.add_argument("--data", help="LLM-Adapters JSON(L) file, directory or Hub dataset id")
    p.add_argument("--tiny_data", help="bundled fixture --tiny trains on (see perft_peft.data.available_fixtures)")
    p.add_argument("--output_dir", required=True, help="where checkpoints and the final adapter are written")
    p.add_argument("--tiny", action="store_true",
                   help="offline smoke run: a tiny model of --family and the bundled fixtures, fp32; the tiny base "
                        "is saved to <output_dir>/tiny_base and recorded as the adapter's base model")
    p.add_argument("--max_steps", type=int, default=-1, help="stop after this many optimizer steps (-1: epochs)")
    p.add_argument("--num_train_epochs", type=float)
    p.add_argument("--learning_rate", type=float)
    p.add_argument("--batch_size", type=int, help="global batch size (micro batch x accumulation x processes)")
    p.add_argument("--micro_batch_size", type=int, help="per-device batch size")
    p.add_argument("--cutoff_len", type=int, help="truncate examples to this many tokens (papers: 256)")
    p.add_argument("--train_on_inputs", type=_bool, help="compute the loss on the prompt too (true/false)")
    p.add_argument("--warmup_steps", type=int)
    p.add_argument("--lr_scheduler_type")
    p.add_argument("--bf16", type=_bool, help="bf16 training (ignored with --tiny)")
    p.add_argument("--gradient_checkpointing", type=_bool)
    p.add_argument("--logging_steps", type=int)
    p.add_argument("--save_steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--report_to", help="none, tensorboard, wandb, ...")
    p.add_argument("--resume_from_checkpoint", help="a checkpoint directory, or 'true' for the latest")
    p.add_argument("--push_to_hub", action="store_true", help="upload the final adapter to --hub_model_id")
    p.add_argument("--hub_model_id", help="<user>/<repo> for --push_to_hub")
    p.add_argument("--probe_logits", action="store_true",
                   help="after training, save the trained (possibly sharded) model's logits on a fixed prompt to "
                        "<output_dir>/probe_logits.safetensors, to check the saved adapter against")
    return p


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse flags over the YAML defaults; check what the flags alone cannot."""
    args = p.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text()) or {}
    unknown = sorted(set(config) - {a.dest for a in p._actions})
    if unknown:
        p.error(f"{args.config} has unknown keys: {', '.join(unknown)}")
    for key, value in config.items():
        if getattr(args, key) in (None, p.get_default(key)) and key not in ("output_dir", "config"):
            setattr(args, key, value)
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id <user>/<repo>")
    if not args.tiny and not args.model:
        p.error("give --model (a Hub id or a local directory), or --tiny for an offline smoke run")
    if args.batch_size % args.micro_batch_size:
        p.error(f"--batch_size {args.batch_size} is not a multiple of --micro_batch_size {args.micro_batch_size}")
    return args


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def training_arguments(args: argparse.Namespace, **method_args):
    """PerftTrainingArguments from the recipe flags. DeepSpeed comes from the accelerate config, never from here."""
    from .trainer import PerftTrainingArguments

    world = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = max(1, args.batch_size // (args.micro_batch_size * world))
    return PerftTrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, num_train_epochs=args.num_train_epochs,
        learning_rate=args.learning_rate, per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=accumulation, warmup_steps=args.warmup_steps,
        lr_scheduler_type=args.lr_scheduler_type, bf16=bool(args.bf16) and not args.tiny,
        gradient_checkpointing=bool(args.gradient_checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=args.logging_steps,
        save_strategy="steps", save_steps=args.save_steps, save_total_limit=2, seed=args.seed,
        report_to=args.report_to, remove_unused_columns=False,
        # Several processes without CUDA need gloo; otherwise every rank silently believes it is rank 0.
        ddp_backend="gloo" if world > 1 and not torch.cuda.is_available() else None,
        use_cpu=not torch.cuda.is_available(),
        **method_args)


def build_tiny_base(args: argparse.Namespace) -> str:
    """--tiny: build and save the tiny base model and tokenizer once, on rank 0, before any DeepSpeed context
    exists (built inside ZeRO-3's partitioning context on one rank, it would wait forever for the others)."""
    from .data import tiny_word_tokenizer
    from .testing import tiny_moe

    path = os.path.join(args.output_dir, "tiny_base")
    if int(os.environ.get("RANK", "0")) == 0 and not os.path.exists(os.path.join(path, "config.json")):
        tokenizer = tiny_word_tokenizer()
        tiny_moe(args.family, vocab_size=len(tokenizer), max_position_embeddings=256).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def load_tokenizer_and_model(path: str, training_args):
    """The base model (partitioned on load under ZeRO-3) and its tokenizer, once the main process has them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with training_args.main_process_first(desc="base model"):
        tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(path))
    dtype = torch.bfloat16 if training_args.bf16 else torch.float32
    return tokenizer, AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def load_training_data(args: argparse.Namespace, tokenizer, training_args):
    source = fixture_path(args.tiny_data) if args.tiny else args.data
    with training_args.main_process_first(desc="tokenising"):
        dataset = load_llm_adapters_dataset(source)
        return tokenize_dataset(dataset, tokenizer, cutoff_len=args.cutoff_len, train_on_inputs=args.train_on_inputs)


def run(args: argparse.Namespace, peft_config, **method_args):
    """Train ``peft_config`` on the base model and data the flags name; save (and push) the final adapter."""
    from peft import get_peft_model

    from . import hub
    from .accounting import parameter_accounting
    from .fsdp import check_fsdp_launch
    from .trainer import PerftTrainer

    model_path = build_tiny_base(args) if args.tiny else args.model
    training_args = training_arguments(args, **method_args)
    check_fsdp_launch(training_args)  # an FSDP config that would silently fall back to DDP stops here
    print(f"[perft-peft] rank {training_args.process_index}/{training_args.world_size} ready", flush=True)
    tokenizer, base = load_tokenizer_and_model(model_path, training_args)
    dataset = load_training_data(args, tokenizer, training_args)
    model = get_peft_model(base, peft_config)
    accounting = parameter_accounting(model)  # as configured: before the trainer may freeze a phase's parameters
    if training_args.process_index == 0:
        print(f"[perft-peft] {accounting}", flush=True)
    trainer = PerftTrainer(model=model, args=training_args, train_dataset=dataset,
                           data_collator=make_collator(tokenizer), processing_class=tokenizer)
    resume = args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=True if resume == "true" else resume)
    trainer.save_model(args.output_dir)  # gathers ZeRO-3 shards; writes on the main process only
    if args.probe_logits:
        save_probe_logits(trainer, tokenizer, args.output_dir)
    if trainer.is_world_process_zero():
        write_run_info(args, world_size=training_args.world_size)
        hub.save_accounting(accounting, args.output_dir)  # for the model card: the saved folder cannot give it
    trainer.accelerator.wait_for_everyone()  # before pushing, so a failed push cannot leave other ranks waiting
    if args.push_to_hub and trainer.is_world_process_zero():
        hub.push_adapter(args.output_dir, args.hub_model_id)
    return trainer


@torch.no_grad()
def save_probe_logits(trainer, tokenizer, output_dir: str) -> None:
    """Logits of the trained model on PROBE_TEXT, computed by every rank together (ZeRO-3 gathers as it goes)."""
    from safetensors.torch import save_file

    model = trainer.model_wrapped
    model.eval()
    batch = tokenizer(PROBE_TEXT, return_tensors="pt").to(trainer.args.device)
    logits = model(**batch).logits.float().cpu()
    if trainer.is_world_process_zero():
        save_file({"input_ids": batch["input_ids"].cpu(), "logits": logits},
                  os.path.join(output_dir, "probe_logits.safetensors"))


def write_run_info(args: argparse.Namespace, **extra) -> None:
    """A small JSON next to the adapter saying how it was made (flags, world size)."""
    info = {**{k: v for k, v in vars(args).items() if k not in ("config",)}, **extra}
    with open(os.path.join(args.output_dir, "run_info.json"), "w") as f:
        json.dump(info, f, indent=2, default=str)
