"""What every recipe shares: flags and config files, model and data loading (real or ``--tiny``), training with
PerftTrainer, saving the adapter (gathered under ZeRO-3) and pushing it to the Hub.

A recipe script only builds its peft config; the rest is here and tested here. Order matters under DeepSpeed
ZeRO-3: the TrainingArguments are created before the model, so ``from_pretrained`` loads it already partitioned
(``zero3_init_flag`` in the accelerate config) instead of materialising all of Mixtral on every rank.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
from pathlib import Path

import torch
import yaml

from .data import ensure_pad_token, fixture_path, load_llm_adapters_dataset, make_collator, tokenize_dataset

PROBE_TEXT = "Below is an instruction that describes a task. ### Response:"


def parser(description: str, default_config: str | os.PathLike) -> argparse.ArgumentParser:
    """The flags every recipe has; defaults come from a YAML file (``--config``, the recipe's own by default)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument(
        "--config",
        default=str(default_config),
        help="YAML file with this recipe's defaults (the papers' settings); flags override it",
    )
    p.add_argument("--model", help="base model: a Hub id or a local directory")
    p.add_argument("--family", help="transformers model type of the tiny model --tiny builds (e.g. mixtral, olmoe)")
    p.add_argument("--data", help="LLM-Adapters JSON(L) file, directory or Hub dataset id")
    p.add_argument("--tiny_data", help="bundled fixture --tiny trains on (see perft_peft.data.available_fixtures)")
    p.add_argument("--output_dir", required=True, help="where checkpoints and the final adapter are written")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="offline smoke run: a tiny model of --family and the bundled fixtures, fp32; the tiny base "
        "is saved to <output_dir>/tiny_base and recorded as the adapter's base model",
    )
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
    p.add_argument(
        "--val_set_size",
        type=int,
        help="hold out this many training examples (shuffled, --seed) and evaluate the loss on them "
        "every --eval_steps (PERFT's finetune.py: 120 every 80 steps); 0: no validation",
    )
    p.add_argument(
        "--tiny_val_set_size",
        type=int,
        help="with --tiny, at most this many validation examples (the fixtures are small)",
    )
    p.add_argument("--eval_steps", type=int, help="evaluate on the validation split every this many steps")
    p.add_argument(
        "--load_best_model_at_end",
        type=_bool,
        help="with --val_set_size: end with the checkpoint of lowest validation loss (true/false)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--report_to", help="none, tensorboard, wandb, ...")
    p.add_argument(
        "--resume_from_checkpoint",
        help="a checkpoint directory, or 'true' for the latest intact one; refused if another run (other "
        "settings) wrote it, and a no-op if --output_dir already holds this run's final adapter",
    )
    p.add_argument(
        "--resume_from_other_run",
        action="store_true",
        help="resume even from a checkpoint whose run fingerprint differs from this run's",
    )
    p.add_argument("--push_to_hub", action="store_true", help="upload the final adapter to --hub_model_id")
    p.add_argument("--hub_model_id", help="<user>/<repo> for --push_to_hub")
    p.add_argument(
        "--probe_logits",
        action="store_true",
        help="after training, save the trained (possibly sharded) model's logits on a fixed prompt to "
        "<output_dir>/probe_logits.safetensors, to check the saved adapter against",
    )
    return p


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse flags over the YAML defaults; check what the flags alone cannot."""
    args = p.parse_args(argv)
    if args.tiny and args.data is not None:
        p.error(
            "--tiny trains on a bundled fixture (--tiny_data) with a tokenizer built from its words; it cannot "
            "use --data. Drop --tiny to train on --data, or choose a fixture with --tiny_data."
        )
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
    problem = check_numbers(args)
    if problem:
        p.error(problem)
    args.val_set_size = args.val_set_size or 0
    if args.tiny and args.val_set_size and args.tiny_val_set_size is not None:
        args.val_set_size = min(args.val_set_size, args.tiny_val_set_size)
    if args.val_set_size < 0:
        p.error(f"--val_set_size must be 0 or more, got {args.val_set_size}")
    eval_every = args.eval_steps or args.logging_steps
    if args.val_set_size and args.load_best_model_at_end and args.save_steps % eval_every:
        p.error(
            f"--load_best_model_at_end needs --save_steps ({args.save_steps}) to be a multiple of --eval_steps "
            f"({eval_every})"
        )
    if args.batch_size % args.micro_batch_size:
        p.error(f"--batch_size {args.batch_size} is not a multiple of --micro_batch_size {args.micro_batch_size}")
    return args


# Flags that must be > 0, or >= 0, when given; every float flag must be finite.
POSITIVE = (
    "batch_size",
    "micro_batch_size",
    "cutoff_len",
    "learning_rate",
    "num_train_epochs",
    "logging_steps",
    "save_steps",
    "r",
    "lora_alpha",
    "num_experts",
    "top_k",
    "loracoe_warmup_learning_rate",
)
NON_NEGATIVE = ("warmup_steps", "router_aux_loss_coef", "lora_dropout", "loracoe_warmup_steps", "loracoe_warmup_epochs")


def check_numbers(args: argparse.Namespace) -> str | None:
    """What is wrong with the numeric flags (after the config file is applied), or None."""
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"--{name} must be a finite number, got {value}"
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if name in POSITIVE and value <= 0:
            return f"--{name} must be > 0, got {value}"
        if name in NON_NEGATIVE and value < 0:
            return f"--{name} must be >= 0, got {value}"
    if args.max_steps == 0 or args.max_steps < -1:
        return f"--max_steps must be a positive number of steps, or -1 for --num_train_epochs; got {args.max_steps}"
    return None


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def init_weights(text: str | None):
    """A PERFT recipe's --init_weights flag as PerftConfig's init_weights."""
    return {"true": True, "false": False, None: True}.get(text, text)


def perft_alpha(args: argparse.Namespace) -> int:
    """lora_alpha unless given: 2r for LoRA experts (the paper), r for adapter experts (scale 1, as the authors'
    w2(act(w1 x)) has: mixtral_modification/modeling_mixtral.py, line 825)."""
    if args.lora_alpha is not None:
        return args.lora_alpha
    return args.r if args.expert_type == "adapter" else 2 * args.r


def training_arguments(args: argparse.Namespace, **method_args):
    """PerftTrainingArguments from the recipe flags. DeepSpeed comes from the accelerate config, never from here."""
    from .trainer import PerftTrainingArguments

    world = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = max(1, args.batch_size // (args.micro_batch_size * world))
    return PerftTrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        num_train_epochs=args.num_train_epochs,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type=args.lr_scheduler_type,
        bf16=bool(args.bf16) and not args.tiny,
        gradient_checkpointing=bool(args.gradient_checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=args.logging_steps,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=2,
        seed=args.seed,
        report_to=args.report_to,
        remove_unused_columns=False,
        # Several processes without CUDA need gloo; otherwise every rank silently believes it is rank 0.
        ddp_backend="gloo" if world > 1 and not torch.cuda.is_available() else None,
        use_cpu=not torch.cuda.is_available(),
        **validation_arguments(args),
        **method_args,
    )


def validation_arguments(args: argparse.Namespace) -> dict:
    """Evaluation on the held-out split, as PERFT's finetune.py (lines 328-334) sets it, when there is one."""
    if not args.val_set_size:
        return {}
    return dict(
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        per_device_eval_batch_size=args.micro_batch_size,
        load_best_model_at_end=bool(args.load_best_model_at_end),
        metric_for_best_model="eval_loss",
    )


