"""The benchmarks' model shapes: ``perft_peft.testing.tiny_moe`` at the sizes and ratios of the models the papers
use, in training mode (the speed benchmark times training steps; the paper sweep pre-trains its base from one)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perft_peft.testing import tiny_moe


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int = 512
    num_hidden_layers: int = 4
    num_experts: int = 8
    top_k: int = 2
    batch_size: int = 4
    seq_len: int = 256
    vocab_size: int = 4096

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len


def mixtral_shaped(
    shape: ModelShape,
    num_hidden_layers: int | None = None,
    dtype=torch.float32,
    seed: int = 0,
    head_dim: int = 64,
    kv_groups: int = 4,
):
    """A randomly initialised Mixtral-shaped causal LM: Mixtral's ratios (FFN 3.5x hidden, 4 query heads per KV
    head, head dim 64; the last two can be changed) at ``shape``'s size."""
    heads = max(1, shape.hidden_size // head_dim)
    return tiny_moe(
        "mixtral",
        seed,
        dtype,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.hidden_size * 7 // 2,
        num_hidden_layers=num_hidden_layers or shape.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // kv_groups),
        num_local_experts=shape.num_experts,
        num_experts_per_tok=shape.top_k,
        vocab_size=shape.vocab_size,
        max_position_embeddings=max(shape.seq_len, 128),
    ).train()


def llama_shaped(shape: ModelShape, dtype=torch.float32, seed: int = 0):
    """A randomly initialised dense Llama-shaped causal LM (FFN 11008/4096 x hidden, head dim 64, no GQA)."""
    heads = max(1, shape.hidden_size // 64)
    return tiny_moe(
        "llama",
        seed,
        dtype,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.hidden_size * 11008 // 4096,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=shape.vocab_size,
        max_position_embeddings=max(shape.seq_len, 128),
    ).train()


def olmoe_layer_model(
    hidden_size: int = 2048,
    num_experts: int = 64,
    top_k: int = 8,
    intermediate_size: int = 1024,
    dtype=torch.float32,
    seed: int = 0,
):
    """A one-layer OLMoE-shaped model; the benchmark uses its MoE block."""
    return tiny_moe(
        "olmoe",
        seed,
        dtype,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=1,
        num_attention_heads=max(1, hidden_size // 128),
        num_key_value_heads=max(1, hidden_size // 128),
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        vocab_size=256,
    ).train()
