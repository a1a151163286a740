"""Tiny models built from transformers configs (no download), at any size: the one builder of the tests', the demo's
and the benchmarks' models, and ``tiny_tokenizer`` for their token ids."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

# Per family: the smallest config that keeps the family's MoE features (shared experts, sigmoid grouped routing,
# biases...). Every family gets 8 experts with top-2 routing unless it needs otherwise.
_COMMON = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
TINY_FAMILIES: dict[str, dict] = {
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2),
    "qwen2_moe": dict(
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    ),
    "qwen3_moe": dict(
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        head_dim=8,
    ),
    "deepseek_v3": dict(
        num_key_value_heads=4,
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        n_shared_experts=1,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=0,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
    ),
    "gpt_oss": dict(
        num_local_experts=8,
        num_experts_per_tok=2,
        head_dim=8,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
    "deepseek_v2": dict(
        num_key_value_heads=4,
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        n_shared_experts=1,
        first_k_dense_replace=0,
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
    ),
    "glm4_moe": dict(
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        n_shared_experts=1,
        first_k_dense_replace=0,
        n_group=1,
        topk_group=1,
        head_dim=8,
    ),
    "dots1": dict(
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        n_shared_experts=1,
        first_k_dense_replace=0,
        n_group=1,
        topk_group=1,
        head_dim=8,
    ),
    "ernie4_5_moe": dict(moe_num_experts=8, moe_k=2, moe_intermediate_size=32, moe_layer_start_index=0, head_dim=8),
    "hunyuan_v1_moe": dict(num_experts=8, moe_topk=2, head_dim=8),
    "phimoe": dict(num_local_experts=8, num_experts_per_tok=2),
    "minimax": dict(
        num_local_experts=8, num_experts_per_tok=2, head_dim=8, layer_types=["full_attention", "full_attention"]
    ),
    "granitemoe": dict(num_local_experts=8, num_experts_per_tok=2),
    "jamba": dict(
        num_experts=8,
        num_experts_per_tok=2,
        expert_layer_period=1,
        expert_layer_offset=0,
        attn_layer_period=1,
        attn_layer_offset=0,
        use_mamba_kernels=False,
    ),
    "flex_olmo": dict(num_experts=8, num_experts_per_tok=2),
}


# Dense families: LoRACoE adapts any linear layer, so its tests and the speed benchmark also need a dense model.
TINY_DENSE_FAMILIES: dict[str, dict] = {"llama": {}}


def tiny_config(family: str, **overrides):
    """A transformers config of ``family`` (``TINY_FAMILIES`` or ``TINY_DENSE_FAMILIES``) small enough for CPU unit
    tests; ``overrides`` resize it. Settings that follow others are kept consistent unless overridden too: the
    experts' ``moe_intermediate_size`` is half ``intermediate_size``, ``layer_types`` has one entry per layer."""
    defaults = {**TINY_FAMILIES, **TINY_DENSE_FAMILIES}.get(family)
    if defaults is None:
        raise ValueError(f"Unknown family {family!r}; known: {', '.join([*TINY_FAMILIES, *TINY_DENSE_FAMILIES])}.")
    kwargs = {**_COMMON, **defaults, **overrides}
    resized = "intermediate_size" in overrides and "moe_intermediate_size" not in overrides
    if "moe_intermediate_size" in defaults and resized:
        kwargs["moe_intermediate_size"] = overrides["intermediate_size"] // 2
    if "layer_types" in defaults and "layer_types" not in overrides:
        layers = kwargs["num_hidden_layers"]
        kwargs["layer_types"] = (defaults["layer_types"] * layers)[:layers]
    return AutoConfig.for_model(family, **kwargs)


def tiny_moe(family: str = "mixtral", seed: int = 0, dtype=torch.float32, **overrides):
    """A randomly initialised causal LM of ``tiny_config(family, **overrides)`` in ``dtype`` and eval mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), dtype=dtype)
    if family == "deepseek_v3":
        # Random (not zero) correction bias so grouped routing is exercised for real.
        for module in model.modules():
            if hasattr(module, "e_score_correction_bias"):
                module.e_score_correction_bias.normal_(0, 0.1)
    return model.eval()


def tiny_tokenizer(vocab_size: int = 128):
    """A word-level tokenizer over the words ``t3 … t{vocab_size-1}`` (``t{i}`` has id i; ids 0-2 are <pad>, <s>,
    </s>; no BOS added): any token id of a ``tiny_moe`` model decodes to a word."""
    from .data import tiny_word_tokenizer

    words = [f"t{i}" for i in range(3, vocab_size)]
    return tiny_word_tokenizer(vocabulary=["<pad>", "<s>", "</s>", *words], add_bos=False)
