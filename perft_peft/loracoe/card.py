"""What a LoRACoE adapter's model card says the method adds to the model (``perft_peft.hub`` writes the card)."""

from __future__ import annotations

_CONSTRUCTIONS = {
    "composition": (
        "LoRACoE",
        "{num_experts} composite experts re-weight the rank-1 parts of one rank-{r} LoRA per token",
    ),
    "partition": (
        "LoRAMoE (partition baseline)",
        "a router weights {num_experts} groups of the ranks of one rank-{r} LoRA per token",
    ),
}


def card_description(config) -> tuple[str, str, str]:
    """The card's tag, the method's name (by construction) and a one-line description of what it adds."""
    name, description = _CONSTRUCTIONS[config.construction]
    return "loracoe", name, description.format(**config.to_dict())
