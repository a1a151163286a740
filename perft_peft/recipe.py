"""What every recipe shares: the peft configs its arguments describe (perft_peft.recipe_args parses them), model and
data loading (real or ``--tiny``), training with PerftTrainer, saving the adapter (gathered under ZeRO-3) and pushing
it to the Hub.

A recipe script only picks its method's arguments and config file; the rest is here and tested here. Order matters
under DeepSpeed ZeRO-3: the TrainingArguments are created (by the parser) before the model, so ``from_pretrained``
loads it already partitioned (``zero3_init_flag`` in the accelerate config) instead of materialising all of Mixtral
on every rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path

import torch

from .data import (
    ORCA_MATH_FIXTURE,
    MixturePart,
    ensure_pad_token,
    fixture_path,
    load_llm_adapters_dataset,
    make_collator,
    tokenize_dataset,
)
from .loracoe import LoraCoeConfig
from .perft import PerftConfig
from .recipe_args import RecipeParser

PROBE_TEXT = "Below is an instruction that describes a task. ### Response:"


def parser(description: str, default_config: str | os.PathLike, method_class: type) -> RecipeParser:
    """A recipe's parser: script arguments, ``method_class`` and PerftTrainingArguments, with ``--config``
    defaulting to the recipe's own YAML file (perft_peft.recipe_args)."""
    return RecipeParser(description, default_config, method_class)


def init_weights(text: str):
    """PerftArguments' init_weights as PerftConfig's."""
    return {"true": True, "false": False}.get(text, text)


def perft_alpha(method) -> int:
    """lora_alpha unless given: 2r for LoRA experts (the paper), r for adapter experts (scale 1, as the authors'
    w2(act(w1 x)) has: mixtral_modification/modeling_mixtral.py, line 825)."""
    if method.lora_alpha is not None:
        return method.lora_alpha
    return method.r if method.expert_type == "adapter" else 2 * method.r


def perft_config(method) -> PerftConfig:
    """The PerftConfig PerftArguments describe; settings of other variants (top_k for E, ...) are left out."""
    routed = method.variant == "R"
    multiplicity = {
        "R": dict(num_experts=method.num_experts, top_k=method.top_k),
        "D": dict(num_experts=method.num_experts),
    }.get(method.variant, {})
    return PerftConfig(
        variant=method.variant,
        r=method.r,
        lora_alpha=perft_alpha(method),
        lora_dropout=method.lora_dropout,
        expert_type=method.expert_type,
        adapter_act=method.adapter_act,
        init_weights=init_weights(method.init_weights),
        norm_topk_prob=bool(method.norm_topk_prob) and routed,
        gate_weights=method.gate_weights if routed else "router",
        task_type="CAUSAL_LM",
        **multiplicity,
    )


def loracoe_config(method):
    """peft's LoraConfig for --method lora (the LoRACoE paper's baseline), else the LoraCoeConfig of the flags."""
    if method.method == "lora":
        from peft import LoraConfig

        return LoraConfig(
            r=method.r,
            lora_alpha=method.lora_alpha,
            target_modules=method.target_modules,
            lora_dropout=method.lora_dropout,
            task_type="CAUSAL_LM",
        )
    return LoraCoeConfig(
        r=method.r,
        lora_alpha=method.lora_alpha,
        num_experts=method.num_experts,
        target_modules=method.target_modules,
        lora_dropout=method.lora_dropout,
        construction=method.construction,
        composition_scale=method.composition_scale,
        init_from_lora=method.init_from_lora,
        task_type="CAUSAL_LM",
    )


def mixture_parts(script, method) -> list[MixturePart]:
    """LoRACoE's data: --data (+ --math_data) with their sizes; --tiny: the bundled commonsense and OrcaMath
    fixtures."""
    if script.tiny:
        return [MixturePart(fixture_path(script.tiny_data)), MixturePart(ORCA_MATH_FIXTURE, format="orca_math")]
    parts = [MixturePart(script.data, method.data_size or None)]
    if method.math_data and method.math_data.lower() != "none":
        parts.append(MixturePart(method.math_data, method.math_data_size or None, "orca_math"))
    return parts


