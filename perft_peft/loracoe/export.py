"""A trained LoRACoE without its router, saved as a plain peft LoRA: the paper's "inference without router"
(Table 2). With c = 1 the layer is exactly s B A x, so a peft LoRA with the same A, B, r and lora_alpha is the same
model, and any LoRA tooling (evaluation, merging, serving) takes it as is."""

from __future__ import annotations

import os

from safetensors.torch import save_file
from torch import nn

from .layer import LoraCoeLayer


def save_without_router(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default") -> None:
    """Write ``model``'s LoRACoE adapter ``adapter_name`` (a PeftModel) to ``path`` as a peft LoRA (safetensors):
    lora_A / lora_B = loracoe_A / loracoe_B, same r, lora_alpha, targets and base model."""
    from peft import LoraConfig

    config = model.peft_config[adapter_name]
    if getattr(config, "peft_type", None) != "LORACOE":
        raise ValueError(f"Adapter {adapter_name!r} is a {getattr(config, 'peft_type', None)} adapter, not LoRACoE.")
    tensors = {}
    for name, layer in model.base_model.model.named_modules():
        if isinstance(layer, LoraCoeLayer) and adapter_name in layer.loracoe_A:
            if adapter_name in layer.merged_adapters:
                raise ValueError(f"{name}: adapter {adapter_name!r} is merged; unmerge it first.")
            for factor in ("A", "B"):
                weight = getattr(layer, f"loracoe_{factor}")[adapter_name]
                tensors[f"base_model.model.{name}.lora_{factor}.weight"] = weight.detach().cpu().contiguous()
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.lora_alpha,
        target_modules=config.target_modules,
        lora_dropout=config.lora_dropout,
        task_type=config.task_type,
        base_model_name_or_path=config.base_model_name_or_path,
    )
    os.makedirs(path, exist_ok=True)
    lora.save_pretrained(str(path))
    save_file(tensors, os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