def split_validation(dataset, args: argparse.Namespace):
    """(training set, validation set or None): ``val_set_size`` examples held out at random with ``seed``, as
    PERFT's finetune.py does (``train_test_split(test_size=val_set_size, shuffle=True, seed=42)``, line 296)."""
    if not args.val_set_size:
        return dataset, None
    if args.val_set_size >= len(dataset):
        raise ValueError(
            f"--val_set_size {args.val_set_size} leaves no training examples: the data has {len(dataset)}."
        )
    split = dataset.train_test_split(test_size=args.val_set_size, shuffle=True, seed=args.seed)
    return split["train"], split["test"]


def build_tiny_base(args: argparse.Namespace) -> str:
    """--tiny: build and save the tiny base model and tokenizer once, on rank 0, before any DeepSpeed context
    exists (built inside ZeRO-3's partitioning context on one rank, it would wait forever for the others).
    A tiny base of another family already there is refused: the adapter saved beside it depends on it."""
    from .data import tiny_word_tokenizer
    from .testing import tiny_moe

    path = os.path.join(args.output_dir, "tiny_base")
    config = os.path.join(path, "config.json")
    if int(os.environ.get("RANK", "0")) != 0:
        return path  # rank 0 builds it; the others read it once it is there (main_process_first)
    if os.path.exists(config):
        family = json.loads(Path(config).read_text()).get("model_type")
        if family != args.family:
            raise ValueError(
                f"{path} holds a tiny {family} model, but this run asks for --family {args.family}: "
                "use another --output_dir (the adapter saved there is for that base)."
            )
    else:
        tokenizer = tiny_word_tokenizer()
        tiny_moe(args.family, vocab_size=len(tokenizer), max_position_embeddings=256).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def check_cutoff_len(path: str, cutoff_len: int) -> None:
    """Refuse, before the weights are loaded, a --cutoff_len longer than the model's positions."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    limit = getattr(config.get_text_config(), "max_position_embeddings", None)
    if isinstance(limit, int) and cutoff_len > limit:
        raise ValueError(
            f"--cutoff_len {cutoff_len} is longer than the {limit} positions of {path} "
            "(max_position_embeddings): lower --cutoff_len."
        )


def load_tokenizer_and_model(path: str, training_args, cutoff_len: int):
    """The base model (partitioned on load under ZeRO-3) and its tokenizer, once the main process has them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with training_args.main_process_first(desc="base model"):
        check_cutoff_len(path, cutoff_len)
        tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(path))
    dtype = torch.bfloat16 if training_args.bf16 else torch.float32
    return tokenizer, AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def load_training_data(args: argparse.Namespace, tokenizer, training_args, load_records=None):
    """Tokenised training set: ``load_records(args)`` (a recipe's own data, e.g. LoRACoE's mixture), else the
    LLM-Adapters file --data (--tiny: the fixture --tiny_data)."""
    source = fixture_path(args.tiny_data) if args.tiny else args.data
    with training_args.main_process_first(desc="tokenising"):
        dataset = load_records(args) if load_records is not None else load_llm_adapters_dataset(source)
        return tokenize_dataset(
            dataset, tokenizer, cutoff_len=args.cutoff_len, train_on_inputs=args.train_on_inputs, source=str(source)
        )


