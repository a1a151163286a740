"""The LoRACoE paper's §2.2 analyses of rank-level importance (from :func:`rank_importance` results).

Figure 2: the variance of the element-wise importance along the rank dimension against along the input / output
dimension. Per factor, the importance is divided by its mean first (so modules of different scale share one axis);
then for A [r, d_in] the rank variance is the variance over the r rows of each column, averaged over the columns,
and the input variance the variance over each row's d_in entries, averaged over the rows (B [d_out, r] likewise,
with its output dimension). ``rank`` and ``io`` average A's and B's values.

Figure 3: Pearson correlations of per-rank importance, for one module: between tasks (each task's r per-rank
scores, as shares of the module's total) and between ranks (each rank's shares across the tasks). A constant
vector (e.g. a rank with no importance on any task) has no correlation: NaN.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .. import plotting
from .importance import RankImportance


@dataclass(frozen=True)
class DimensionVariance:
    """Mean variance of a module's normalised importance along the rank and along the input/output dimension."""

    rank: float
    io: float


def dimension_variance(result: RankImportance) -> dict[str, DimensionVariance]:
    """Figure 2's statistics for every module of ``result``."""
    out = {}
    for name in result.A:
        A, B = (_normalised(t) for t in (result.A[name], result.B[name]))
        rank = (A.var(dim=0, unbiased=False).mean() + B.var(dim=1, unbiased=False).mean()) / 2
        io = (A.var(dim=1, unbiased=False).mean() + B.var(dim=0, unbiased=False).mean()) / 2
        out[name] = DimensionVariance(float(rank), float(io))
    return out


def _normalised(scores: torch.Tensor) -> torch.Tensor:
    scores = scores.double()
    return scores / scores.mean().clamp_min(torch.finfo(torch.float64).tiny)


def by_module_type(variances: Mapping[str, DimensionVariance]) -> dict[str, DimensionVariance]:
    """Averages over the layers per module type (the name's last part: q_proj, up_proj, ...), as Figure 2 shows."""
    groups: dict[str, list[DimensionVariance]] = {}
    for name, value in variances.items():
        groups.setdefault(name.rsplit(".", 1)[-1], []).append(value)
    return {
        kind: DimensionVariance(sum(v.rank for v in values) / len(values), sum(v.io for v in values) / len(values))
        for kind, values in sorted(groups.items())
    }


def _shares(result: RankImportance, module: str) -> torch.Tensor:
    if module not in result.A:
        raise ValueError(f"No module {module!r} in the importance results; they have {sorted(result.A)[:5]}...")
    scores = result.per_rank[module].double()
    return scores / scores.sum().clamp_min(torch.finfo(torch.float64).tiny)


def _correlation(rows: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between the rows of ``rows`` [n, m]; NaN where a row is constant."""
    centred = rows - rows.mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1)
    norms = torch.where(norms > 1e-12 * rows.abs().amax(dim=1).clamp_min(1e-300), norms, torch.nan)
    return (centred @ centred.T) / (norms[:, None] * norms[None, :])


def task_correlation(results: Mapping[str, RankImportance], module: str) -> torch.Tensor:
    """[tasks, tasks]: correlation of ``module``'s per-rank importance shares between tasks (Figure 3, top)."""
    return _correlation(torch.stack([_shares(result, module) for result in results.values()]))


def rank_correlation(results: Mapping[str, RankImportance], module: str) -> torch.Tensor:
    """[r, r]: correlation between ranks of their importance shares across the tasks (Figure 3, bottom)."""
    if len(results) < 3:
        raise ValueError(f"Correlating ranks across tasks needs at least 3 tasks, got {len(results)}.")
    return _correlation(torch.stack([_shares(result, module) for result in results.values()]).T)


def plot_dimension_variance(result: RankImportance, path: str | os.PathLike, title: str | None = None) -> str:
    """Figure 2: bars of the rank and input/output variance per module type; returns the PNG's path."""
    figure, axes = plotting.figure(size=(6, 3.5), layout="constrained")
    groups = by_module_type(dimension_variance(result))
    positions = torch.arange(len(groups), dtype=torch.float64)
    axes.bar(positions - 0.2, [v.rank for v in groups.values()], width=0.4, label="rank_avg")
    axes.bar(positions + 0.2, [v.io for v in groups.values()], width=0.4, label="d_or_k_avg")
    axes.set_xticks(positions.tolist(), labels=list(groups))
    axes.set_ylabel("mean variance of importance / its mean")
    axes.set_title(title or "Variance of importance: along the rank vs the input/output dimension", fontsize=9)
    axes.legend()
    return plotting.save(figure, path)


def plot_correlations(
    results: Mapping[str, RankImportance], modules: list[str], path: str | os.PathLike, title: str | None = None
) -> str:
    """Figure 3: per module, the task x task (top) and rank x rank (bottom) correlation heatmaps."""
    figure, axes = plotting.figure(2, len(modules), size=(3 * len(modules) + 1, 6), layout="constrained", squeeze=False)
    tasks = list(results)
    for column, module in enumerate(modules):
        for row, (matrix, labels) in enumerate(
            [(task_correlation(results, module), tasks), (rank_correlation(results, module), None)]
        ):
            ax = axes[row, column]
            image = ax.imshow(matrix.numpy(), vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
            if labels is not None:
                ax.set_xticks(range(len(labels)), labels=labels, rotation=90, fontsize=6)
                ax.set_yticks(range(len(labels)), labels=labels, fontsize=6)
            else:
                ax.set_xlabel("rank")
                ax.set_ylabel("rank")
            ax.set_title(module if row == 0 else "", fontsize=7)
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="Pearson correlation")
    figure.suptitle(
        title or "Correlation of per-rank importance: across tasks (top), across ranks (bottom)", fontsize=9
    )
    return plotting.save(figure, path)
