from .config import LoraCoeConfig
from .export import save_without_router
from .layer import LoraCoeLayer
from .model import LoraCoeModel, LoraCoeParameterCount, loracoe_parameter_count, set_loracoe_phase

__all__ = [
    "LoraCoeConfig",
    "LoraCoeLayer",
    "LoraCoeModel",
    "LoraCoeParameterCount",
    "loracoe_parameter_count",
    "save_without_router",
    "set_loracoe_phase",
]
