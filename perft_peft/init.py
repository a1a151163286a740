"""What both methods share when they create adapter tensors: the LoRA initialisation (the adapted model equals the
base model at step 0) and the storage dtype."""

import math

import torch
from peft.tuners.tuners_utils import BaseTuner


@torch.no_grad()
def init_lora_factors(A: torch.Tensor, B: torch.Tensor, init_weights: bool) -> None:
    """A [..., r, d]: peft LoRA's Kaiming-uniform(a=sqrt(5)) over width d, i.e. U(-1/sqrt(d), 1/sqrt(d)).
    B [..., d_out, r]: zero (so B A = 0), or with ``init_weights=False`` random too, for tests and debugging."""
    r, d = A.shape[-2], A.shape[-1]
    A.uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d))
    if init_weights:
        B.zero_()
    else:
        B.uniform_(-1 / math.sqrt(r), 1 / math.sqrt(r))


def storage_dtype(base_weight: torch.Tensor | None) -> torch.dtype:
    """New adapter tensors take the base weights' floating dtype, as peft's tuners do: peft then upcasts float16 /
    bfloat16 adapters to float32 unless ``autocast_adapter_dtype=False`` (``get_peft_model``, ``add_adapter``,
    ``from_pretrained``, ``load_adapter``), which keeps them in the base dtype. float32 for integer (quantised) or
    unknown base weights. The values are drawn in float32 either way and only then cast."""
    if base_weight is None or not base_weight.is_floating_point():
        return torch.float32
    return base_weight.dtype


def cast_adapter_dtype(tuner, adapter_name: str, autocast_adapter_dtype: bool) -> None:
    """peft's ``BaseTuner._cast_adapter_dtype``, keeping each parameter's ``requires_grad``: peft casts by storing
    a new tensor in the ParameterDict, which wraps it as a new, trainable Parameter — an adapter loaded for
    inference would silently become trainable."""
    frozen = {name for name, p in tuner.model.named_parameters() if not p.requires_grad}
    BaseTuner._cast_adapter_dtype(tuner, adapter_name, autocast_adapter_dtype)
    for name, p in tuner.model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
