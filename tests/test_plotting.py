"""Plots draw through perft_peft.plotting: headless, and without touching matplotlib's global state (a user's
backend choice, pyplot's open figures)."""

import matplotlib
import matplotlib.pyplot as plt

from perft_peft.trainer.routing import _heatmap


def test_a_plot_leaves_the_backend_and_pyplot_alone(tmp_path):
    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # the user's choice, which the old matplotlib.use("Agg") calls overrode
    try:
        _heatmap([("layers.0", [0.75, 0.25]), ("layers.1", [0.5, 0.5])], "expert", "load", str(tmp_path / "h.png"))
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == []
    finally:
        matplotlib.use(backend)
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_a_long_heatmap_title_stays_inside_a_narrow_figure(tmp_path, monkeypatch):
    """Four experts make a 3.4-inch figure: the routing heatmap's title is wrapped, not cut at the edges."""
    from perft_peft import plotting

    saved = []
    monkeypatch.setattr(plotting, "save", lambda fig, path, dpi=120: saved.append(fig))
    title = "share of tokens routed to each PERFT expert, adapter 'default'"
    _heatmap([("layers.0", [0.1, 0.5, 0.2, 0.2])], "expert", title, str(tmp_path / "h.png"))
    fig = saved[0]
    fig.canvas.draw()
    box = fig.axes[0].title.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width
