"""LoraCoeModel: injects LoraCoeLayer around every targeted ``nn.Linear`` (peft BaseTuner), plus the phase switch
and the parameter count."""

from __future__ import annotations

from dataclasses import dataclass

from peft.tuners.tuners_utils import BaseTuner, _maybe_include_all_linear_layers
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from ..checks import check_adapter_name, check_layers_to_transform
from ..init import cast_adapter_dtype
from ..targets import matched_targets
from .config import LoraCoeConfig
from .layer import PHASES, LoraCoeLayer
from .warm_start import SavedLora, check_lora_fits, read_lora


class LoraCoeModel(BaseTuner):
    """LoRACoE (and the partition-based LoRAMoE baseline) on any model with ``nn.Linear`` layers. Use through
    ``peft.get_peft_model``; switch phases with ``set_loracoe_phase``."""

    prefix: str = "loracoe_"
    tuner_layer_cls = LoraCoeLayer
    # A LoRACoE is a LoRA with a router: without target_modules, adapt what peft LoRA would.
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        # Validate everything (including the LoRA to start from) before peft touches a single module.
        check_adapter_name(adapter_name, self.prefix)
        config = self.peft_config[adapter_name]
        lora = read_lora(config.init_from_lora) if config.init_from_lora else None
        if lora is not None and kwargs.get("low_cpu_mem_usage"):
            raise ValueError(
                "init_from_lora copies real tensors, but low_cpu_mem_usage=True creates the adapter on "
                "the meta device; create the warm-started LoRACoE without low_cpu_mem_usage."
            )
        targets = self._resolve_targets(model, config, lora)
        self._warm_start = {name: lora.tensors[name] for name in targets} if lora is not None else {}
        try:
            super().inject_adapter(model, adapter_name, *args, **kwargs)
        finally:
            self._warm_start = {}
        if lora is not None:
            # The tensors now live in the adapter: a saved LoRACoE must load without the LoRA.
            config.warm_started_from, config.init_from_lora = config.init_from_lora, None

    def _resolve_targets(self, model: nn.Module, config: LoraCoeConfig, lora: SavedLora | None) -> dict[str, nn.Linear]:
        """Fill target_modules when unset, check every target is an nn.Linear (and fits the LoRA); raise otherwise."""
        if config.target_modules is None:
            if lora is not None:
                config.target_modules = sorted({name.rsplit(".", 1)[-1] for name in lora.tensors})
            else:
                model_type = getattr(getattr(model, "config", None), "model_type", None)
                if model_type not in self.target_module_mapping:
                    raise ValueError(
                        f"No default target_modules for model type {model_type!r}: pass target_modules "
                        "(the paper adapts q_proj, k_proj, v_proj, up_proj, down_proj)."
                    )
                config.target_modules = sorted(self.target_module_mapping[model_type])
        _maybe_include_all_linear_layers(config, model)
        check_layers_to_transform(model, config.layers_to_transform)
        targets = matched_targets(model, config)
        not_linear = {
            name: type(module).__name__ for name, module in targets.items() if not isinstance(module, nn.Linear)
        }
        if not_linear:
            raise ValueError(
                f"LoRACoE adapts nn.Linear modules only, but target_modules={config.target_modules!r} "
                f"matched {dict(list(not_linear.items())[:3])}. Target the Linear projections "
                "(e.g. q_proj, k_proj, v_proj, up_proj, down_proj)."
            )
        if lora is not None:
            check_lora_fits(lora, config, targets)
        return targets

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        cast_adapter_dtype(self, adapter_name, autocast_adapter_dtype)

    def _create_and_replace(
        self,
        peft_config: LoraCoeConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs,
    ) -> None:
        init = self._warm_start.get(current_key)
        if isinstance(target, LoraCoeLayer):
            target.update_layer(adapter_name, peft_config, init)
            return
        new = LoraCoeLayer(target, adapter_name, peft_config, init)
        if adapter_name not in self.active_adapters:
            new.requires_grad_(False)
        self._replace_module(parent, target_name, new, target)

    # -- merging: only warmup-phase adapters (c = 1) are a fixed weight --------------------------------------------

    def _check_mergeable(self, adapter_names: list[str] | None) -> None:
        """Check every layer before any is merged, so a refusal leaves the whole model as it was."""
        for layer in self.model.modules():
            if isinstance(layer, LoraCoeLayer):
                layer.check_mergeable(adapter_names if adapter_names is not None else layer.active_adapters)

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        self._check_mergeable(adapter_names)
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names: list[str] | None = None
    ) -> nn.Module:
        self._check_mergeable(adapter_names)
        return super().merge_and_unload(progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names)


def set_loracoe_phase(model: nn.Module, phase: str, adapter_names: str | list[str] | None = None) -> None:
    """Switch LoRACoE adapters between the paper's two training phases (§3.3).

    ``"warmup"``: c = 1, a plain LoRA; the router is neither used nor trainable (also the paper's inference without
    router, Table 2). ``"joint"``: the router is used and trainable. ``model`` is a PeftModel or any module that
    contains LoRACoE layers; ``adapter_names`` None = every LoRACoE adapter in it.
    """
    if phase not in PHASES:
        raise ValueError(f"Unknown LoRACoE phase {phase!r}: choose one of {', '.join(PHASES)}.")
    layers = [module for module in model.modules() if isinstance(module, LoraCoeLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} contains no LoRACoE layer.")
    available = set().union(*(layer.loracoe_A.keys() for layer in layers))
    names = [adapter_names] if isinstance(adapter_names, str) else adapter_names
    names = sorted(available) if names is None else list(names)
    unknown = sorted(set(names) - available)
    if unknown:
        raise ValueError(f"No LoRACoE adapter named {unknown}; the model has {sorted(available)}.")
    merged = sorted({name for layer in layers for name in layer.merged_adapters if name in names})
    if merged:
        raise ValueError(
            f"Adapter(s) {merged} are merged into the base weights; call unmerge_adapter() before "
            "changing their LoRACoE phase."
        )
    for layer in layers:
        for name in names:
            if name in layer.loracoe_A:
                layer.set_phase(name, phase)


@dataclass(frozen=True)
class LoraCoeParameterCount:
    """LoRACoE parameters per adapted module (all adapters of the module summed) and in total."""

    per_module: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.per_module.values())


def loracoe_parameter_count(model: nn.Module) -> LoraCoeParameterCount:
    """Per module r (d_in + d_out) + E r d_in (composition) or r (d_in + d_out) + E d_in (partition), counted from
    the tensors themselves. All of them are active for every token; the router is trainable only in "joint"."""
    per_module = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraCoeLayer):
            per_module[name] = sum(
                p.numel() for attr in LoraCoeLayer.adapter_layer_names for p in getattr(layer, attr).values()
            )
    return LoraCoeParameterCount(per_module)
