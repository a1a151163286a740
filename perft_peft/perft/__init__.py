from .config import PerftConfig
from .layer import PerftLayer, RouterRecord
from .model import PerftModel

__all__ = ["PerftConfig", "PerftLayer", "PerftModel", "RouterRecord"]
