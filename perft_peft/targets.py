"""Which modules of a model an adapter config targets: shared by the PERFT and LoRACoE tuners."""

from __future__ import annotations

from collections.abc import Iterator

from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from torch import nn


def base_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) for every module of the model as the user sees it: a tuner layer stands for the module it
    wraps, and the adapters' own submodules are skipped."""
    inside = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, BaseTunerLayer):
            inside.append(name + ".")
            module = module.get_base_layer()
        yield name, module


def matched_targets(model: nn.Module, config) -> dict[str, nn.Module]:
    """The modules ``config.target_modules`` (and layers_to_transform) match; a ValueError if there are none."""
    targets = {name: module for name, module in base_modules(model) if check_target_module_exists(config, name)}
    if not targets:
        raise ValueError(f"target_modules={config.target_modules!r} matched no module of {type(model).__name__}.")
    return targets
