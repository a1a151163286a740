"""PERFT with peft's registry and helpers. The peft contract (save/load, Auto classes, multi-adapter, disable,
unload, merge, adapter names, bad input) is test_contract.py's matrix."""

import importlib

import torch
from peft import PeftType, get_peft_model

import perft_peft
from perft_peft import PerftConfig, PerftLayer

from .conftest import base_model


def _trained_like(model):
    """Give every adapter tensor random values, as after training (B is zero at initialisation)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "perft_" in name:
                p.normal_(std=0.3)
    return model


def test_inference_keeps_no_router_records(input_ids):
    """Router records feed the auxiliary losses in training only: generating in eval() keeps none."""
    model = _trained_like(get_peft_model(base_model(), PerftConfig(variant="R", r=4)))
    model.generate(input_ids=input_ids, max_new_tokens=3, do_sample=False)
    model(input_ids)
    assert not any(layer.router_records for layer in model.modules() if isinstance(layer, PerftLayer))


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
        "perft_",
        "loracoe_",
    )
    assert get_peft_model(base_model(), perft_peft.PerftConfig(variant="S")) is not None


def test_print_trainable_parameters(capsys):
    get_peft_model(base_model(), PerftConfig(variant="S", r=4)).print_trainable_parameters()
    assert "trainable params: 512" in capsys.readouterr().out
