"""perft_peft.trainer: a Trainer that adds PERFT's router losses, LoRACoE's two phases and routing telemetry."""

from .arguments import PerftTrainingArguments
from .routing import RoutingStats
from .trainer import PerftTrainer, PerftTrainerMixin

__all__ = ["PerftTrainer", "PerftTrainerMixin", "PerftTrainingArguments", "RoutingStats"]