def split_validation(dataset, size: int, seed: int):
    """(training set, validation set or None): ``size`` examples held out at random with ``seed``, as PERFT's
    finetune.py does (``train_test_split(test_size=val_set_size, shuffle=True, seed=42)``, line 296)."""
    if not size:
        return dataset, None
    if size >= len(dataset):
        raise ValueError(f"--val_set_size {size} leaves no training examples: the data has {len(dataset)}.")
    split = dataset.train_test_split(test_size=size, shuffle=True, seed=seed)
    return split["train"], split["test"]


def build_tiny_base(output_dir: str, family: str) -> str:
    """--tiny: build and save the tiny base model and tokenizer once, on rank 0, outside DeepSpeed ZeRO-3's
    partitioning (built inside it on one rank, it would wait forever for the others). A tiny base of another
    family already there is refused: the adapter saved beside it depends on it."""
    from .data import tiny_word_tokenizer
    from .testing import tiny_moe

    path = os.path.join(output_dir, "tiny_base")
    config = os.path.join(path, "config.json")
    if int(os.environ.get("RANK", "0")) != 0:
        return path  # rank 0 builds it; the others read it once it is there (main_process_first)
    if os.path.exists(config):
        saved = json.loads(Path(config).read_text()).get("model_type")
        if saved != family:
            raise ValueError(
                f"{path} holds a tiny {saved} model, but this run asks for --family {family}: "
                "use another --output_dir (the adapter saved there is for that base)."
            )
    else:
        tokenizer = tiny_word_tokenizer()
        with _without_zero3():
            model = tiny_moe(family, vocab_size=len(tokenizer), max_position_embeddings=256)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


@contextlib.contextmanager
def _without_zero3():
    """The training arguments, created first, switch transformers' ZeRO-3 model construction on (accelerate's
    DeepSpeed plugin); the tiny base is built by one rank, so it is built without."""
    from transformers.integrations import deepspeed

    saved = deepspeed._hf_deepspeed_config_weak_ref
    deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        deepspeed._hf_deepspeed_config_weak_ref = saved


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


def load_training_data(script, tokenizer, training_args, load_records=None):
    """Tokenised training set: ``load_records()`` (a recipe's own data, e.g. LoRACoE's mixture), else the
    LLM-Adapters file --data (--tiny: the fixture --tiny_data)."""
    source = fixture_path(script.tiny_data) if script.tiny else script.data
    with training_args.main_process_first(desc="tokenising"):
        dataset = load_records() if load_records is not None else load_llm_adapters_dataset(source)
        return tokenize_dataset(
            dataset, tokenizer, cutoff_len=script.cutoff_len, train_on_inputs=script.train_on_inputs, source=str(source)
        )


# Script settings that do not change what a run computes: left out of its identity.
NOT_IDENTITY = ("probe_logits",)
# Training settings of the identity besides the ones the trainer fingerprints (trainer.IDENTITY_ARGS).
TRAINING_IDENTITY = ("max_steps", "num_train_epochs", "eval_strategy", "eval_steps", "load_best_model_at_end")


def run_identity(script, method, training_args) -> dict:
    """The settings that define the run, as saved in run_info.json: the script's and the method's, and the
    training settings that change the result (not logging, saving, output_dir, the per-device batch size ...)."""
    from .trainer.trainer import IDENTITY_ARGS

    identity = {**dataclasses.asdict(script), **dataclasses.asdict(method)}
    identity.update({k: getattr(training_args, k, None) for k in (*IDENTITY_ARGS, *TRAINING_IDENTITY)})
    args = training_args
    identity["batch_size"] = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return {k: v for k, v in sorted(identity.items()) if k not in NOT_IDENTITY}


def finished_here(output_dir: str, identity: dict) -> bool:
    """Whether ``output_dir`` already holds this very run's final result (same identity, same length)."""
    from .trainer.checkpoints import normalise

    path = os.path.join(output_dir, "run_info.json")
    if not os.path.isfile(path):
        return False
    saved = json.loads(Path(path).read_text()).get("run_identity")
    return saved is not None and saved == normalise(identity)


