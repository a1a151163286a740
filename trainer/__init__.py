"""perft_peft.trainer: a Trainer that adds PERFT's router losses, LoRACoE's two phases and routing telemetry."""

from .arguments import PerftTrainingArguments
from .finite import NonFiniteError
from .output_dir import OutputDirBusy
from .routing import RoutingStats
from .trainer import PerftTrainer, PerftTrainerMixin

__all__ = [
    "NonFiniteError",
    "OutputDirBusy",
    "PerftTrainer",
    "PerftTrainerMixin",
    "PerftTrainingArguments",
    "RoutingStats",
]
