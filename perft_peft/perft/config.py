"""PerftConfig: the PERFT family (arXiv 2411.08212, Eq. 7-10) as a peft config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft import PeftConfig, PeftType

from ..checks import check_layer_selection, check_positive_int, check_positive_number
from ..init import INIT_CHOICES, PERFT_INIT

VARIANTS = ("R", "E", "D", "S")
EXPERT_TYPES = ("lora", "adapter")
GATE_WEIGHTS = ("router", "base")
# Defaults where the user leaves the multiplicity unset: the paper's common PERFT-R (Top2/4) and PERFT-D (4).
DEFAULT_NUM_EXPERTS = 4
DEFAULT_TOP_K = 2


@dataclass
class PerftConfig(PeftConfig):
    """Configuration of a PERFT adapter: PEFT experts in parallel with each MoE block's experts.

    R adds ``M`` routed PEFT experts with their own top-``K`` router; E embeds one PEFT expert in each of the
    model's ``N`` experts and reuses the model's routing; D adds ``M`` always-on shared PEFT experts; S one.
    """

    variant: str = field(
        default="R",
        metadata={
            "help": "PERFT variant: 'R' (routed, own top-K router), 'E' (embedded in the model's experts, "
            "reuses its router), 'D' (several always-on shared experts) or 'S' (one shared expert)."
        },
    )
    num_experts: Optional[int] = field(
        default=None,
        metadata={
            "help": "M, the number of PEFT experts (R and D only; default 4). E always has the model's N, "
            "S has 1: giving it there is an error."
        },
    )
    top_k: Optional[int] = field(
        default=None,
        metadata={
            "help": "K, PEFT experts activated per token by PERFT-R's router (R only; default 2, at most "
            "num_experts). Gates are the top-K softmax probabilities (renormalised only with "
            "norm_topk_prob)."
        },
    )
    norm_topk_prob: bool = field(
        default=False,
        metadata={
            "help": "PERFT-R only: divide the top-K gate weights by their sum, so they add up to 1 "
            "(transformers' name for the same switch of the models' own routers). False = Eq. 7 "
            "of the paper (TopK of the softmax, not renormalised); True = the authors' Mixtral code "
            "(mixtral_modification/modeling_mixtral.py, line 1013)."
        },
    )
    gate_weights: str = field(
        default="router",
        metadata={
            "help": "PERFT-R only. 'router' (Eq. 7): the PEFT router's top-K probabilities weight the chosen "
            "PEFT experts. 'base': the authors' OLMoE code (olmoe_modification/modeling_olmoe.py, "
            "line 882): the PEFT router only chooses; the expert chosen k-th is weighted by the "
            "model router's k-th top-k weight for the token (needs top_k <= the model's top-k and "
            "the experts module as target)."
        },
    )
    r: int = field(default=8, metadata={"help": "Bottleneck size D_B of each PEFT expert (the LoRA rank)."})
    lora_alpha: int = field(
        default=16,
        metadata={
            "help": "Output scale numerator: each expert's term is scaled by "
            "lora_alpha / r (lora_alpha = r gives scale 1, as the "
            "authors' parallel-adapter experts have)."
        },
    )
    expert_type: str = field(
        default="lora",
        metadata={"help": "'lora': Delta(h) = s * B A h. 'adapter': parallel adapter Delta(h) = s * B act(A h)."},
    )
    adapter_act: str = field(
        default="relu",
        metadata={
            "help": "Activation of 'adapter' experts, any name in transformers' ACT2FN (default relu as in "
            "He et al. 2022). Ignored for 'lora' experts."
        },
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the PEFT experts' input, in [0, 1)."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Names (suffixes) or a regex of the MoE experts modules to adapt. None = every MoE "
            "experts module found in the model."
        },
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None,
        metadata={"help": "Only adapt the decoder layers with these indices (as in peft LoRA)."},
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Name of the layer list used with layers_to_transform when it is not the usual "
            "`layers` (as in peft LoRA)."
        },
    )
    init_weights: Union[bool, str] = field(
        default=PERFT_INIT,
        metadata={
            "help": "'perft' (default): the PERFT authors' A ~ N(0, 2/r), B ~ 1e-6 N(0, 1) (commonsense/"
            "utils.py, init_trainable_parameters); it trained faster than True in the measurement of "
            "docs/benchmarks.md (benchmarks/perft_init.py). True: A like peft LoRA (Kaiming uniform), "
            "B = 0, so the adapted model equals the base model exactly at step 0. False: B random as "
            "well (for tests and debugging)."
        },
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Extra modules to train fully and save with the adapter (as in peft)."},
    )
    base_hidden_size: Optional[int] = field(
        default=None,
        metadata={
            "help": "Filled in at injection: the hidden size D of the model the adapter was made for. "
            "Loading onto a model with another D fails with a clear error."
        },
    )
    base_num_experts: Optional[int] = field(
        default=None,
        metadata={
            "help": "Filled in at injection: the number N of MoE experts of the model the adapter was made "
            "for. Loading onto a model with another N fails with a clear error."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.PERFT
        if isinstance(self.variant, str):
            self.variant = self.variant.upper()
        if self.variant not in VARIANTS:
            raise ValueError(f"Unknown PERFT variant {self.variant!r}: choose one of {', '.join(VARIANTS)}.")
        if self.variant in ("E", "S"):
            for name in ("num_experts", "top_k"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"PERFT-{self.variant} does not take `{name}` (E uses the model's own experts and router, "
                        f"S has a single expert); remove it or choose variant 'R' or 'D'."
                    )
        if self.variant == "D" and self.top_k is not None:
            raise ValueError(
                "PERFT-D activates all its experts and does not take `top_k`; use variant 'R' for routed experts."
            )
        if self.variant in ("R", "D") and self.num_experts is None:
            self.num_experts = DEFAULT_NUM_EXPERTS
        if self.variant == "R" and self.top_k is None:
            self.top_k = min(DEFAULT_TOP_K, self.num_experts)
        check_positive_int("r", self.r)
        if self.num_experts is not None:
            check_positive_int("num_experts", self.num_experts)
        if self.top_k is not None:
            check_positive_int("top_k", self.top_k)
            if self.top_k > self.num_experts:
                raise ValueError(f"top_k={self.top_k} is larger than num_experts={self.num_experts}.")
        check_positive_number("lora_alpha", self.lora_alpha)
        if self.expert_type not in EXPERT_TYPES:
            raise ValueError(f"expert_type must be one of {EXPERT_TYPES}, got {self.expert_type!r}.")
        if self.expert_type == "adapter":
            from transformers.activations import ACT2FN

            if self.adapter_act not in ACT2FN:
                raise ValueError(
                    f"Unknown adapter_act {self.adapter_act!r}; use a name from transformers' ACT2FN "
                    f"such as 'relu', 'gelu', 'silu'."
                )
        if isinstance(self.init_weights, str) and self.init_weights.lower() == PERFT_INIT:
            self.init_weights = PERFT_INIT
        if not isinstance(self.init_weights, (bool, str)) or self.init_weights not in INIT_CHOICES:
            raise ValueError(f"init_weights must be True, False or {PERFT_INIT!r}, got {self.init_weights!r}.")
        if not isinstance(self.norm_topk_prob, bool):
            raise ValueError(f"norm_topk_prob must be True or False, got {self.norm_topk_prob!r}.")
        if self.norm_topk_prob and self.variant != "R":
            raise ValueError(
                f"norm_topk_prob renormalises PERFT-R's own top-K gates; PERFT-{self.variant} has no "
                "router of its own (E uses the model's routing as the model normalises it)."
            )
        if self.gate_weights not in GATE_WEIGHTS:
            raise ValueError(f"gate_weights must be one of {GATE_WEIGHTS}, got {self.gate_weights!r}.")
        if self.gate_weights == "base" and (self.variant != "R" or self.norm_topk_prob):
            raise ValueError(
                "gate_weights='base' replaces PERFT-R's gate weights by the model router's: it needs "
                "variant 'R' and no norm_topk_prob."
            )
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")
        if isinstance(self.target_modules, list):
            self.target_modules = sorted(set(self.target_modules))
        check_layer_selection(self)

    @property
    def num_peft_experts(self) -> Optional[int]:
        """M for R and D, 1 for S; None for E, whose M is the model's N."""
        return {"R": self.num_experts, "D": self.num_experts, "S": 1}.get(self.variant, self.base_num_experts)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r
