"""Trainable and *activated* trainable parameters: the PERFT paper's "# Act." and "% Act." columns.

A token activates, per adapted MoE block: R: K of M PEFT experts plus the whole router (M*D); E: the K experts
the model routes it to; D: all M; S: the one. peft's LoRA on a 3-D expert parameter (``target_parameters``) has
one LoRA per model expert, of which a token uses K of N. Other adapters (LoRACoE, peft LoRA on modules) are used by
every token in full.
The base model's activated parameters count every parameter
except the (N-K)/N share of routed experts each token skips.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from . import moe
from .perft.layer import PerftLayer


@dataclass(frozen=True)
class ParameterAccounting:
    trainable: int
    activated_trainable: int
    base_total: int
    base_activated: int

    @property
    def pct_activated(self) -> float:
        """Activated trainable parameters as a percentage of the base model's activated parameters (% Act.)."""
        return 100.0 * self.activated_trainable / self.base_activated

    def __str__(self) -> str:
        return (
            f"trainable params: {self.trainable:,} || activated trainable per token (# Act.): "
            f"{self.activated_trainable:,} || base activated params: {self.base_activated:,} || "
            f"% Act.: {self.pct_activated:.4f}"
        )


def _numel(parameter) -> int:
    """Also right under DeepSpeed ZeRO-3, where a partitioned parameter's own tensor is empty."""
    return getattr(parameter, "ds_numel", parameter.numel())


def _model_config(model: nn.Module):
    while model is not None and not hasattr(model, "config"):
        model = getattr(model, "model", None)
    return getattr(model, "config", None)


def parameter_accounting(model: nn.Module) -> ParameterAccounting:
    """Count a (PEFT) model's trainable, activated-trainable and base activated parameters."""
    config = _model_config(model)
    model_top_k = moe.experts_per_token(config)
    adapter_ids, trainable, activated = set(), 0, 0
    for layer in (m for m in model.modules() if isinstance(m, BaseTunerLayer) and not isinstance(m, PerftLayer)):
        # LoRACoE, peft LoRA, ...: every adapter parameter is used by every token, except that peft's LoRA on a
        # [N, ...] experts parameter (its ParamWrapper has num_experts = N) holds one LoRA per expert.
        n = getattr(layer, "num_experts", 1)
        share = model_top_k / n if isinstance(n, int) and n > 1 and model_top_k is not None else 1.0
        for attr in layer.adapter_layer_names:
            for p in getattr(layer, attr).parameters():
                adapter_ids.add(id(p))
                if p.requires_grad:
                    trainable, activated = trainable + _numel(p), activated + _numel(p) * share
    for layer in (m for m in model.modules() if isinstance(m, PerftLayer)):
        for name, setting in layer.perft_setting.items():
            tensors = [layer.perft_A[name], layer.perft_B[name]]
            router = layer.perft_router[name] if name in layer.perft_router else None
            adapter_ids.update(id(t) for t in tensors + ([router] if router is not None else []))
            if not tensors[0].requires_grad:
                continue
            experts = sum(_numel(t) for t in tensors)
            trainable += experts + (_numel(router) if router is not None else 0)
            share = {"R": setting.top_k, "E": model_top_k}.get(setting.variant, setting.num_experts)
            if share is None:
                raise ValueError(
                    "Cannot count PERFT-E's activated parameters: the model config does not say how "
                    "many experts each token uses (num_experts_per_tok)."
                )
            activated += experts * share // setting.num_experts + (_numel(router) if router is not None else 0)
    base_total, skipped, seen = 0, 0.0, set(adapter_ids)  # `seen` also counts tied weights once
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        extra = sum(_numel(p) for p in own if p.requires_grad)  # modules_to_save copies, unfrozen base weights
        trainable, activated = trainable + extra, activated + extra
        if ".modules_to_save." in f".{name}.":
            continue  # a trainable copy of a base module, not part of the base model
        base_total += sum(_numel(p) for p in own)
        n = moe.num_experts(module)
        if n is not None and model_top_k is not None:
            per_expert = sum(_numel(p) for p in own if len(moe.full_shape(p)) >= 2 and moe.full_shape(p)[0] == n)
            skipped += per_expert * (n - model_top_k) / n
    return ParameterAccounting(trainable, int(round(activated)), base_total, int(round(base_total - skipped)))
