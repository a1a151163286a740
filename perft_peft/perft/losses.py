"""Auxiliary losses for PERFT-R's own routers (the trainer adds them to the model loss).

Each PERFT-R layer keeps a ``RouterRecord`` of its last training forward (float32 logits [T, M] and the chosen
experts [T, K]); these functions read them across the model. Nothing is recorded in eval mode or ``generate``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layer import PerftLayer, RouterRecord


def router_records(model: nn.Module, routed_only: bool = False) -> list[RouterRecord]:
    """The routing records of every PERFT layer's active adapters, in module order (R and E adapters)."""
    records = []
    for module in model.modules():
        if isinstance(module, PerftLayer):
            for name in module.active_adapters:
                record = module.router_records.get(name)
                if record is not None and (record.logits is not None or not routed_only):
                    records.append(record)
    return records


def _token_weights(attention_mask: torch.Tensor | None, num_tokens: int, device) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    mask = attention_mask.reshape(-1).to(device=device, dtype=torch.float32)
    if mask.numel() != num_tokens:
        raise ValueError(f"attention_mask has {mask.numel()} entries but the router saw {num_tokens} tokens.")
    return mask


def _masked_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean over the first (token) dimension, counting only tokens with weight 1."""
    if weights is None:
        return values.mean(dim=0)
    shape = (-1,) + (1,) * (values.dim() - 1)
    return (values * weights.view(shape)).sum(dim=0) / weights.sum().clamp(min=1.0)


def load_balancing_loss(model: nn.Module, attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """Switch/Mixtral load-balancing loss over the M PEFT experts of every PERFT-R layer, averaged over layers.

    Per layer: ``M * sum_k sum_j f_kj * P_j`` with ``f_kj`` the fraction of tokens whose k-th choice is expert j
    and ``P_j`` the mean router probability of j (both over non-padding tokens). It equals K when the load is
    perfectly balanced. Returns None when the model has no PERFT-R router records (eval mode, other variants).
    """
    losses = []
    for record in router_records(model, routed_only=True):
        probs = record.logits.softmax(dim=-1)
        weights = _token_weights(attention_mask, probs.shape[0], probs.device)
        chosen = F.one_hot(record.top_k_index, record.num_experts).float()  # [T, K, M]
        fraction = _masked_mean(chosen, weights)  # [K, M]
        mean_prob = _masked_mean(probs, weights)  # [M]
        losses.append(record.num_experts * (fraction * mean_prob.unsqueeze(0)).sum())
    return torch.stack(losses).mean() if losses else None


def router_z_loss(model: nn.Module, attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """ST-MoE router z-loss ``mean_t logsumexp(logits_t)^2`` of every PERFT-R router, averaged over layers."""
    losses = []
    for record in router_records(model, routed_only=True):
        z = torch.logsumexp(record.logits, dim=-1).square()
        losses.append(_masked_mean(z, _token_weights(attention_mask, z.shape[0], z.device)))
    return torch.stack(losses).mean() if losses else None
