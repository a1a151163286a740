"""The one tiny-model builder (perft_peft.testing) at any size of any family, and the tokenizer of its ids."""

import pytest
import torch

from perft_peft.testing import tiny_config, tiny_moe, tiny_tokenizer


def test_resizing_keeps_the_settings_that_follow_it_consistent():
    assert tiny_config("qwen2_moe").moe_intermediate_size == 32
    assert tiny_config("qwen2_moe", intermediate_size=128).moe_intermediate_size == 64  # the experts grow with it
    assert tiny_config("qwen2_moe", intermediate_size=128, moe_intermediate_size=40).moe_intermediate_size == 40
    model = tiny_moe("gpt_oss", num_hidden_layers=3)  # one layer type per layer
    assert model.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert len(model.model.layers) == 3


def test_dense_family_dtype_and_unknown_family():
    llama = tiny_moe("llama", dtype=torch.bfloat16, hidden_size=64)
    assert type(llama).__name__ == "LlamaForCausalLM" and llama.dtype == torch.bfloat16 and not llama.training
    assert llama.config.hidden_size == 64
    with pytest.raises(ValueError, match="Unknown family 'gpt2'; known: mixtral, .*llama"):
        tiny_config("gpt2")


def test_tiny_tokenizer_decodes_every_id_of_a_tiny_model():
    tokenizer = tiny_tokenizer()
    assert len(tokenizer) == tiny_config("mixtral").vocab_size == 128
    assert tokenizer.decode(list(range(3, 128))).split() == [f"t{i}" for i in range(3, 128)]
    assert tokenizer("t5 t7")["input_ids"] == [5, 7]  # no BOS added
    with pytest.raises(Exception, match="UNK"):  # an unknown word is an error, not silently <pad>
        tokenizer("t5 hello")
