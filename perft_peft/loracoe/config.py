"""LoraCoeConfig: LoRA Compositional Experts (LoRACoE paper, §3) and its partition-based baseline (§2.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft import PeftConfig, PeftType

from ..checks import check_layer_selection, check_positive_int, check_positive_number

COMPOSITION_SCALES = ("rank", "none")
CONSTRUCTIONS = ("composition", "partition")


@dataclass
class LoraCoeConfig(PeftConfig):
    """Configuration of a LoRACoE adapter on ``nn.Linear`` modules.

    ``y = W0 x + s * B (c(x) * (A x))`` where ``c(x)`` weights the r ranks of one LoRA. "composition" (LoRACoE):
    ``c(x) = kappa * mean_e softmax_r(R_e x)`` over E composite experts. "partition" (LoRAMoE baseline, Eq. 4-5):
    the r ranks form E contiguous groups of r/E and ``c(x)_j = kappa * softmax_E(R x)_{group(j)}``.
    """

    r: int = field(default=8, metadata={"help": "LoRA rank r, shared by all composite experts."})
    lora_alpha: float = field(
        default=16,
        metadata={"help": "Output scale numerator: the update is scaled by s = lora_alpha / r, as in peft LoRA."},
    )
    num_experts: int = field(
        default=2,
        metadata={
            "help": "E. composition: composite experts, each a softmax over all r ranks (router E*r x d_in; "
            "the paper uses 2). partition: groups of r/E ranks with a softmax over the E groups "
            "(router E x d_in; the paper's LoRAMoE uses 4)."
        },
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Names (suffixes) or a regex of the nn.Linear modules to adapt (the paper: q_proj, k_proj, "
            "v_proj, up_proj, down_proj). None = the modules of init_from_lora if given, else peft "
            "LoRA's default for the model type."
        },
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None,
        metadata={
            "help": "Only adapt the decoder layers with these indices (as in peft LoRA; target_modules must "
            "then be a list of names, not a regex)."
        },
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Name of the layer list used with layers_to_transform when it is not the usual "
            "`layers` (as in peft LoRA)."
        },
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout on the adapter input, in [0, 1). The router reads the same input as A (one fused GEMM)."
        },
    )
    composition_scale: str = field(
        default="rank",
        metadata={
            "help": "'rank': kappa = r (composition) or E (partition), so uniform router weights give c = 1, "
            "exactly the warmed-up LoRA. 'none': kappa = 1, the paper's literal formula, which scales "
            "the LoRA update by 1/r (1/E for partition) at the switch to joint training."
        },
    )
    construction: str = field(
        default="composition",
        metadata={
            "help": "'composition' = LoRACoE (§3.2). 'partition' = the partition-based LoRAMoE baseline "
            "(§2.3, Eq. 4-5): E contiguous groups of r/E ranks and a softmax router over groups."
        },
    )
    init_from_lora: Optional[str] = field(
        default=None,
        metadata={
            "help": "Local directory or Hub id of a saved peft LoRA adapter (adapter_config.json + "
            "adapter_model.safetensors) whose lora_A/lora_B become loracoe_A/loracoe_B: the paper's "
            "well-initialised LoRA. Targets, r and lora_alpha / r must match. Consumed at injection "
            "(moved to warm_started_from), so a saved LoRACoE loads without the LoRA."
        },
    )
    warm_started_from: Optional[str] = field(
        default=None,
        metadata={
            "help": "Filled in at injection: the init_from_lora this adapter started from (provenance only; "
            "loading never reads it)."
        },
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "True: A like peft LoRA (Kaiming uniform), B = 0, so the adapted model equals the base "
            "model at step 0. False: B random as well (for tests and debugging). The router always "
            "starts random and small (perft_peft/loracoe/router_init.py)."
        },
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Extra modules to train fully and save with the adapter (as in peft)."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.LORACOE
        check_positive_int("r", self.r)
        check_positive_int("num_experts", self.num_experts)
        check_positive_number("lora_alpha", self.lora_alpha)
        if self.composition_scale not in COMPOSITION_SCALES:
            raise ValueError(f"composition_scale must be one of {COMPOSITION_SCALES}, got {self.composition_scale!r}.")
        if self.construction not in CONSTRUCTIONS:
            raise ValueError(f"construction must be one of {CONSTRUCTIONS}, got {self.construction!r}.")
        if self.construction == "partition" and self.r % self.num_experts:
            raise ValueError(
                f"construction='partition' splits the r={self.r} ranks into num_experts="
                f"{self.num_experts} equal groups: r must be divisible by num_experts."
            )
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")
        if self.init_from_lora is not None:
            self.init_from_lora = str(self.init_from_lora)  # a pathlib.Path must serialise to adapter_config.json
            if not self.init_from_lora:
                raise ValueError("init_from_lora must be a local directory or a Hub id, got an empty string.")
        if isinstance(self.target_modules, list):
            self.target_modules = sorted(set(self.target_modules))
        check_layer_selection(self)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    @property
    def router_rows(self) -> int:
        """Rows of ``loracoe_router``: one per (expert, rank) for composition, one per group for partition."""
        return self.num_experts * self.r if self.construction == "composition" else self.num_experts

    @property
    def kappa(self) -> float:
        """The scale that makes uniform router weights give c = 1 ('rank'), or 1 (the paper's literal formula)."""
        if self.composition_scale == "none":
            return 1.0
        return float(self.r if self.construction == "composition" else self.num_experts)
