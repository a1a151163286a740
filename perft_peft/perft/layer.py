"""The PERFT layer: a wrapper around a MoE experts module that adds the variant's term (docs/design.md).

For a token's hidden state h entering the block, a PEFT expert is ``Delta_j(h) = s * B_j act(A_j h)`` and

    R:  experts(h) + sum_j G~(h)_j Delta_j(h),   G~ = TopK(softmax(W~ h), K) over M, not renormalised (Eq. 7;
        with ``norm_topk_prob`` divided by the sum of the K kept weights, as the authors' Mixtral code does)
    E:  experts(h) + sum_k w_k Delta_{i_k}(h)    with (i_k, w_k) exactly the routing the model gave its experts
    D:  experts(h) + sum_j Delta_j(h)
    S:  experts(h) + Delta_0(h)

All M experts of an adapter live in batched tensors (``perft_A`` [M, r, D], ``perft_B`` [M, D, r]); there is
no Python loop over experts. Routed terms are computed either densely (one [T, M*r] GEMM with a gate mask) or
sparsely (tokens sorted by expert, two grouped GEMMs), whichever is cheaper for the shape.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.activations import ACT2FN

from .. import moe
from ..init import init_lora_factors, storage_dtype
from .config import PerftConfig

# The sparse (grouped GEMM) path pays for sorting and gathering tokens; it wins once M/K exceeds this ratio.
# Measured on CPU with torch 2.13 (grouped_mm is slow there); on CUDA grouped GEMMs win much earlier.
SPARSE_MIN_EXPERT_RATIO = {"cpu": 8, "cuda": 4}
ROUTER_INIT_STD = 0.02


@dataclass(frozen=True)
class _PerftSetting:
    """Per-adapter hyperparameters the forward needs (the tensors live in the ParameterDicts)."""

    variant: str
    num_experts: int
    top_k: int | None
    scaling: float
    expert_type: str
    adapter_act: str
    norm_topk_prob: bool = False
    base_gate_weights: bool = False


@dataclass
class RouterRecord:
    """What the last training forward routed: PERFT-R's float32 logits [T, M] (None for E) and the chosen
    experts [T, K]. Kept only while training, one per adapter, replaced on every forward."""

    logits: torch.Tensor | None
    top_k_index: torch.Tensor
    num_experts: int


def _grouped_mm(x: torch.Tensor, weight: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """x [S, a] rows grouped by expert, weight [M, a, b] -> [S, b] (transformers' dispatcher has the fallbacks)."""
    from transformers.integrations.moe import _grouped_mm as grouped_mm

    return grouped_mm(x, weight, offs)


@functools.cache
def _grouped_mm_available() -> bool:
    try:
        from transformers.integrations.moe import _grouped_mm  # noqa: F401
    except ImportError:
        return False
    return True


class PerftLayer(nn.Module, BaseTunerLayer):
    """Wraps an experts module (or any module whose first input is the hidden states) and adds PERFT's term."""

    adapter_layer_names = ("perft_A", "perft_B", "perft_router")
    other_param_names = ("perft_dropout", "perft_setting")

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: PerftConfig,
        hidden_size: int,
        model_experts: int | None,
        **kwargs,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.hidden_size = hidden_size
        self.model_experts = model_experts
        self.perft_A = nn.ParameterDict()
        self.perft_B = nn.ParameterDict()
        self.perft_router = nn.ParameterDict()
        self.perft_dropout = nn.ModuleDict()
        self.perft_setting: dict[str, _PerftSetting] = {}
        self.router_records: dict[str, RouterRecord] = {}
        self.sparse_min_expert_ratio = None  # None = by device (SPARSE_MIN_EXPERT_RATIO); tests force a path
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: PerftConfig) -> None:
        """Create (or re-create) the tensors of one adapter."""
        variant, D, r = config.variant, self.hidden_size, config.r
        M = self.model_experts if variant == "E" else config.num_peft_experts
        top_k = config.top_k if variant == "R" else None
        self.perft_setting[adapter_name] = _PerftSetting(
            variant,
            M,
            top_k,
            config.scaling,
            config.expert_type,
            config.adapter_act,
            config.norm_topk_prob,
            config.gate_weights == "base",
        )
        self.perft_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()
        reference = moe.first_parameter(self.base_layer)
        factory = {"device": reference.device if reference is not None else None, "dtype": torch.float32}
        dtype = storage_dtype(reference)
        A = torch.empty(M, r, D, **factory)
        B = torch.empty(M, D, r, **factory)
        init_lora_factors(A, B, config.init_weights)
        self.perft_A[adapter_name] = nn.Parameter(A.to(dtype))
        self.perft_B[adapter_name] = nn.Parameter(B.to(dtype))
        if variant == "R":
            W = torch.empty(M, D, **factory)
            with torch.no_grad():
                W.normal_(0.0, ROUTER_INIT_STD)
            self.perft_router[adapter_name] = nn.Parameter(W.to(dtype))
        self.set_adapter(self.active_adapters)

    # -- peft contract ---------------------------------------------------------------------------------------

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        raise TypeError(
            "PERFT adapters cannot be merged: their experts run in parallel with non-linear MoE experts (and "
            "PERFT-R has its own router), so there is no weight to fold them into. Keep the adapter, or use "
            "`unload()` to get the base model back."
        )

    def unmerge(self) -> None:
        return None

    # -- forward ---------------------------------------------------------------------------------------------

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        result = self.base_layer(hidden_states, *args, **kwargs)
        if self.training is False:
            self.router_records.clear()
        active = [a for a in self.active_adapters if a in self.perft_A]
        if self.disable_adapters or not active:
            return result
        out = result[0] if isinstance(result, tuple) else result
        h = hidden_states.reshape(-1, self.hidden_size)
        delta = None
        for name in active:
            term = self._adapter_term(name, h, args, kwargs)
            delta = term if delta is None else delta + term
        out = out + delta.reshape(out.shape).to(out.dtype)
        return (out, *result[1:]) if isinstance(result, tuple) else out

    def _adapter_term(self, name: str, h: torch.Tensor, args, kwargs) -> torch.Tensor:
        setting = self.perft_setting[name]
        A, B = self.perft_A[name], self.perft_B[name]
        x = self.perft_dropout[name](h).to(A.dtype)
        act = ACT2FN[setting.adapter_act] if setting.expert_type == "adapter" else None
        if setting.variant in ("D", "S"):
            return _dense_experts(x, A, B, act, gates=None) * setting.scaling
        if setting.variant == "R":
            with torch.autocast(h.device.type, enabled=False):  # router math in float32, also under autocast
                logits = F.linear(h.float(), self.perft_router[name].float())
            probs = logits.softmax(dim=-1)
            weights, index = probs.topk(setting.top_k, dim=-1)
            if setting.norm_topk_prob:
                weights = weights / weights.sum(dim=-1, keepdim=True)
            if setting.base_gate_weights:  # the authors' OLMoE code: the k-th choice gets the model's k-th weight
                base_weights = _routing_arguments(args, kwargs)[1].reshape(index.shape[0], -1).float()
                # k-th largest: some routers (DeepSeek-V3's topk(sorted=False)) hand their weights over unsorted
                weights = base_weights.sort(dim=-1, descending=True).values[:, : setting.top_k]
            record_logits = logits
        else:
            index, weights = _routing_arguments(args, kwargs)
            index = index.reshape(-1, index.shape[-1])
            weights = weights.reshape(index.shape)
            record_logits = None
        if self.training:
            self.router_records[name] = RouterRecord(record_logits, index, setting.num_experts)
        if self._use_sparse(setting.num_experts, index.shape[-1], x.device):
            term = _sparse_experts(x, A, B, act, index, weights)
        else:
            gates = torch.zeros(x.shape[0], setting.num_experts, device=x.device, dtype=torch.float32)
            gates = gates.scatter_add(1, index, weights.float())
            term = _dense_experts(x, A, B, act, gates)
        return term * setting.scaling

    def _use_sparse(self, num_experts: int, k: int, device: torch.device) -> bool:
        ratio = self.sparse_min_expert_ratio
        if ratio is None:
            ratio = SPARSE_MIN_EXPERT_RATIO.get(device.type, SPARSE_MIN_EXPERT_RATIO["cuda"])
        return num_experts > ratio * k and _grouped_mm_available()

    def __repr__(self) -> str:
        return "perft." + super().__repr__()


