"""The PERFT authors' settings (github liuyilun2000/PERFT): their initialisation (``init_weights="perft"``),
their Mixtral PERFT-R's renormalised top-K gates (``norm_topk_prob``) and their parallel-adapter experts
(SiLU, scale 1), each against the equations computed independently, and saved / loaded with the adapter."""

import json
import math

import pytest
import torch
from peft import PeftModel, get_peft_model

from perft_peft import PerftConfig, PerftLayer

from .conftest import base_model
from .test_perft_equations import _adapter_tensors, _force_sparse, _randomise_routers, _reference_logits


def _layers(model):
    return [m for m in model.modules() if isinstance(m, PerftLayer)]


def test_perft_init_statistics():
    """A ~ N(0, 2/r) per element, B ~ 1e-6 N(0, 1) (commonsense/utils.py, lines 30-37); both trainable."""
    r, M = 8, 64
    model = get_peft_model(base_model("mixtral", hidden_size=256), PerftConfig(
        variant="D", num_experts=M, r=r, init_weights="perft"))
    A = torch.cat([layer.perft_A["default"].detach().flatten() for layer in _layers(model)])
    B = torch.cat([layer.perft_B["default"].detach().flatten() for layer in _layers(model)])
    assert A.numel() > 100_000 and B.numel() > 100_000
    assert abs(A.std().item() / math.sqrt(2 / r) - 1) < 0.01 and abs(A.mean().item()) < 0.01
    assert abs(B.std().item() / 1e-6 - 1) < 0.01 and abs(B.mean().item()) < 1e-8
    # Normal, not uniform: the kurtosis of a Gaussian is 3 (a uniform's is 1.8).
    assert abs(((A / A.std()) ** 4).mean().item() - 3) < 0.1
    # Not peft's Kaiming-uniform: |A| is unbounded by 1/sqrt(D).
    assert A.abs().max() > 1 / math.sqrt(256)
    assert all(p.requires_grad for layer in _layers(model) for p in (layer.perft_A["default"],
                                                                       layer.perft_B["default"]))


def test_default_init_is_identity_and_bounded():
    model = get_peft_model(base_model("mixtral"), PerftConfig(variant="S", r=4))
    for layer in _layers(model):
        assert torch.count_nonzero(layer.perft_B["default"]) == 0
        assert layer.perft_A["default"].abs().max() <= 1 / math.sqrt(layer.hidden_size)


@pytest.mark.parametrize("value", [1, 0, "kaiming", "gaussian", None])
def test_bad_init_weights_rejected(value):
    with pytest.raises(ValueError, match="init_weights"):
        PerftConfig(variant="S", init_weights=value)


@pytest.mark.parametrize("variant", ["E", "D", "S"])
def test_norm_topk_prob_only_for_r(variant):
    with pytest.raises(ValueError, match="norm_topk_prob"):
        PerftConfig(variant=variant, norm_topk_prob=True)
    with pytest.raises(ValueError, match="norm_topk_prob"):
        PerftConfig(variant="R", norm_topk_prob="yes")


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("expert_type", ["lora", "adapter"])
@pytest.mark.parametrize("family", ["mixtral", "olmoe"])
def test_renormalised_topk_equals_equations(family, expert_type, sparse, input_ids, tmp_path):
    """G~ = TopK(softmax(W~ h)) / sum of the K kept weights, with the authors' experts: for 'adapter', SiLU and
    scale 1 (lora_alpha = r), w2(silu(w1 x)); dense and grouped-GEMM paths; the config round-trips."""
    config = PerftConfig(variant="R", num_experts=4, top_k=2, r=4, lora_alpha=4, expert_type=expert_type,
                         adapter_act="silu", init_weights="perft", norm_topk_prob=True)
    assert config.scaling == 1.0
    model = get_peft_model(base_model(family), config)
    _randomise_routers(model)
    for layer in _layers(model):  # the official B (1e-6) would hide every difference below the tolerance
        torch.nn.init.normal_(layer.perft_B["default"], std=0.5)
    if sparse:
        _force_sparse(model)
    with torch.no_grad():
        logits = model(input_ids).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["norm_topk_prob"] is True and saved["init_weights"] == "perft"

    tensors = _adapter_tensors(tmp_path)
    expected = _reference_logits(family, input_ids, config, tensors)
    torch.testing.assert_close(logits, expected.to(logits.dtype), atol=2e-5, rtol=1e-4)
    # Eq. 7 (not renormalised) is a different model: the switch must matter.
    literal = PerftConfig(**{**config.to_dict(), "norm_topk_prob": False, "peft_type": None})
    unnormalised = _reference_logits(family, input_ids, literal, tensors)
    assert not torch.allclose(logits, unnormalised.to(logits.dtype), atol=1e-3)

    loaded = PeftModel.from_pretrained(base_model(family), tmp_path)
    assert loaded.peft_config["default"].norm_topk_prob is True
    assert loaded.peft_config["default"].init_weights == "perft"
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, logits, atol=1e-6, rtol=1e-5)
