"""Headless matplotlib figures, the one way the package and its benchmarks draw: a ``Figure`` on its own Agg canvas,
not pyplot, so plotting needs no display, switches no global backend and leaves no figure open to close."""

from __future__ import annotations

import os


def figure(rows: int = 1, columns: int = 1, *, size: tuple[float, float], layout: str | None = None, **subplots):
    """(figure, axes): a ``size``-inch figure with ``layout`` ("tight", "constrained" or None) and its grid of
    axes as ``Figure.subplots`` returns it (one Axes for 1 x 1 unless ``squeeze=False``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout=layout)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, columns, **subplots)


def colormap(name: str):
    """A registered matplotlib colormap ("viridis", "tab10", ...), without pyplot."""
    import matplotlib

    return matplotlib.colormaps[name]


def save(fig, path: str | os.PathLike, dpi: int = 120) -> str:
    """Write ``fig`` as a PNG to ``path``; returns the path."""
    fig.savefig(os.fspath(path), format="png", dpi=dpi)
    return os.fspath(path)
