"""PerftTrainingArguments: transformers' TrainingArguments plus the routers' losses and LoRACoE's two phases."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments


@dataclass
class PerftTrainingArguments(TrainingArguments):
    _argument_group_name = "training arguments (transformers' TrainingArguments, then PERFT's and LoRACoE's)"

    router_aux_loss_coef: float = field(
        default=0.01,
        metadata={
            "help": "Weight of the load-balancing loss over PERFT-R's own experts (PERFT paper: 0.01 for "
            "OLMoE, 0.02 for Mixtral). Ignored for adapters without a router."
        },
    )
    router_z_loss_coef: float = field(
        default=0.0,
        metadata={"help": "Weight of the ST-MoE router z-loss of PERFT-R's routers (0 = off)."},
    )
    keep_base_aux_loss: bool = field(
        default=True,
        metadata={
            "help": "Keep the base model's own auxiliary losses on (load balancing through "
            "`output_router_logits`, and the router z-loss where the family has one), as the PERFT "
            "paper does. False trains on the language-model loss plus PERFT's terms only."
        },
    )
    loracoe_warmup_steps: Optional[int] = field(
        default=None,
        metadata={
            "help": "LoRACoE: optimizer steps of plain-LoRA warmup (router off and frozen) before joint "
            "training. Give this or loracoe_warmup_epochs, not both."
        },
    )
    loracoe_warmup_epochs: Optional[float] = field(
        default=None,
        metadata={
            "help": "LoRACoE: epochs of plain-LoRA warmup (paper: 2 of 4). Needs num_train_epochs-based "
            "training (max_steps unset)."
        },
    )
    loracoe_warmup_learning_rate: Optional[float] = field(
        default=None,
        metadata={
            "help": "LoRACoE: constant learning rate during warmup (paper: 2e-4; joint training then uses "
            "learning_rate, paper: 5e-5, with lr_scheduler_type). Default: learning_rate."
        },
    )

    resume_from_other_run: bool = field(
        default=False,
        metadata={
            "help": "Resume from a checkpoint whose run fingerprint (adapter config, learning rate, seed, data, "
            "...) differs from this run's. Off: such a checkpoint is refused, listing the differences."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        for name in (
            "router_aux_loss_coef",
            "router_z_loss_coef",
            "loracoe_warmup_epochs",
            "loracoe_warmup_learning_rate",
        ):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}.")
        for name in ("router_aux_loss_coef", "router_z_loss_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.loracoe_warmup_steps is not None and self.loracoe_warmup_epochs is not None:
            raise ValueError("Give loracoe_warmup_steps or loracoe_warmup_epochs, not both.")
        if self.loracoe_warmup_steps is not None and self.loracoe_warmup_steps < 0:
            raise ValueError(f"loracoe_warmup_steps must be >= 0, got {self.loracoe_warmup_steps}.")
        if self.loracoe_warmup_epochs is not None:
            if self.loracoe_warmup_epochs < 0:
                raise ValueError(f"loracoe_warmup_epochs must be >= 0, got {self.loracoe_warmup_epochs}.")
            if self.max_steps > 0:
                raise ValueError(
                    "loracoe_warmup_epochs needs epoch-based training; with max_steps set, give "
                    "loracoe_warmup_steps instead."
                )
            if self.loracoe_warmup_epochs >= self.num_train_epochs:
                raise ValueError(
                    f"loracoe_warmup_epochs={self.loracoe_warmup_epochs} leaves no joint training "
                    f"within num_train_epochs={self.num_train_epochs}."
                )
        if self.loracoe_warmup_learning_rate is not None and self.loracoe_warmup_learning_rate <= 0:
            raise ValueError(f"loracoe_warmup_learning_rate must be > 0, got {self.loracoe_warmup_learning_rate}.")

    @property
    def uses_loracoe_warmup(self) -> bool:
        return bool(self.loracoe_warmup_steps) or bool(self.loracoe_warmup_epochs)

    def loracoe_warmup_steps_for(self, num_training_steps: int) -> int:
        """Warmup length in optimizer steps, for a run of ``num_training_steps``."""
        if self.loracoe_warmup_epochs is not None:
            return int(round(self.loracoe_warmup_epochs * num_training_steps / self.num_train_epochs))
        return self.loracoe_warmup_steps or 0
