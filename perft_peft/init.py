"""The LoRA initialisation both methods share: the adapted model equals the base model at step 0."""

import math

import torch


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
