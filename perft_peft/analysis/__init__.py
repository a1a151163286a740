"""Analyses from the papers: rank-level parameter importance of LoRA-like adapters (LoRACoE §2.2, Figures 3-4), and
PERFT's Figure 6, key memory and expert vectors of one MoE layer (``perft_peft.analysis.figure6``)."""

from .importance import RankImportance, lora_factors, plot_rank_importance, rank_importance

__all__ = ["RankImportance", "lora_factors", "plot_rank_importance", "rank_importance"]
