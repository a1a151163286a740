"""Analyses from the papers: rank-level parameter importance of LoRA-like adapters (LoRACoE §2.2, Figures 2-4), and
PERFT's Figure 6, key memory and expert vectors of one MoE layer (``perft_peft.analysis.figure6``)."""

from .importance import RankImportance, lora_factors, plot_rank_importance, rank_importance
from .patterns import (
    DimensionVariance,
    by_module_type,
    dimension_variance,
    plot_correlations,
    plot_dimension_variance,
    rank_correlation,
    task_correlation,
)

__all__ = [
    "DimensionVariance",
    "RankImportance",
    "by_module_type",
    "dimension_variance",
    "lora_factors",
    "plot_correlations",
    "plot_dimension_variance",
    "plot_rank_importance",
    "rank_correlation",
    "rank_importance",
    "task_correlation",
]