def _routing_arguments(args, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(top_k_index, top_k_weights) as the MoE block passed them to its experts (names vary by family)."""
    if len(args) >= 2:
        return args[0], args[1]
    index = next(
        (kwargs[k] for k in ("top_k_index", "router_indices", "topk_indices", "selected_experts") if k in kwargs), None
    )
    weights = next(
        (kwargs[k] for k in ("top_k_weights", "routing_weights", "topk_weights", "router_scores") if k in kwargs), None
    )
    if index is None or weights is None:
        raise RuntimeError(
            "PERFT-E needs the routing the MoE block passes to its experts, but this call carried "
            "none (expected experts(hidden_states, top_k_index, top_k_weights))."
        )
    return index, weights


def _dense_experts(x, A, B, act, gates) -> torch.Tensor:
    """sum_j gates_j B_j act(A_j x) for all M experts at once: [T, D] -> [T, M*r] -> [T, D]."""
    M, r, D = A.shape
    z = x @ A.reshape(M * r, D).t()
    if act is not None:
        z = act(z)
    if gates is not None:
        z = (z.view(-1, M, r) * gates.unsqueeze(-1).to(z.dtype)).view(-1, M * r)
    return z @ B.permute(0, 2, 1).reshape(M * r, D)


def _sparse_experts(x, A, B, act, index, weights) -> torch.Tensor:
    """The same sum over only the K selected experts per token: sort (token, expert) pairs by expert and run
    two grouped GEMMs, so no [T, M, ...] intermediate exists."""
    T, K = index.shape
    M = A.shape[0]
    sorted_experts, order = torch.sort(index.reshape(-1))
    token = order // K
    counts_input = sorted_experts.float() if x.device.type in ("cpu", "mps") else sorted_experts.int()
    counts = torch.histc(counts_input, bins=M, min=0, max=M - 1)
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
    z = _grouped_mm(x[token], A.transpose(1, 2), offsets)  # [S, r]
    if act is not None:
        z = act(z)
    z = z * weights.reshape(-1)[order].unsqueeze(-1).to(z.dtype)
    y = _grouped_mm(z, B.transpose(1, 2), offsets)  # [S, D]
    return torch.zeros_like(x).index_add(0, token, y.to(x.dtype))
