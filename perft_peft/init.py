"""What both methods share when they create adapter tensors: the initialisations of the PEFT factors A [..., r, d]
and B [..., d_out, r], and the storage dtype."""

import math

import torch
from peft.tuners.tuners_utils import BaseTuner

# The PERFT authors' initialisation (github liuyilun2000/PERFT, commonsense/utils.py, init_trainable_parameters,
# lines 30-37): A ~ N(0, 2/r) per element (``randn(size) * sqrt(2 / size[0])`` on an nn.Linear(d, r) weight of
# size [r, d]), B ~ 1e-6 * N(0, 1); the same for LoRA (lora_A/lora_B) and parallel-adapter (adapter_w1/w2) experts.
PERFT_INIT = "perft"
PERFT_B_STD = 1e-6
INIT_CHOICES = (True, False, PERFT_INIT)


@torch.no_grad()
def init_lora_factors(A: torch.Tensor, B: torch.Tensor, init_weights: bool | str) -> None:
    """``True``: A as peft LoRA's Kaiming-uniform(a=sqrt(5)) over width d, i.e. U(-1/sqrt(d), 1/sqrt(d)), and
    B = 0, so B A = 0 and the adapted model equals the base model at step 0. ``False``: B random too, for tests
    and debugging. ``"perft"``: the PERFT authors' A ~ N(0, 2/r), B ~ N(0, 1e-12), whose A is about
    sqrt(6 d / r) times wider than Kaiming's: with Adam at the paper's small learning rates that trains faster
    (PERFT's default, chosen by benchmarks/perft_init.py)."""
    if init_weights not in INIT_CHOICES:
        raise ValueError(f"init_weights must be True, False or {PERFT_INIT!r}, got {init_weights!r}.")
    r, d = A.shape[-2], A.shape[-1]
    if init_weights == PERFT_INIT:
        A.normal_(0.0, math.sqrt(2 / r))
        B.normal_(0.0, PERFT_B_STD)
        return
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