# Flags that do not change what a run computes: left out of its identity.
NOT_IDENTITY = (
    "config",
    "output_dir",
    "resume_from_checkpoint",
    "resume_from_other_run",
    "push_to_hub",
    "hub_model_id",
    "probe_logits",
    "report_to",
    "logging_steps",
    "save_steps",
    "gradient_checkpointing",
    "micro_batch_size",
)


def run_identity(args: argparse.Namespace) -> dict:
    """The flags that define the run, as saved in run_info.json."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_IDENTITY}


def finished_here(args: argparse.Namespace) -> bool:
    """Whether --output_dir already holds this very run's final result (same identity, same length)."""
    from .trainer.checkpoints import normalise

    path = os.path.join(args.output_dir, "run_info.json")
    if not os.path.isfile(path):
        return False
    saved = json.loads(Path(path).read_text()).get("run_identity")
    return saved is not None and saved == normalise(run_identity(args))


def run(args: argparse.Namespace, peft_config, load_records=None, **method_args):
    """Train ``peft_config`` on the base model and data the flags name (or ``load_records(args)``, see
    load_training_data); save (and push) the final adapter.

    The main process holds a lock on --output_dir throughout; the final adapter, with run_info.json,
    accounting.json, the routing statistics and the probe logits, is written to a staging folder and swapped
    in as a whole. Returns the trainer, or None when --resume_from_checkpoint finds the run already finished.
    """
    from .trainer.output_dir import output_dir_lock, recover

    main = int(os.environ.get("RANK", "0")) == 0
    with output_dir_lock(args.output_dir) if main else contextlib.nullcontext():
        if main:
            recover(args.output_dir)
        if args.resume_from_checkpoint and finished_here(args):
            print(
                f"[perft-peft] {args.output_dir} already holds this run's final adapter: the run is finished, "
                "nothing to do",
                flush=True,
            )
            return None
        return _train_and_save(args, peft_config, load_records, **method_args)


