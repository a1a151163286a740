"""PerftModel: injects PerftLayer around every targeted MoE experts module (peft BaseTuner)."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .. import moe
from ..checks import check_adapter_name, check_layers_to_transform
from ..init import cast_adapter_dtype
from ..targets import matched_targets
from .config import PerftConfig
from .layer import PerftLayer


class PerftModel(BaseTuner):
    """PERFT (arXiv 2411.08212) on any transformers MoE model. Use through ``peft.get_peft_model``."""

    prefix: str = "perft_"
    tuner_layer_cls = PerftLayer
    target_module_mapping: dict[str, list[str]] = {}

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        # Validate everything against the model before peft touches a single module.
        check_adapter_name(adapter_name, self.prefix)
        self._resolve_targets(model, self.peft_config[adapter_name])
        super().inject_adapter(model, adapter_name, *args, **kwargs)

    def _resolve_targets(self, model: nn.Module, config: PerftConfig) -> None:
        """Fill target_modules when unset, check every target fits the config and the model; raise otherwise."""
        if config.target_modules is None:
            experts = moe.find_experts_modules(model)
            if not experts:
                raise ValueError(
                    f"No MoE experts module found in {type(model).__name__}. PERFT searched for "
                    f"{moe.SEARCHED_FOR}. Pass `target_modules` to name the modules explicitly."
                )
            config.target_modules = sorted({name.rsplit(".", 1)[-1] for name in experts})
        check_layers_to_transform(model, config.layers_to_transform)
        targets = list(matched_targets(model, config).items())
        model_config = getattr(model, "config", None)
        for name, module in targets:
            if not (moe.is_experts_module(module) or moe.find_experts_modules(module)):
                raise ValueError(
                    f"PERFT adds experts beside a MoE block's experts, but {name} "
                    f"({type(module).__name__}) is neither an MoE experts module nor a block holding "
                    f"one. target_modules must name experts modules (or their MoE blocks); searched "
                    f"for {moe.SEARCHED_FOR}."
                )
            D = moe.hidden_size(module, model_config)
            N = moe.num_experts(module)
            if config.variant == "E" and (N is None or not moe.receives_routing(module)):
                raise ValueError(
                    f"PERFT-E reuses the model's routing, but {name} ({type(module).__name__}) does "
                    "not receive routing (expected an experts module called as experts(hidden_states, "
                    "top_k_index, top_k_weights)). Use variant R, D or S, or target the experts."
                )
            if config.gate_weights == "base" and (N is None or not moe.receives_routing(module)):
                raise ValueError(
                    f"gate_weights='base' weights PERFT-R's experts by the model's routing, but {name} "
                    f"({type(module).__name__}) does not receive routing. Target the experts module."
                )
            model_top_k = moe.experts_per_token(model_config)
            if config.gate_weights == "base" and model_top_k is not None and config.top_k > model_top_k:
                raise ValueError(
                    f"gate_weights='base' gives the k-th chosen PEFT expert the model's k-th routing "
                    f"weight: top_k={config.top_k} exceeds the model's {model_top_k}."
                )
            if config.base_hidden_size is not None and config.base_hidden_size != D:
                raise ValueError(
                    f"This adapter was made for a model with hidden size {config.base_hidden_size}, "
                    f"but {name} has hidden size {D}: it belongs to another base model."
                )
            if config.base_num_experts is not None and N is not None and config.base_num_experts != N:
                raise ValueError(
                    f"This adapter was made for a model with {config.base_num_experts} experts per "
                    f"MoE block, but {name} has {N}: it belongs to another base model."
                )
        config.base_hidden_size = moe.hidden_size(targets[0][1], model_config)
        config.base_num_experts = moe.num_experts(targets[0][1])

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        cast_adapter_dtype(self, adapter_name, autocast_adapter_dtype)

    def _create_and_replace(
        self,
        peft_config: PerftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs,
    ) -> None:
        if isinstance(target, PerftLayer):
            target.update_layer(adapter_name, peft_config)
            return
        model_config = getattr(self.model, "config", None)
        new = PerftLayer(
            target,
            adapter_name,
            peft_config,
            hidden_size=moe.hidden_size(target, model_config),
            model_experts=moe.num_experts(target),
        )
        new.train(target.training)  # a fresh module is in training mode; follow the model's mode
        if adapter_name not in self.active_adapters:
            new.requires_grad_(False)
        self._replace_module(parent, target_name, new, target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        # peft's version copies `child.weight` onto the new module, which experts modules do not have; our layer
        # creates its tensors on the base layer's device already, so swapping the attribute is all there is to do.
        setattr(parent, child_name, new_module)

    def merge_and_unload(self, *args, **kwargs):
        raise TypeError(
            "merge_and_unload is not possible for PERFT: the PEFT experts run in parallel with non-linear MoE "
            "experts (and PERFT-R has its own router), so they cannot be folded into the base weights. The model "
            "is unchanged. Keep the adapter, or call `unload()` to get the base model back."
        )

    def merge_adapter(self, *args, **kwargs):
        self.merge_and_unload()

    def _check_merge_allowed(self):
        self.merge_and_unload()
