"""Reading a saved peft LoRA to start a LoRACoE from (``init_from_lora``): the paper's LoRA warm-up done elsewhere.

Only what a plain LoRA saves is accepted (``lora_A``/``lora_B`` weights of Linear modules): anything else (DoRA
magnitudes, LoRA biases, trained base biases, modules_to_save, embedding LoRAs) would be silently dropped, and the
LoRACoE would not reproduce the LoRA it claims to start from.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

import torch
from safetensors.torch import load_file
from torch import nn

from .config import LoraCoeConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")


@dataclass(frozen=True)
class SavedLora:
    source: str
    config: dict
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # base-model module name -> (A [r, d_in], B [d_out, r])


def read_lora(source: str) -> SavedLora:
    """Load a peft LoRA adapter from a local directory or the Hub, with safetensors only."""
    if os.path.isdir(source):
        files = [os.path.join(source, name) for name in (CONFIG_NAME, WEIGHTS_NAME)]
        missing = [os.path.basename(f) for f in files if not os.path.isfile(f)]
        if missing:
            raise ValueError(
                f"init_from_lora={source!r} has no {' or '.join(missing)}: point it at a directory "
                "written by a peft LoRA model's save_pretrained (safetensors)."
            )
    else:
        from huggingface_hub import hf_hub_download

        try:
            files = [hf_hub_download(source, name) for name in (CONFIG_NAME, WEIGHTS_NAME)]
        except (OSError, ValueError) as error:
            raise ValueError(
                f"init_from_lora={source!r} is not a local directory, and no peft LoRA adapter "
                f"({CONFIG_NAME} + {WEIGHTS_NAME}) could be fetched from the Hub under that id: "
                f"{error}"
            ) from error
    with open(files[0], encoding="utf-8") as handle:
        config = json.load(handle)
    if config.get("peft_type") != "LORA":
        raise ValueError(f"init_from_lora={source!r} is a {config.get('peft_type')!r} adapter, not a peft LoRA.")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unexpected = []
    for key, tensor in load_file(files[1]).items():
        match = _LORA_KEY.match(key)
        if match is None:
            unexpected.append(key)
        else:
            parts.setdefault(match["module"], {})[match["which"]] = tensor
    if unexpected:
        raise ValueError(
            f"init_from_lora={source!r} holds tensors a plain LoRA of Linear modules does not have "
            f"(e.g. {sorted(unexpected)[:3]}): DoRA, LoRA biases, trained biases, modules_to_save and "
            "embedding LoRAs cannot be carried over into a LoRACoE."
        )
    incomplete = sorted(name for name, ab in parts.items() if len(ab) != 2)
    if incomplete:
        raise ValueError(f"init_from_lora={source!r} lacks lora_A or lora_B for {incomplete[:3]}.")
    return SavedLora(source, config, {name: (ab["A"], ab["B"]) for name, ab in parts.items()})


def check_lora_fits(lora: SavedLora, config: LoraCoeConfig, targets: dict[str, nn.Linear]) -> None:
    """The LoRA must cover exactly the targets, with rank r and the same output scale, or the start is not it."""
    missing, extra = sorted(set(targets) - set(lora.tensors)), sorted(set(lora.tensors) - set(targets))
    if missing or extra:
        raise ValueError(
            f"init_from_lora={lora.source!r} does not adapt the same modules as this LoRACoE: "
            f"targeted but not in the LoRA: {missing[:3]}{'...' if len(missing) > 3 else ''}; in the "
            f"LoRA but not targeted: {extra[:3]}{'...' if len(extra) > 3 else ''}. Set target_modules to "
            "the LoRA's modules (or leave it None to take them from the LoRA)."
        )
    for name, module in targets.items():
        A, B = lora.tensors[name]
        expected = ((config.r, module.in_features), (module.out_features, config.r))
        if (tuple(A.shape), tuple(B.shape)) != expected:
            raise ValueError(
                f"init_from_lora={lora.source!r}: {name} has lora_A {tuple(A.shape)} and lora_B "
                f"{tuple(B.shape)}, but this LoRACoE needs {expected[0]} and {expected[1]} "
                f"(r={config.r})."
            )
    if lora.config.get("rank_pattern") or lora.config.get("alpha_pattern"):
        raise ValueError(
            f"init_from_lora={lora.source!r} uses rank_pattern/alpha_pattern; LoRACoE has one r and "
            "lora_alpha for all modules."
        )
    r, alpha = lora.config["r"], lora.config["lora_alpha"]
    scaling = alpha / math.sqrt(r) if lora.config.get("use_rslora") else alpha / r
    if not math.isclose(scaling, config.scaling):
        raise ValueError(
            f"init_from_lora={lora.source!r} scales its update by {scaling:g}, this LoRACoE by "
            f"lora_alpha / r = {config.scaling:g}: set lora_alpha={scaling * config.r:g} to start from "
            "exactly that LoRA."
        )
