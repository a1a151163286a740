"""perft-peft: PERFT and LoRACoE for Mixture-of-Experts LLMs, as peft methods.

Importing this package registers both methods with peft, so ``get_peft_model``, ``PeftModel.from_pretrained`` and
transformers' ``load_adapter`` understand ``PerftConfig`` and ``LoraCoeConfig`` adapters. peft has no plugin
discovery; an installed perft-peft imports this package as soon as peft is imported (``perft_peft_autoload``).
"""

from .accounting import ParameterAccounting, parameter_accounting
from .analysis import rank_importance
from .hub import install_card_hooks
from .loracoe import LoraCoeConfig, LoraCoeModel, set_loracoe_phase
from .perft import PerftConfig, PerftLayer, PerftModel, load_balancing_loss, router_records, router_z_loss
from .registry import register

register("perft", PerftConfig, PerftModel, prefix="perft_")
register("loracoe", LoraCoeConfig, LoraCoeModel, prefix="loracoe_")
install_card_hooks()  # save_pretrained, model.push_to_hub and Trainer.push_to_hub write our card for both

__version__ = "0.1.0"

__all__ = [
    "LoraCoeConfig",
    "LoraCoeModel",
    "ParameterAccounting",
    "PerftConfig",
    "PerftLayer",
    "PerftModel",
    "load_balancing_loss",
    "parameter_accounting",
    "rank_importance",
    "router_records",
    "router_z_loss",
    "set_loracoe_phase",
]
