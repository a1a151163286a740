"""perft-peft: PERFT and LoRACoE for Mixture-of-Experts LLMs, as peft methods.

Importing this package registers the methods with peft, so ``get_peft_model``, ``PeftModel.from_pretrained`` and
transformers' ``load_adapter`` understand ``PerftConfig`` adapters. peft has no plugin discovery: run
``import perft_peft`` before loading a saved adapter.
"""

from .accounting import ParameterAccounting, parameter_accounting
from .losses import load_balancing_loss, router_records, router_z_loss
from .perft import PerftConfig, PerftLayer, PerftModel
from .registry import register

register("perft", PerftConfig, PerftModel, prefix="perft_")

__version__ = "0.1.0"

__all__ = [
    "ParameterAccounting",
    "PerftConfig",
    "PerftLayer",
    "PerftModel",
    "load_balancing_loss",
    "parameter_accounting",
    "router_records",
    "router_z_loss",
]
