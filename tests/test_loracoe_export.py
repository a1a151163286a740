"""save_without_router: a trained LoRACoE saved as a plain peft LoRA is exactly the LoRACoE with c = 1."""

import json

import pytest
import torch
from peft import PeftModel, get_peft_model

from perft_peft import LoraCoeConfig, set_loracoe_phase
from perft_peft.loracoe import save_without_router
from perft_peft.loracoe.warm_start import read_lora

from .test_loracoe import TARGETS, layers, logits, randomise_routers, tiny_llama


@pytest.fixture
def ids():
    return torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(1))


def test_saved_lora_equals_the_loracoe_without_router(ids, tmp_path):
    torch.manual_seed(0)
    coe = get_peft_model(
        tiny_llama(), LoraCoeConfig(r=4, lora_alpha=8, num_experts=2, target_modules=TARGETS, init_weights=False)
    )
    randomise_routers(coe)
    joint = logits(coe, ids)
    save_without_router(coe, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8)
    lora = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    set_loracoe_phase(coe, "warmup")
    torch.testing.assert_close(logits(lora, ids), logits(coe, ids), atol=0, rtol=0)
    assert not torch.allclose(logits(lora, ids), joint, atol=1e-3)
    assert len(read_lora(str(tmp_path)).tensors) == len(layers(coe))  # also a valid init_from_lora


def test_refuses_other_adapters(tmp_path):
    from peft import LoraConfig

    lora = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="not LoRACoE"):
        save_without_router(lora, tmp_path)
