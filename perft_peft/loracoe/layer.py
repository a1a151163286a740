"""The LoRACoE layer: a LoRA on an ``nn.Linear`` whose r ranks are re-weighted per token (docs/design.md).

    y = W0 x + s * B (c(x) * (A x))
    composition (LoRACoE, §3.2): c(x) = kappa * mean_e softmax_r(R_e x),    R [E*r, d_in], row e*r + j = (e, j)
    partition (LoRAMoE, Eq. 4-5): c(x)_j = kappa * softmax_E(R x)_{j // (r/E)},   R [E, d_in]

``x [A; R]^T`` is one GEMM split afterwards (the paper's appendix C optimisation; ``fuse_router = False`` runs two,
for comparison). In the "warmup" phase the router is skipped: c = 1, a plain LoRA, which is also the only state that
can be merged into W0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from ..init import init_lora_factors, storage_dtype
from .config import LoraCoeConfig
from .router_init import init_router

PHASES = ("warmup", "joint")


@dataclass(frozen=True)
class _LoraCoeSetting:
    """Per-adapter hyperparameters the forward needs (the tensors live in the ParameterDicts)."""

    construction: str
    num_experts: int
    scaling: float
    kappa: float


def rank_weights(logits: torch.Tensor, setting: _LoraCoeSetting, r: int) -> torch.Tensor:
    """c(x) / norm in float32 from the router logits, norm = kappa / E (composition: the sum of the E softmaxes
    over the r ranks, [..., r]) or kappa (partition: the softmax over the E groups, [..., E], one value for each
    group's r/E ranks). The caller folds the constant norm into the output scale rather than spending an
    elementwise op (and its backward) on it."""
    logits = logits.float()
    if setting.construction == "composition":
        return logits.unflatten(-1, (setting.num_experts, r)).softmax(dim=-1).sum(dim=-2)
    return logits.softmax(dim=-1)


class LoraCoeLayer(nn.Module, BaseTunerLayer):
    """Wraps an ``nn.Linear`` and adds the LoRACoE term of each active adapter."""

    adapter_layer_names = ("loracoe_A", "loracoe_B", "loracoe_router")
    other_param_names = ("loracoe_dropout", "loracoe_setting", "loracoe_phase")

    def __init__(
        self,
        base_layer: nn.Linear,
        adapter_name: str,
        config: LoraCoeConfig,
        init: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.loracoe_A = nn.ParameterDict()
        self.loracoe_B = nn.ParameterDict()
        self.loracoe_router = nn.ParameterDict()
        self.loracoe_dropout = nn.ModuleDict()
        self.loracoe_setting: dict[str, _LoraCoeSetting] = {}
        self.loracoe_phase: dict[str, str] = {}
        # Mean composition weights c per rank over the last training forward's tokens (for the trainer's
        # rank-usage telemetry); replaced every forward, empty outside training.
        self.rank_usage: dict[str, torch.Tensor] = {}
        # An instance dict (the class default is shared): peft re-freezes what is listed here whenever it sets
        # requires_grad, which keeps a warmup router frozen across set_adapter / disable_adapter.
        self.frozen_peft_weight_names: dict[str, tuple[str, ...]] = {}
        # One GEMM x [A; R]^T (the paper's appendix C) or two; the same numbers either way (benchmarks compare).
        self.fuse_router = True
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, init)

    def update_layer(
        self, adapter_name: str, config: LoraCoeConfig, init: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> None:
        """Create (or re-create) one adapter, in the joint phase. ``init`` = (A, B) of a LoRA to start from."""
        r, d_in, d_out = config.r, self.in_features, self.out_features
        self.loracoe_setting[adapter_name] = _LoraCoeSetting(
            config.construction, config.num_experts, config.scaling, config.kappa
        )
        self.loracoe_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()
        factory = {"device": self.base_layer.weight.device, "dtype": torch.float32}
        dtype = storage_dtype(self.base_layer.weight)
        A = torch.empty(r, d_in, **factory)
        B = torch.empty(d_out, r, **factory)
        if init is not None:
            with torch.no_grad():
                A.copy_(init[0])
                B.copy_(init[1])
        else:
            init_lora_factors(A, B, config.init_weights)
        self.loracoe_A[adapter_name] = nn.Parameter(A.to(dtype))
        self.loracoe_B[adapter_name] = nn.Parameter(B.to(dtype))
        # Random but small (router_init.py): the experts start different, the joint phase starts as the LoRA to ~1e-3.
        router = torch.empty(config.router_rows, d_in, **factory)
        init_router(router)
        self.loracoe_router[adapter_name] = nn.Parameter(router.to(dtype))
        self.loracoe_phase[adapter_name] = "joint"
        self.frozen_peft_weight_names.pop(adapter_name, None)
        self.set_adapter(self.active_adapters)

    def set_phase(self, adapter_name: str, phase: str) -> None:
        """warmup: c = 1, router unused and frozen. joint: router used, trainable whenever A is."""
        if adapter_name in self.merged_adapters:
            raise ValueError(
                f"Adapter {adapter_name!r} is merged into the base weights; call unmerge_adapter() "
                "before changing its LoRACoE phase."
            )
        self.loracoe_phase[adapter_name] = phase
        router = self.loracoe_router[adapter_name]
        if phase == "warmup":
            self.frozen_peft_weight_names[adapter_name] = ("loracoe_router",)
            router.requires_grad_(False)
        else:
            self.frozen_peft_weight_names.pop(adapter_name, None)
            router.requires_grad_(self.loracoe_A[adapter_name].requires_grad)

    # -- merging (warmup only: then the update is the constant s * B A) ----------------------------------------

    def check_mergeable(self, adapter_names: list[str]) -> None:
        joint = [name for name in adapter_names if self.loracoe_phase.get(name) == "joint"]
        if joint:
            raise ValueError(
                f"Cannot merge LoRACoE adapter(s) {joint} in the joint phase: the router makes the update depend on "
                "each token, so it is no fixed weight. Nothing was merged. Merge only after "
                "set_loracoe_phase(model, 'warmup') (the paper's inference without router), or keep the adapter."
            )

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """s * B A, the whole update when c = 1."""
        weight = self.get_base_layer().weight
        delta = self.loracoe_B[adapter_name] @ self.loracoe_A[adapter_name] * self.loracoe_setting[adapter_name].scaling
        return delta.to(weight.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        names = [name for name in check_adapters_to_merge(self, adapter_names) if name in self.loracoe_A]
        self.check_mergeable(names)
        weight = self.get_base_layer().weight
        with torch.no_grad():
            for name in names:
                merged = weight.data + self.delta_weight(name)
                if safe_merge and not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken.")
                weight.data = merged
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        weight = self.get_base_layer().weight
        with torch.no_grad():
            while self.merged_adapters:
                weight.data -= self.delta_weight(self.merged_adapters.pop())

    # -- forward ---------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not self.training:
            self.rank_usage.clear()
        if self.disable_adapters and self.merged:
            self.unmerge()
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        for name in self.active_adapters:
            if name in self.loracoe_A:
                result = result + self._adapter_term(name, x).to(result.dtype)
        return result

    def _adapter_term(self, name: str, x: torch.Tensor) -> torch.Tensor:
        setting = self.loracoe_setting[name]
        A, B = self.loracoe_A[name], self.loracoe_B[name]
        h = self.loracoe_dropout[name](x.to(A.dtype))
        if self.loracoe_phase[name] == "warmup":
            return F.linear(F.linear(h, A), B) * setting.scaling
        r = A.shape[0]
        z, logits = self._ranks_and_logits(h, A, self.loracoe_router[name])
        weights = rank_weights(logits, setting, r)
        norm = setting.kappa / setting.num_experts if setting.construction == "composition" else setting.kappa
        if self.training:
            usage = weights.detach().reshape(-1, weights.shape[-1]).mean(dim=0) * norm
            self.rank_usage[name] = usage.repeat_interleave(r // usage.shape[0])  # c per rank
        if setting.construction == "composition":
            z = z * weights.to(z.dtype)
        else:  # each group's gate broadcast over its r/E ranks, c never materialised
            z = (z.unflatten(-1, (setting.num_experts, -1)) * weights.unsqueeze(-1).to(z.dtype)).flatten(-2)
        return F.linear(z, B) * (setting.scaling * norm)

    def _ranks_and_logits(
        self, h: torch.Tensor, A: torch.Tensor, router: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A h, R h): one GEMM h [A; R]^T (appendix C) split afterwards, or two with ``fuse_router = False``.
        The logits must stay float32 (a bf16 GEMM moves logits of ~10 by ~0.05): under a bf16/fp16 autocast, or
        with adapter tensors stored in bf16/fp16 (``autocast_adapter_dtype=False``), the GEMM runs in float32 as a
        whole, A's r rows with it: still one GEMM, whose extra cost over bf16 is that of (E + 1) r output
        features, small next to the base layer's. A h comes back in A's dtype."""
        device = h.device.type
        if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) != torch.float32:
            with torch.autocast(device, enabled=False):
                return self._ranks_and_logits(h.float(), A, router)
        if router.dtype != torch.float32:
            z, logits = self._ranks_and_logits(h.float(), A.float(), router.float())
            return z.to(A.dtype), logits
        if self.fuse_router:
            return F.linear(h, torch.cat((A, router))).split((A.shape[0], router.shape[0]), dim=-1)
        return F.linear(h, A), F.linear(h, router)

    def __repr__(self) -> str:
        return "loracoe." + super().__repr__()
