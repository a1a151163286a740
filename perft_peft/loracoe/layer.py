"""The LoRACoE layer: a LoRA on an ``nn.Linear`` whose r ranks are re-weighted per token (DESIGN.md).

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

PHASES = ("warmup", "joint")


@dataclass(frozen=True)
class _Setting:
    """Per-adapter hyperparameters the forward needs (the tensors live in the ParameterDicts)."""

    construction: str
    num_experts: int
    scaling: float
    kappa: float


def composition_weights(logits: torch.Tensor, setting: _Setting, r: int) -> torch.Tensor:
    """c(x) [..., r] in float32 from the router logits [..., router_rows]."""
    logits = logits.float()
    if setting.construction == "composition":
        c = logits.unflatten(-1, (setting.num_experts, r)).softmax(dim=-1).mean(dim=-2)
    else:
        c = logits.softmax(dim=-1).repeat_interleave(r // setting.num_experts, dim=-1)
    return c * setting.kappa


def _runs_in_float32(A: torch.Tensor, h: torch.Tensor) -> bool:
    """Whether the fused x [A; R]^T GEMM gives float32 router logits: float32 storage and no autocast."""
    return A.dtype == torch.float32 and not torch.is_autocast_enabled(h.device.type)


class LoraCoeLayer(nn.Module, BaseTunerLayer):
    """Wraps an ``nn.Linear`` and adds the LoRACoE term of each active adapter."""

    adapter_layer_names = ("loracoe_A", "loracoe_B", "loracoe_router")
    other_param_names = ("loracoe_dropout", "loracoe_setting", "loracoe_phase")

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: LoraCoeConfig,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.loracoe_A = nn.ParameterDict()
        self.loracoe_B = nn.ParameterDict()
        self.loracoe_router = nn.ParameterDict()
        self.loracoe_dropout = nn.ModuleDict()
        self.loracoe_setting: dict[str, _Setting] = {}
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

    def update_layer(self, adapter_name: str, config: LoraCoeConfig,
                     init: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Create (or re-create) one adapter, in the joint phase. ``init`` = (A, B) of a LoRA to start from."""
        r, d_in, d_out = config.r, self.in_features, self.out_features
        self.loracoe_setting[adapter_name] = _Setting(config.construction, config.num_experts, config.scaling,
                                                      config.kappa)
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
        # Zero router: uniform weights, so with composition_scale="rank" the joint phase starts as the LoRA.
        self.loracoe_router[adapter_name] = nn.Parameter(torch.zeros(config.router_rows, d_in, device=A.device,
                                                                     dtype=dtype))
        self.loracoe_phase[adapter_name] = "joint"
        self.frozen_peft_weight_names.pop(adapter_name, None)
        self.set_adapter(self.active_adapters)

    def set_phase(self, adapter_name: str, phase: str) -> None:
        """warmup: c = 1, router unused and frozen. joint: router used, trainable whenever A is."""
        if adapter_name in self.merged_adapters:
            raise ValueError(f"Adapter {adapter_name!r} is merged into the base weights; call unmerge_adapter() "
                             "before changing its LoRACoE phase.")
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
                "set_loracoe_phase(model, 'warmup') (the paper's inference without router), or keep the adapter.")

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
            z = F.linear(h, A)
        else:
            router = self.loracoe_router[name]
            if self.fuse_router and _runs_in_float32(A, h):
                z, logits = F.linear(h, torch.cat((A, router))).split((A.shape[0], router.shape[0]), dim=-1)
            else:
                z = F.linear(h, A)
                with torch.autocast(h.device.type, enabled=False):  # router math in float32 whatever the storage
                    logits = F.linear(h.float(), router.float())
            c = composition_weights(logits, setting, A.shape[0])
            if self.training:
                self.rank_usage[name] = c.detach().reshape(-1, c.shape[-1]).mean(dim=0)
            z = z * c.to(z.dtype)
        return F.linear(z, B) * setting.scaling

    def __repr__(self) -> str:
        return "loracoe." + super().__repr__()
