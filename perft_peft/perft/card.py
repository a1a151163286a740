"""What a PERFT adapter's model card says the method adds to the model (``perft_peft.hub`` writes the card)."""

from __future__ import annotations

_VARIANTS = {
    "R": "{num_experts} PEFT experts with their own top-{top_k} router, in parallel with each MoE block",
    "E": "one PEFT expert inside each of the model's experts, reusing the model's router",
    "D": "{num_experts} always-on shared PEFT experts in parallel with each MoE block",
    "S": "one shared PEFT expert in parallel with each MoE block",
}


def card_description(config) -> tuple[str, str, str]:
    """The card's tag, the method's name (with its variant) and a one-line description of what it adds."""
    return "perft", f"PERFT-{config.variant}", _VARIANTS[config.variant].format(**config.to_dict())
