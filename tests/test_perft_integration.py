"""PERFT through peft's and transformers' own entry points: save/load, Auto classes, multi-adapter, unload."""

import importlib
import json

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftConfig, PeftModel, PeftType, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import perft_peft
from perft_peft import PerftConfig, PerftLayer

from .conftest import FAMILIES, VARIANT_KWARGS, base_model


def _trained_like(model):
    """Give every adapter tensor random values, as after training (B is zero at initialisation)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "perft_" in name:
                p.normal_(std=0.3)
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


VARIANTS = ["R", "E", "D", "S"]


# LoRA experts on every family; parallel-adapter experts (a non-identity activation) on one.
@pytest.mark.parametrize("family, variant, expert_type", [(f, v, "lora") for f in FAMILIES for v in VARIANTS]
                         + [("mixtral", v, "adapter") for v in VARIANTS])
def test_save_load_roundtrip(family, variant, expert_type, input_ids, tmp_path):
    model = _trained_like(get_peft_model(base_model(family), PerftConfig(
        variant=variant, r=4, expert_type=expert_type, adapter_act="gelu", **VARIANT_KWARGS[variant])))
    expected = _logits(model, input_ids)
    model.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PERFT" and saved["variant"] == variant
    assert (saved["expert_type"], saved["adapter_act"]) == (expert_type, "gelu")
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    D, N, r = 32, 8, 4
    M = {"R": 4, "E": N, "D": 3, "S": 1}[variant]
    for key, value in tensors.items():
        suffix = key.rsplit(".", 1)[-1]
        assert key.split(".")[-2] == "experts", key
        assert tuple(value.shape) == {"perft_A": (M, r, D), "perft_B": (M, D, r), "perft_router": (M, D)}[suffix]
    assert sum(k.endswith("perft_router") for k in tensors) == (2 if variant == "R" else 0)

    for kwargs in ({}, {"low_cpu_mem_usage": True}, {"is_trainable": True}):
        loaded = PeftModel.from_pretrained(base_model(family), tmp_path, **kwargs)
        torch.testing.assert_close(_logits(loaded, input_ids), expected, atol=0, rtol=0)
        config = loaded.peft_config["default"]
        assert (config.variant, config.expert_type, config.adapter_act) == (variant, expert_type, "gelu")
        trainable = [p.requires_grad for n, p in loaded.named_parameters() if "perft_" in n]
        assert all(trainable) if kwargs.get("is_trainable") else not any(trainable)


def test_auto_classes_and_transformers_load_adapter(input_ids, tmp_path):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    base_model().save_pretrained(base_dir)
    model = _trained_like(get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                                         PerftConfig(variant="R", r=4)))
    expected = _logits(model, input_ids)
    model.save_pretrained(adapter_dir)

    config = PeftConfig.from_pretrained(adapter_dir)
    assert isinstance(config, PerftConfig) and config.base_model_name_or_path == str(base_dir)
    assert (config.base_hidden_size, config.base_num_experts) == (32, 8)
    auto = AutoPeftModelForCausalLM.from_pretrained(adapter_dir)
    torch.testing.assert_close(_logits(auto, input_ids), expected, atol=0, rtol=0)

    plain = AutoModelForCausalLM.from_pretrained(base_dir)
    plain.load_adapter(str(adapter_dir), adapter_name="perft")
    torch.testing.assert_close(_logits(plain, input_ids), expected, atol=0, rtol=0)


def test_multiple_adapters(input_ids, tmp_path):
    model = _trained_like(get_peft_model(base_model(), PerftConfig(variant="R", r=4)))
    only_first = _logits(model, input_ids)
    model.add_adapter("second", PerftConfig(variant="S", r=2))
    _trained_like(model)  # also gives "default" new values
    first = _logits(model, input_ids)
    model.set_adapter("second")
    second = _logits(model, input_ids)
    assert not torch.allclose(first, second)
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".default" in n)
    assert all(p.requires_grad for n, p in model.named_parameters() if ".second" in n)

    model.save_pretrained(tmp_path)  # every adapter, each in its own folder
    reloaded = PeftModel.from_pretrained(base_model(), tmp_path)
    reloaded.load_adapter(tmp_path / "second", adapter_name="second")
    torch.testing.assert_close(_logits(reloaded, input_ids), first)
    reloaded.set_adapter("second")
    torch.testing.assert_close(_logits(reloaded, input_ids), second)

    model.delete_adapter("second")
    assert "second" not in model.peft_config
    assert all("second" not in n for n, _ in model.named_parameters())
    after_delete = _logits(model, input_ids)
    assert not torch.allclose(after_delete, only_first)  # "default" kept its new (post-_trained_like) values
    torch.testing.assert_close(after_delete, first, atol=0, rtol=0)  # "default" is active again, alone
    assert model.active_adapter == "default"


def test_disable_unload_generate(input_ids):
    base = base_model()
    base_logits = _logits(base, input_ids)
    base_tokens = base.generate(input_ids, max_new_tokens=5, do_sample=False)
    model = get_peft_model(base, PerftConfig(variant="E", r=4))
    assert torch.equal(model.generate(input_ids=input_ids, max_new_tokens=5, do_sample=False), base_tokens)
    _trained_like(model)
    assert not torch.allclose(_logits(model, input_ids), base_logits)
    with model.disable_adapter():
        torch.testing.assert_close(_logits(model, input_ids), base_logits, atol=0, rtol=0)
    tokens = model.generate(input_ids=input_ids, max_new_tokens=5, do_sample=False)
    assert tokens.shape == (2, 12)
    by_hand = input_ids  # greedy decoding with the adapter's full forward, no cache
    for _ in range(5):
        by_hand = torch.cat([by_hand, _logits(model, by_hand)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(tokens, by_hand)
    assert not torch.equal(tokens, base_tokens), "the trained adapter must change what is generated"
    assert not any(layer.router_records for layer in model.modules() if isinstance(layer, PerftLayer))

    unloaded = model.unload()
    assert not any(isinstance(m, PerftLayer) for m in unloaded.modules())
    assert type(unloaded.model.layers[0].mlp.experts).__name__ == "MixtralExperts"
    torch.testing.assert_close(_logits(unloaded, input_ids), base_logits, atol=0, rtol=0)


def test_merge_and_unload_refuses_and_keeps_model(input_ids):
    model = _trained_like(get_peft_model(base_model(), PerftConfig(variant="D", r=4)))
    before = _logits(model, input_ids)
    with pytest.raises(TypeError, match="cannot be folded"):
        model.merge_and_unload()
    with pytest.raises(TypeError):
        model.merge_adapter()
    assert sum(isinstance(m, PerftLayer) for m in model.modules()) == 2
    torch.testing.assert_close(_logits(model, input_ids), before, atol=0, rtol=0)


def test_reimport_is_idempotent():
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    importlib.reload(perft_peft)
    importlib.reload(perft_peft)
    assert PerftConfig.__name__ in dir(perft_peft)
    members = list(PeftType)
    assert members.count(PeftType.PERFT) == 1 and members.count(PeftType.LORACOE) == 1
    assert [m.value for m in members].count("PERFT") == 1 and [m.value for m in members].count("LORACOE") == 1
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.PERFT] is perft_peft.PerftModel
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.LORACOE] is perft_peft.LoraCoeModel
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.PERFT] is perft_peft.PerftConfig
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.LORACOE] is perft_peft.LoraCoeConfig
    assert (PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.PERFT], PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.LORACOE]) == (
        "perft_", "loracoe_")
    assert get_peft_model(base_model(), perft_peft.PerftConfig(variant="S")) is not None


def test_print_trainable_parameters(capsys):
    get_peft_model(base_model(), PerftConfig(variant="S", r=4)).print_trainable_parameters()
    assert "trainable params: 512" in capsys.readouterr().out
