"""First-order parameter importance I_j = |dL/dθ_j · θ_j| (LoRACoE paper Eq. 3) of LoRA-like A and B, per rank.

L is the mean loss over the batches, so the gradient is the dataset's (Eq. 1 removes a parameter from the model
evaluated on the whole dataset), not a sum of per-batch absolute values. The paper reads the rank dimension off
these scores (Figure 2) and compares rank patterns across tasks and methods (Figures 3-4).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from tqdm.auto import tqdm

from .. import plotting

# LoRA-like layers keep A [r, d_in] and B [d_out, r] under these names (peft LoRA as Linear modules, LoRACoE and
# LoRAMoE-partition as Parameters).
FACTOR_PREFIXES = ("loracoe_", "lora_")


@dataclass(frozen=True)
class RankImportance:
    """Element-wise importance of each adapted module's A [r, d_in] and B [d_out, r], keyed by module name."""

    A: dict[str, torch.Tensor]
    B: dict[str, torch.Tensor]
    num_batches: int

    @property
    def per_rank(self) -> dict[str, torch.Tensor]:
        """Rank j's importance: the sum over A's row j and B's column j ([r] per module)."""
        return {name: self.A[name].sum(dim=1) + self.B[name].sum(dim=0) for name in self.A}

    @property
    def per_module(self) -> dict[str, float]:
        return {name: float(scores.sum()) for name, scores in self.per_rank.items()}


def lora_factors(model: nn.Module, adapter_name: str | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) of every LoRA-like adapter layer, for ``adapter_name`` or each layer's single active adapter."""
    factors = {}
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        if adapter_name is None and len(module.active_adapters) > 1:
            raise ValueError(f"{name} has several active adapters {module.active_adapters}; pass adapter_name.")
        adapter = adapter_name if adapter_name is not None else module.active_adapters[0]
        for prefix in FACTOR_PREFIXES:
            A, B = getattr(module, prefix + "A", None), getattr(module, prefix + "B", None)
            if isinstance(A, (nn.ModuleDict, nn.ParameterDict)) and adapter in A:
                A, B = (getattr(f[adapter], "weight", f[adapter]) for f in (A, B))
                if A.dim() == 2:  # Linear LoRA; conv LoRAs have no [r, d_in] rows
                    factors[name.removeprefix("base_model.model.")] = (A, B)
                break
    return factors


def rank_importance(
    model: nn.Module,
    dataloader: Iterable,
    *,
    loss_fn: Callable[[nn.Module, object], torch.Tensor] | None = None,
    adapter_name: str | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> RankImportance:
    """Eq. 3 for the A and B of every LoRA-like layer (LoRACoE, LoRAMoE-partition, peft LoRA).

    Batches are dicts of model inputs with ``labels`` (the model returns ``.loss``) unless ``loss_fn(model, batch)``
    is given. The model runs in eval mode (no dropout); its training flag, requires_grad flags and ``.grad`` are left
    as they were.
    """
    factors = lora_factors(model, adapter_name)
    if not factors:
        raise ValueError(f"{type(model).__name__} has no LoRA-like adapter (A, B) to score.")
    params = [p for pair in factors.values() for p in pair]
    flags = [p.requires_grad for p in params]
    was_training = model.training
    grads = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    num_batches = 0
    total = len(dataloader) if hasattr(dataloader, "__len__") else None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        for batch in tqdm(islice(dataloader, max_batches), total=total, desc="rank importance", disable=not progress):
            loss = loss_fn(model, batch) if loss_fn is not None else _model_loss(model, batch)
            for grad, g in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
                if g is not None:
                    grad += g.float()
            num_batches += 1
    finally:
        model.train(was_training)
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    if num_batches == 0:
        raise ValueError("The dataloader yielded no batch.")
    scores = [(grad / num_batches * p.detach().float()).abs() for grad, p in zip(grads, params)]
    return RankImportance(
        A=dict(zip(factors, scores[0::2])), B=dict(zip(factors, scores[1::2])), num_batches=num_batches
    )


def _model_loss(model: nn.Module, batch) -> torch.Tensor:
    if not isinstance(batch, Mapping):
        raise ValueError("Batches must be dicts of model inputs with labels, or pass loss_fn(model, batch).")
    device = next(model.parameters()).device
    loss = getattr(model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}), "loss", None)
    if loss is None:
        raise ValueError("The model returned no loss: give batches with labels, or pass loss_fn(model, batch).")
    return loss


def plot_rank_importance(
    result: RankImportance,
    path: str | os.PathLike,
    *,
    sort: bool = True,
    normalise: bool = True,
    title: str | None = None,
) -> str:
    """A modules x ranks heatmap PNG like the paper's Figures 3-4.

    ``sort``: each module's ranks in descending order (as in Figure 4), so the number of important ranks reads off
    the row. ``normalise``: each row as shares of the module's total, so modules of different scale compare.
    """
    per_rank = result.per_rank
    names = list(per_rank)
    width = max(scores.numel() for scores in per_rank.values())
    matrix = torch.full((len(names), width), float("nan"))
    for row, name in enumerate(names):
        scores = per_rank[name]
        if normalise:
            scores = scores / scores.sum().clamp_min(torch.finfo(scores.dtype).tiny)
        if sort:
            scores = scores.sort(descending=True).values
        matrix[row, : scores.numel()] = scores
    figure, axes = plotting.figure(size=(min(4 + 0.25 * width, 16), min(2 + 0.2 * len(names), 40)), layout="tight")
    image = axes.imshow(matrix.numpy(), aspect="auto", interpolation="nearest", cmap="viridis")
    axes.set_yticks(range(len(names)), labels=names, fontsize=6)
    axes.set_xlabel("rank (sorted by importance)" if sort else "rank")
    axes.set_title(title or f"|dL/dθ · θ| per rank ({result.num_batches} batches)")
    figure.colorbar(image, ax=axes, label="share of the module's importance" if normalise else "importance")
    return plotting.save(figure, path)