def run(script, method, training_args, peft_config, load_records=None):
    """Train ``peft_config`` on the base model and data ``script`` names (or ``load_records()``, see
    load_training_data) with ``training_args``; save (and push) the final adapter. The three arguments are what
    ``parser(...).parse()`` returns; ``method`` is only recorded (run_info.json, the run's identity).

    The main process holds a lock on --output_dir throughout; the final adapter, with run_info.json,
    accounting.json, the routing statistics and the probe logits, is written to a staging folder and swapped
    in as a whole. Returns the trainer, or None when --resume_from_checkpoint finds the run already finished.
    """
    from .trainer.output_dir import output_dir_lock, recover

    output_dir = training_args.output_dir
    main = int(os.environ.get("RANK", "0")) == 0
    with output_dir_lock(output_dir) if main else contextlib.nullcontext():
        if main:
            recover(output_dir)
        if training_args.resume_from_checkpoint and finished_here(
            output_dir, run_identity(script, method, training_args)
        ):
            print(
                f"[perft-peft] {output_dir} already holds this run's final adapter: the run is finished, nothing to do",
                flush=True,
            )
            return None
        return _train_and_save(script, method, training_args, peft_config, load_records)


def _train_and_save(script, method, training_args, peft_config, load_records=None):
    from peft import get_peft_model
    from safetensors.torch import save_file

    from . import hub
    from .accounting import parameter_accounting
    from .fsdp import check_fsdp_launch
    from .trainer import PerftTrainer

    output_dir = training_args.output_dir
    model_path = build_tiny_base(output_dir, script.family) if script.tiny else script.model
    # --push_to_hub uploads the final adapter with its card once, below; the Trainer's own pushing (every save,
    # from a staging folder) is off.
    push, training_args.push_to_hub = training_args.push_to_hub, False
    check_fsdp_launch(training_args)  # an FSDP config that would silently fall back to DDP stops here
    print(f"[perft-peft] rank {training_args.process_index}/{training_args.world_size} ready", flush=True)
    tokenizer, base = load_tokenizer_and_model(model_path, training_args, script.cutoff_len)
    data = load_training_data(script, tokenizer, training_args, load_records)
    dataset, validation = split_validation(data, script.val_set_size, training_args.seed)
    model = get_peft_model(base, peft_config)
    accounting = parameter_accounting(model)  # as configured: before the trainer may freeze a phase's parameters
    if training_args.process_index == 0:
        print(f"[perft-peft] {accounting}", flush=True)
    identity = run_identity(script, method, training_args)
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
    resume = training_args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=True if resume == "true" else resume)
    probe = probe_logits(trainer, tokenizer) if script.probe_logits else None  # every rank: ZeRO-3 gathers

    def beside_the_adapter(folder: str) -> None:
        trainer.routing.save(folder)
        write_run_info(
            folder,
            script,
            method,
            training_args,
            world_size=training_args.world_size,
            global_step=trainer.state.global_step,
            run_identity=identity,
        )
        hub.save_accounting(accounting, folder)  # for the model card: the saved folder cannot give it
        if probe is not None:
            save_file(probe, os.path.join(folder, "probe_logits.safetensors"))

    trainer.save_model(output_dir, extra=beside_the_adapter)  # one swap: the adapter and all of the above
    trainer.accelerator.wait_for_everyone()  # before pushing, so a failed push cannot leave other ranks waiting
    if push and trainer.is_world_process_zero():
        hub.push_adapter(output_dir, training_args.hub_model_id)
    return trainer


@torch.no_grad()
def probe_logits(trainer, tokenizer) -> dict[str, torch.Tensor]:
    """Logits of the trained model on PROBE_TEXT, computed by every rank together (ZeRO-3 gathers as it goes)."""
    model = trainer.model_wrapped
    model.eval()
    batch = tokenizer(PROBE_TEXT, return_tensors="pt").to(trainer.args.device)
    return {"input_ids": batch["input_ids"].cpu(), "logits": model(**batch).logits.float().cpu()}


def write_run_info(folder: str, script, method, training_args, **extra) -> None:
    """A small JSON next to the adapter saying how it was made (every setting, world size, steps, the run's
    identity); tokens are masked, as TrainingArguments.to_dict does."""
    from .trainer.checkpoints import normalise

    settings = {**dataclasses.asdict(script), **dataclasses.asdict(method), **training_args.to_dict()}
    with open(os.path.join(folder, "run_info.json"), "w") as f:
        json.dump(normalise({**settings, **extra}), f, indent=2, default=str)
