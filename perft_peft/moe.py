"""Find the MoE experts modules of any transformers (>= 5) model.

transformers 5 gives every MoE family the same seam: the block's router returns
``(router_logits, top_k_weights, top_k_index)`` and the block calls
``experts(hidden_states[T, D], top_k_index[T, K], top_k_weights[T, K]) -> [T, D]``. PERFT wraps that experts
module, so nothing here is model-specific: an experts module is recognised by its ``num_experts`` attribute,
its batched 3-D expert weights ``[N, ...]`` and a forward that receives the routing.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

SEARCHED_FOR = (
    "an MoE experts module: a module with an integer `num_experts` attribute, 3-D expert weights of shape "
    "[num_experts, ...] and a forward(hidden_states, top_k_index, top_k_weights) -- the transformers>=5 layout "
    "of e.g. MixtralExperts, OlmoeExperts, Qwen2MoeExperts, Qwen3MoeExperts, DeepseekV3Experts, GptOssExperts"
)


def num_experts(module: nn.Module) -> int | None:
    """The number of experts N of an experts module, or None if it does not look like one."""
    n = getattr(module, "num_experts", None)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return None
    if not any(len(shape) == 3 and shape[0] == n for shape in map(full_shape, module.parameters(recurse=False))):
        return None
    return n


def full_shape(parameter: torch.Tensor) -> torch.Size:
    """A parameter's real shape, also when DeepSpeed ZeRO-3 has partitioned it (then the tensor itself is empty)."""
    return getattr(parameter, "ds_shape", parameter.shape)


def receives_routing(module: nn.Module) -> bool:
    """Whether ``module.forward`` takes (hidden_states, top_k_index, top_k_weights): needed by PERFT-E."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3


def is_experts_module(module: nn.Module) -> bool:
    return num_experts(module) is not None and receives_routing(module)


def find_experts_modules(model: nn.Module) -> list[str]:
    """Qualified names of every experts module (an already-wrapped one counts as the module it wraps)."""
    from .targets import base_modules

    return [name for name, module in base_modules(model) if is_experts_module(module)]


def hidden_size(module: nn.Module, model_config=None) -> int:
    """D, the width of the hidden states an experts module receives."""
    for attr in ("hidden_dim", "hidden_size"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    value = getattr(model_config, "hidden_size", None)
    if isinstance(value, int):
        return value
    raise ValueError(f"Cannot tell the hidden size of {type(module).__name__}: it has no `hidden_dim`/`hidden_size`.")


def experts_per_token(model_config) -> int | None:
    """K of the model's own router, read from its config (None if the config does not say)."""
    for attr in ("num_experts_per_tok", "moe_topk", "moe_k", "moe_top_k", "experts_per_token", "top_k"):
        value = getattr(model_config, attr, None)
        if isinstance(value, int):
            return value
    return None


def first_parameter(module: nn.Module) -> torch.Tensor | None:
    return next(module.parameters(), None)
