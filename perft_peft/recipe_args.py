"""The recipes' arguments, parsed as TRL's scripts parse theirs: transformers' ``HfArgumentParser`` over three
dataclasses (the script arguments every recipe shares, the method's settings, ``PerftTrainingArguments``), with a
``--config`` YAML that may set any of their fields and command-line flags that override it.

Not ``trl.TrlParser`` (trl is no dependency of the package): it applies a config file's values as argparse defaults,
which argparse never checks against a type or choices, and reports unknown keys only as a plain ValueError. Here a
file's values are parsed as the flags they stand for, so a bad value or key stops the run naming the file and key.

Each setting is declared once: the method dataclasses take their fields (type, default, help) from ``PerftConfig``,
``LoraCoeConfig`` and peft's ``LoraConfig``, and nothing ``TrainingArguments`` has is declared again. Everything is
checked before a model exists: unknown keys and bad values stop the run with an error naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml
from peft import LoraConfig
from transformers import HfArgumentParser

from .baselines import TARGETS
from .init import PERFT_INIT
from .loracoe.config import COMPOSITION_SCALES, CONSTRUCTIONS, LoraCoeConfig
from .perft.config import EXPERT_TYPES, GATE_WEIGHTS, VARIANTS, PerftConfig


@dataclass
class ScriptArguments:
    """What every recipe needs besides the method and the training settings: the model, the data, --tiny."""

    _argument_group_name = "script arguments"

    model: Optional[str] = field(default=None, metadata={"help": "Base model: a Hub id or a local directory."})
    family: Optional[str] = field(
        default=None, metadata={"help": "transformers model type of the tiny model --tiny builds (mixtral, olmoe)."}
    )
    data: Optional[str] = field(default=None, metadata={"help": "LLM-Adapters JSON(L) file, directory or Hub id."})
    tiny: bool = field(
        default=False,
        metadata={
            "help": "Offline smoke run: a tiny model of --family and the bundled fixtures, fp32 (--bf16 is "
            "ignored); the tiny base is saved to <output_dir>/tiny_base and recorded as the adapter's base model."
        },
    )
    tiny_data: Optional[str] = field(
        default=None, metadata={"help": "Bundled fixture --tiny trains on (perft_peft.data.available_fixtures)."}
    )
    batch_size: Optional[int] = field(
        default=None,
        metadata={
            "help": "Global batch size: sets --gradient_accumulation_steps to batch_size / "
            "(per_device_train_batch_size x processes), so a setting means the same on any number of GPUs."
        },
    )
    cutoff_len: int = field(default=256, metadata={"help": "Truncate examples to this many tokens (papers: 256)."})
    train_on_inputs: bool = field(default=True, metadata={"help": "Compute the loss on the prompt too."})
    val_set_size: int = field(
        default=0,
        metadata={
            "help": "Hold out this many training examples (shuffled with --seed) and evaluate the loss on them "
            "every --eval_steps (PERFT's finetune.py: 120 every 80 steps); 0: no validation."
        },
    )
    tiny_val_set_size: Optional[int] = field(
        default=None, metadata={"help": "With --tiny, at most this many validation examples (the fixtures are small)."}
    )
    probe_logits: bool = field(
        default=False,
        metadata={
            "help": "After training, save the trained (possibly sharded) model's logits on a fixed prompt to "
            "<output_dir>/probe_logits.safetensors, to check the saved adapter against."
        },
    )


def method_arguments(name: str, config_class, names: tuple[str, ...], **overrides) -> type:
    """A dataclass of ``config_class``'s fields ``names`` (their types, defaults and help), so a recipe declares no
    setting of its method twice; ``overrides`` maps a field to ``(type, default)`` or ``(type, default, help)``,
    where the flag needs a parseable type (a Literal of the choices) or the recipe another default."""
    hints = typing.get_type_hints(config_class)
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    out = []
    for key in names:
        source = fields[key]
        kind, default, *help_ = overrides.get(key, (hints[key], source.default))
        text = help_[0] if help_ else source.metadata.get("help", "")
        out.append((key, kind, field(default=default, metadata={"help": text})))
    return dataclasses.make_dataclass(name, out, namespace={"_argument_group_name": f"{name} (method)"})


def _choices(values) -> type:
    return Literal[tuple(values)]


_ALPHA_HELP = (
    "Scale numerator; unset: 2r for LoRA experts as in the paper, r (scale 1) for adapter experts as in the "
    "authors' code."
)

PerftArguments = method_arguments(
    "PerftArguments",
    PerftConfig,
    (
        "variant",
        "num_experts",
        "top_k",
        "r",
        "lora_alpha",
        "lora_dropout",
        "expert_type",
        "adapter_act",
        "init_weights",
        "norm_topk_prob",
        "gate_weights",
    ),
    variant=(_choices(VARIANTS), "R"),
    lora_alpha=(Optional[int], None, _ALPHA_HELP),
    expert_type=(_choices(EXPERT_TYPES), "lora"),
    init_weights=(_choices(("true", "false", PERFT_INIT)), PERFT_INIT),
    gate_weights=(_choices(GATE_WEIGHTS), "router"),
)

_LoraCoeFields = method_arguments(
    "LoraCoeArguments",
    LoraCoeConfig,
    ("r", "lora_alpha", "num_experts", "target_modules", "lora_dropout", "construction", "composition_scale"),
    lora_alpha=(int, 16),
    target_modules=(Optional[list[str]], None),
    construction=(_choices(CONSTRUCTIONS), "composition"),
    composition_scale=(_choices(COMPOSITION_SCALES), "rank"),
)


@dataclass
class LoraCoeArguments(_LoraCoeFields):
    """LoRACoE's settings plus the recipe's: its data mixture, the LoRA baseline, the ablations."""

    _argument_group_name = "LoraCoeArguments (method)"

    method: Literal["loracoe", "lora"] = field(
        default="loracoe",
        metadata={"help": "loracoe, or the baseline: peft LoRA on the same targets and data."},
    )
    math_data: Optional[str] = field(
        default=None,
        metadata={"help": "OrcaMath (question/answer) Hub id or JSON(L) file mixed with --data; 'none': --data alone."},
    )
    data_size: int = field(default=0, metadata={"help": "Records sampled from --data (0: all)."})
    math_data_size: int = field(default=0, metadata={"help": "Records sampled from --math_data (0: all)."})
    init_from_lora: Optional[str] = field(
        default=None, metadata={"help": "Start from this saved peft LoRA instead of a warmup."}
    )
    no_warmup: bool = field(
        default=False,
        metadata={"help": "Ablation (Table 3): no LoRA warmup, LoRA and router trained jointly from the start."},
    )
    save_without_router: bool = field(
        default=False,
        metadata={
            "help": "Ablation (Table 2): also save the trained A, B as a plain peft LoRA in "
            "<output_dir>/without_router (inference with c = 1)."
        },
    )

    @staticmethod
    def resolve(values: dict, given: set[str]) -> None:
        """The two warmup lengths exclude each other, so one given as a flag replaces the other from the config
        file (else the config's epochs would make any --loracoe_warmup_steps an error); with --max_steps and no
        warmup length given, the warmup is half the steps. No warmup (--no_warmup, --method lora): none of them."""
        if values["method"] == "lora" and (values["save_without_router"] or values["init_from_lora"]):
            raise ValueError("--save_without_router and --init_from_lora are for --method loracoe")
        warmups = ("loracoe_warmup_steps", "loracoe_warmup_epochs", "loracoe_warmup_learning_rate")
        if values["no_warmup"] or values["method"] == "lora":
            if {"loracoe_warmup_steps", "loracoe_warmup_epochs"} & given:
                raise ValueError(
                    "--loracoe_warmup_steps/--loracoe_warmup_epochs need a warmup, but --no_warmup or --method "
                    "lora has none"
                )
            values.update(dict.fromkeys(warmups))
            return
        steps, epochs = "loracoe_warmup_steps" in given, "loracoe_warmup_epochs" in given
        if steps and not epochs:
            values["loracoe_warmup_epochs"] = None
        elif epochs and not steps:
            values["loracoe_warmup_steps"] = None
        if values["max_steps"] > 0 and values["loracoe_warmup_steps"] is None and not epochs:
            if values["max_steps"] < 2:
                raise ValueError(
                    "--max_steps 1 leaves no step for LoRACoE's warmup (half the steps unless "
                    "--loracoe_warmup_steps is given): give --max_steps 2 or more, or --no_warmup"
                )
            values["loracoe_warmup_steps"], values["loracoe_warmup_epochs"] = values["max_steps"] // 2, None


_BaselineFields = method_arguments(
    "BaselineArguments",
    LoraConfig,
    ("r", "lora_alpha", "lora_dropout"),
    lora_alpha=(Optional[int], None, "LoRA scale numerator (unset: 2r, as in the papers)."),
)


@dataclass
class BaselineArguments(_BaselineFields):
    """The papers' MoE-agnostic baselines: peft's LoRA and where it goes."""

    _argument_group_name = "BaselineArguments (method)"

    method: Literal[tuple(sorted(TARGETS))] = field(default="lora_attn", metadata={"help": "Where peft's LoRA goes."})


# Settings that must be > 0, or >= 0, when given; every float must be finite.
POSITIVE = (
    "batch_size",
    "per_device_train_batch_size",
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


def check_numbers(values: dict) -> str | None:
    """What is wrong with the numeric settings (after the config file is applied), or None."""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"--{name} must be a finite number, got {value}"
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if name in POSITIVE and value <= 0:
            return f"--{name} must be > 0, got {value}"
        if name in NON_NEGATIVE and value < 0:
            return f"--{name} must be >= 0, got {value}"
    if values["max_steps"] == 0 or values["max_steps"] < -1:
        steps = values["max_steps"]
        return f"--max_steps must be a positive number of steps, or -1 for --num_train_epochs; got {steps}"
    return None


def recipe_training_defaults() -> dict:
    """The recipes' own TrainingArguments defaults (a config file or flag may change them): what their data and
    saving need, and the backend for several processes without CUDA (gloo; otherwise every rank silently believes
    it is rank 0). DeepSpeed comes from the accelerate config. Code that builds its arguments without a command
    line can start from them too: ``PerftTrainingArguments(**{**recipe_training_defaults(), **fields})``."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return dict(
        remove_unused_columns=False,  # the collator needs the labels column
        save_total_limit=2,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        ddp_backend="gloo" if world > 1 and not torch.cuda.is_available() else None,
        use_cpu=not torch.cuda.is_available(),
    )


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The recipe's docstring as written (its commands), and every flag's default."""


class RecipeParser(HfArgumentParser):
    """``HfArgumentParser`` over (ScriptArguments, the method's dataclass, PerftTrainingArguments) plus
    ``--config``: a YAML file (the recipe's own by default, the papers' settings) whose keys are field names of any
    of the three. Its values are parsed exactly as flags would be (so they are checked the same way) and come
    before the command line, so flags override them. ``parse`` returns the three dataclasses."""

    def __init__(self, description: str, default_config: str | os.PathLike, method_class: type):
        from .trainer import PerftTrainingArguments

        super().__init__(
            (ScriptArguments, method_class, PerftTrainingArguments),
            description=description,
            usage="%(prog)s [--config FILE.yaml] [--FIELD VALUE ...]  (all fields: --help)",
            allow_abbrev=False,  # a mistyped flag is an error, not a prefix of another one
            formatter_class=_HelpFormatter,
            epilog="The training arguments are transformers' TrainingArguments (every field is a flag) plus "
            "PERFT's and LoRACoE's (perft_peft.trainer.PerftTrainingArguments). --config files use the same names.",
        )
        self.add_argument(
            "--config",
            default=str(default_config),
            help="YAML file setting any of the fields below by name (this recipe's own by default: the papers' "
            "settings); flags override it",
        )
        # per_device_eval_batch_size unset: per_device_train_batch_size, as PERFT's finetune.py
        self.set_defaults(**recipe_training_defaults(), per_device_eval_batch_size=None)
        self._own_defaults = [(action, action.default) for action in self._actions]  # --no_x shares x's dest
        self.method_class = method_class
        self._context = ""  # what error messages start with: the config file while its values are parsed

    def parse(self, argv=None):
        """(script arguments, method arguments, training arguments) from ``--config`` and the flags, checked."""
        argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
        path = self._config_path(argv)
        config = self._read_config(path)
        self._set_config_defaults(config)  # what --help shows, and the config's nulls
        self._context = f"{path}: "
        try:
            self.parse_args(config_flags(config))  # the file's values alone, so an error names the file
        finally:
            self._context = ""
        values = vars(self.parse_args([*config_flags(config), *argv]))
        flags = self._option_string_actions
        given = {flags[a.split("=")[0]].dest for a in argv if a.split("=")[0] in flags}
        try:
            self._check_and_derive(values, given)
            return tuple(
                kind(**{f.name: values[f.name] for f in dataclasses.fields(kind) if f.init and f.name in values})
                for kind in self.dataclass_types
            )
        except ValueError as error:
            self.error(str(error))

    def error(self, message: str):
        super().error(self._context + message)

    def _set_config_defaults(self, config: dict) -> None:
        for action, default in self._own_defaults:
            action.default = default
        self.set_defaults(**config)

    def _config_path(self, argv: list[str]) -> str:
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("--config", default=self.get_default("config"))
        return pre.parse_known_args(argv)[0].config

    def _read_config(self, path: str) -> dict:
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            self.error(f"--config {path}: {error}")
        if not isinstance(config, dict):
            self.error(f"--config {path} must hold a mapping of field names to values")
        known = {a.dest for a in self._actions} - {"help", "config"}
        unknown = sorted(set(config) - known)
        if unknown:
            self.error(f"{path} has unknown keys: {', '.join(unknown)}")
        return config

    def _check_and_derive(self, values: dict, given: set[str]) -> None:
        """The checks flags alone cannot make, then what the recipes derive: the accumulation from the global batch
        size, fp32 for --tiny, validation settings only with a validation split."""
        if values["tiny"] and "data" in given:  # a config file's --data is the real run's, not an error
            raise ValueError(
                "--tiny trains on a bundled fixture (--tiny_data) with a tokenizer built from its words; it cannot "
                "use --data. Drop --tiny to train on --data, or choose a fixture with --tiny_data."
            )
        if values["output_dir"] is None:
            raise ValueError("give --output_dir: where checkpoints and the final adapter are written")
        if values["push_to_hub"] and not values["hub_model_id"]:
            raise ValueError("--push_to_hub needs --hub_model_id <user>/<repo>")
        if not values["tiny"] and not values["model"]:
            raise ValueError("give --model (a Hub id or a local directory), or --tiny for an offline smoke run")
        problem = check_numbers(values)
        if problem:
            raise ValueError(problem)
        if values["tiny"] and values["val_set_size"] and values["tiny_val_set_size"] is not None:
            values["val_set_size"] = min(values["val_set_size"], values["tiny_val_set_size"])
        if values["val_set_size"] < 0:
            raise ValueError(f"--val_set_size must be 0 or more, got {values['val_set_size']}")
        self._validation(values, given)
        self._batch(values, given)
        if values["tiny"]:
            values["bf16"] = False
        resolve = getattr(self.method_class, "resolve", None)
        if resolve is not None:
            resolve(values, given)

    @staticmethod
    def _validation(values: dict, given: set[str]) -> None:
        """Evaluation on the held-out split, as PERFT's finetune.py (lines 328-334) sets it, when there is one."""
        if not values["val_set_size"]:
            if "eval_strategy" in given and values["eval_strategy"] != "no":
                raise ValueError("--eval_strategy needs a validation split: give --val_set_size")
            values["eval_strategy"], values["load_best_model_at_end"] = "no", False
            if values["per_device_eval_batch_size"] is None:  # TrainingArguments' own default, unused
                del values["per_device_eval_batch_size"]
            return
        if values["per_device_eval_batch_size"] is None:
            values["per_device_eval_batch_size"] = values["per_device_train_batch_size"]
        if "eval_strategy" not in given and values["eval_strategy"] == "no":
            values["eval_strategy"] = "steps"
        values["metric_for_best_model"] = values["metric_for_best_model"] or "eval_loss"
        eval_every = values["eval_steps"] or values["logging_steps"]
        if values["load_best_model_at_end"] and values["save_steps"] % eval_every:
            raise ValueError(
                f"--load_best_model_at_end needs --save_steps ({values['save_steps']:g}) to be a multiple of "
                f"--eval_steps ({eval_every:g})"
            )

    @staticmethod
    def _batch(values: dict, given: set[str]) -> None:
        """--batch_size (global) sets the accumulation; --gradient_accumulation_steps as a flag replaces a config
        file's batch_size."""
        micro = values["per_device_train_batch_size"]
        if "gradient_accumulation_steps" in given:
            if "batch_size" in given:
                raise ValueError("give --batch_size or --gradient_accumulation_steps, not both")
            values["batch_size"] = None
        if values["batch_size"] is None:
            return
        if values["batch_size"] % micro:
            raise ValueError(
                f"--batch_size {values['batch_size']} is not a multiple of --per_device_train_batch_size {micro}"
            )
        world = int(os.environ.get("WORLD_SIZE", "1"))
        values["gradient_accumulation_steps"] = max(1, values["batch_size"] // (micro * world))


def config_flags(config: dict) -> list[str]:
    """A config file's values as the flags that set them (null values are applied after parsing)."""
    flags = []
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        if isinstance(value, dict):
            value = json.dumps(value)
        flags += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return flags
