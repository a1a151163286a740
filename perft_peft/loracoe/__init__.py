from .config import LoraCoeConfig
from .layer import LoraCoeLayer
from .model import LoraCoeModel, LoraCoeParameterCount, loracoe_parameter_count, set_loracoe_phase

__all__ = ["LoraCoeConfig", "LoraCoeLayer", "LoraCoeModel", "LoraCoeParameterCount", "loracoe_parameter_count",
           "set_loracoe_phase"]
