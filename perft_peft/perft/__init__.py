from .config import PerftConfig
from .layer import PerftLayer, RouterRecord
from .losses import load_balancing_loss, router_records, router_z_loss
from .model import PerftModel

__all__ = [
    "PerftConfig",
    "PerftLayer",
    "PerftModel",
    "RouterRecord",
    "load_balancing_loss",
    "router_records",
    "router_z_loss",
]
