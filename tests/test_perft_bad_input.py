"""Bad input: each gives a clear error and leaves the model as it was. Config validation, adapter names and
unmatched targets run for every variant in test_contract.py's matrix."""

import pytest
from peft import PeftModel, get_peft_model

from perft_peft import PerftConfig, PerftLayer
from perft_peft.testing import tiny_moe

from .conftest import base_model


def test_variant_defaults_and_case():
    assert (PerftConfig(variant="r").variant, PerftConfig().num_experts, PerftConfig().top_k) == ("R", 4, 2)
    assert PerftConfig(variant="D").num_experts == 4 and PerftConfig(variant="D").top_k is None
    assert PerftConfig(variant="R", num_experts=1).top_k == 1


def _untouched(model):
    return not any(isinstance(m, PerftLayer) for m in model.modules()) and not hasattr(model, "peft_config")


def test_model_without_moe_experts():
    model = tiny_moe("llama")
    with pytest.raises(
        ValueError, match="No MoE experts module found in LlamaForCausalLM. PERFT searched for an MoE experts module"
    ):
        get_peft_model(model, PerftConfig(variant="R"))
    assert _untouched(model)


def test_embedded_on_module_without_routing():
    model = base_model()
    with pytest.raises(
        ValueError,
        match="PERFT-E reuses the model's routing, but model.layers.0.mlp "
        r"\(MixtralSparseMoeBlock\) does not receive routing",
    ):
        get_peft_model(model, PerftConfig(variant="E", target_modules=["mlp"]))
    assert _untouched(model)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(hidden_size=48),
            "made for a model with hidden size 32, but model.layers.0.mlp.experts has hidden size 48",
        ),
        (
            dict(num_local_experts=4),
            "made for a model with 8 experts per MoE block, but model.layers.0.mlp.experts has 4",
        ),
    ],
)
def test_loading_onto_another_base(overrides, message, tmp_path):
    get_peft_model(base_model(), PerftConfig(variant="R", r=4)).save_pretrained(tmp_path)
    other = base_model(**overrides)
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(other, tmp_path)
    assert _untouched(other)


def test_layers_to_transform(input_ids):
    model = get_peft_model(base_model(), PerftConfig(variant="S", layers_to_transform=[1]))
    adapted = [n for n, m in model.named_modules() if isinstance(m, PerftLayer)]
    assert adapted == ["base_model.model.model.layers.1.mlp.experts"]