def _train_and_save(args: argparse.Namespace, peft_config, load_records=None, **method_args):
    from peft import get_peft_model
    from safetensors.torch import save_file

    from . import hub
    from .accounting import parameter_accounting
    from .fsdp import check_fsdp_launch
    from .trainer import PerftTrainer

    model_path = build_tiny_base(args) if args.tiny else args.model
    training_args = training_arguments(args, resume_from_other_run=args.resume_from_other_run, **method_args)
    check_fsdp_launch(training_args)  # an FSDP config that would silently fall back to DDP stops here
    print(f"[perft-peft] rank {training_args.process_index}/{training_args.world_size} ready", flush=True)
    tokenizer, base = load_tokenizer_and_model(model_path, training_args, args.cutoff_len)
    dataset, validation = split_validation(load_training_data(args, tokenizer, training_args, load_records), args)
    model = get_peft_model(base, peft_config)
    accounting = parameter_accounting(model)  # as configured: before the trainer may freeze a phase's parameters
    if training_args.process_index == 0:
        print(f"[perft-peft] {accounting}", flush=True)
    identity = run_identity(args)
    trainer = PerftTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=validation,
        data_collator=make_collator(tokenizer),
        processing_class=tokenizer,
        run_identity={k: v for k, v in identity.items() if k not in ("max_steps", "num_train_epochs")},
    )
    trainer.routing_stats_on_train_end = False  # written with the adapter, below
    resume = args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=True if resume == "true" else resume)
    probe = probe_logits(trainer, tokenizer) if args.probe_logits else None  # every rank: ZeRO-3 gathers

    def beside_the_adapter(folder: str) -> None:
        trainer.routing.save(folder)
        write_run_info(
            args,
            folder,
            world_size=training_args.world_size,
            global_step=trainer.state.global_step,
            run_identity=identity,
        )
        hub.save_accounting(accounting, folder)  # for the model card: the saved folder cannot give it
        if probe is not None:
            save_file(probe, os.path.join(folder, "probe_logits.safetensors"))

    trainer.save_model(args.output_dir, extra=beside_the_adapter)  # one swap: the adapter and all of the above
    trainer.accelerator.wait_for_everyone()  # before pushing, so a failed push cannot leave other ranks waiting
    if args.push_to_hub and trainer.is_world_process_zero():
        hub.push_adapter(args.output_dir, args.hub_model_id)
    return trainer


@torch.no_grad()
def probe_logits(trainer, tokenizer) -> dict[str, torch.Tensor]:
    """Logits of the trained model on PROBE_TEXT, computed by every rank together (ZeRO-3 gathers as it goes)."""
    model = trainer.model_wrapped
    model.eval()
    batch = tokenizer(PROBE_TEXT, return_tensors="pt").to(trainer.args.device)
    return {"input_ids": batch["input_ids"].cpu(), "logits": model(**batch).logits.float().cpu()}


def write_run_info(args: argparse.Namespace, folder: str, **extra) -> None:
    """A small JSON next to the adapter saying how it was made (flags, world size, steps, the run's identity)."""
    from .trainer.checkpoints import normalise

    info = normalise({**{k: v for k, v in vars(args).items() if k not in ("config",)}, **extra})
    with open(os.path.join(folder, "run_info.json"), "w") as f:
        json.dump(info, f, indent=2, default=str)
