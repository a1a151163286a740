"""Checks the PERFT and LoRACoE tuners share (both import them; neither imports the other): numbers and layer
selections a config may hold, adapter names, and layer indices a model has."""

from __future__ import annotations

import math
import re

from torch import nn


def check_positive_number(name: str, value) -> None:
    """A finite number > 0 (NaN and infinity pass a plain ``> 0`` test, and make every logit NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number (not NaN or infinite), got {value!r}.")


def check_positive_int(name: str, value) -> None:
    """An int > 0 (a bool is not one)."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def check_layer_selection(config) -> None:
    """layers_to_transform / layers_pattern as peft's LoRA accepts them: they pick layers among the modules a
    list of names matches (a regex target_modules must select layers itself)."""
    if isinstance(config.target_modules, str):
        for name in ("layers_to_transform", "layers_pattern"):
            if getattr(config, name) is not None:
                raise ValueError(
                    f"{name} cannot be used when target_modules is a regex (a str); give a list of "
                    "module names, or put the layer indices in the regex."
                )
    if config.layers_pattern and config.layers_to_transform is None:
        raise ValueError("layers_pattern only makes sense together with layers_to_transform.")


def check_adapter_name(adapter_name: str, prefix: str) -> None:
    """Adapter names become keys of the layers' ParameterDicts and parts of state-dict keys."""
    if not isinstance(adapter_name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", adapter_name):
        raise ValueError(
            f"Invalid adapter name {adapter_name!r}: use letters, digits, '_' or '-' (no dots), "
            "not starting with a digit."
        )
    reserved = set(dir(nn.ParameterDict())) | {"base_layer", "weight", "bias"}
    if adapter_name in reserved or adapter_name.startswith(prefix):
        raise ValueError(
            f"Adapter name {adapter_name!r} clashes with an attribute name of the adapter layers; choose another name."
        )


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
        raise ValueError(
            f"layers_to_transform={layers!r}: {type(model).__name__} has {count} layers (indices 0 to "
            f"{count - 1 if isinstance(count, int) else '?'}), so {beyond} name no layer."
        )
