"""Checks the PERFT and LoRACoE tuners share: numbers a config may hold, and layer indices a model has."""

from __future__ import annotations

import math

from torch import nn


def check_positive_number(name: str, value) -> None:
    """A finite number > 0 (NaN and infinity pass a plain ``> 0`` test, and make every logit NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number (not NaN or infinite), got {value!r}.")


def check_layers_to_transform(model: nn.Module, layers) -> None:
    """Indices in ``layers_to_transform`` must name layers the model has (else they look like a target miss)."""
    if layers is None:
        return
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    count = getattr(config, "num_hidden_layers", None)
    wanted = [layers] if isinstance(layers, int) else list(layers)
    beyond = [i for i in wanted if not isinstance(i, int) or i < 0 or (isinstance(count, int) and i >= count)]
    if beyond:
        raise ValueError(f"layers_to_transform={layers!r}: {type(model).__name__} has {count} layers (indices 0 to "
                         f"{count - 1 if isinstance(count, int) else '?'}), so {beyond} name no layer.")
