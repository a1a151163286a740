"""PERFT Figure 6 (perft_peft.analysis.figure6): which vectors each panel holds, read back from the model and the
saved adapters, and the projection (standardise, PCA by SVD, fitted on the FFN experts' key vectors only) against
an independent eigendecomposition."""

import json

import pytest
import torch
from peft import get_peft_model

from perft_peft import PerftConfig, PerftLayer
from perft_peft.analysis import figure6 as f6

from .conftest import base_model

LAYER = 1


def _independent_pca(x, k):
    """Standardise with the population std, eigendecompose the covariance: (scores [V, k], variance ratios)."""
    x = x.double()
    z = (x - x.mean(0)) / x.std(0, correction=0)
    values, vectors = torch.linalg.eigh(z.T @ z / len(z))
    order = values.argsort(descending=True)
    return z @ vectors[:, order[:k]], values[order] / values.sum()


def test_projection_is_standardised_pca():
    g = torch.Generator().manual_seed(0)
    # Correlated features on very different scales: standardisation matters, two directions dominate.
    latent = torch.randn(400, 2, generator=g)
    x = latent @ torch.randn(2, 12, generator=g) + 0.3 * torch.randn(400, 12, generator=g)
    x = x * torch.logspace(-2, 2, 12)
    projection = f6.fit_projection(x, use_umap=False)
    expected, ratios = _independent_pca(x, 2)
    coords = projection(x).double()
    for c in range(2):  # each component is defined up to its sign
        sign = torch.sign((coords[:, c] * expected[:, c]).sum())
        torch.testing.assert_close(coords[:, c], sign * expected[:, c], atol=1e-4, rtol=1e-4)
    k = int((ratios.cumsum(0) < f6.EXPLAINED_VARIANCE).sum()) + 1
    assert projection.components.shape[0] == max(2, k)
    torch.testing.assert_close(projection.explained_variance_ratio, ratios[: projection.components.shape[0]])
    # Orthonormal components; fitted on x only: other vectors are mapped by the same affine map.
    torch.testing.assert_close(
        projection.components @ projection.components.T,
        torch.eye(projection.components.shape[0], dtype=torch.float64),
        atol=1e-10,
        rtol=0,
    )
    y = torch.randn(5, 12, generator=g)
    torch.testing.assert_close(
        projection(y).double(),
        ((y.double() - x.double().mean(0)) / x.double().std(0, correction=0)) @ projection.components[:2].T,
        atol=1e-4,
        rtol=1e-4,
    )


def test_base_panel_reads_key_memory_and_expert_vectors():
    """Key memory vectors are the rows k with up = x @ k (the experts' own forward), expert vectors the router's."""
    model = base_model("olmoe")
    panel = f6.base_panel(model, LAYER)
    block = model.model.layers[LAYER].mlp
    N, D = block.gate.weight.shape
    x = torch.randn(3, D)
    keys = panel.vectors[panel.kind == f6.KEY]
    for e in range(N):
        _, up = torch.nn.functional.linear(x, block.experts.gate_up_proj[e]).chunk(2, dim=-1)
        torch.testing.assert_close(x @ keys[panel.expert[panel.kind == f6.KEY] == e].T, up.detach())
    torch.testing.assert_close(panel.vectors[panel.kind == f6.ROUTER], block.gate.weight.detach())
    assert panel.expert[panel.kind == f6.ROUTER].tolist() == list(range(N))


def _save(tmp_path, variant, **kwargs):
    model = get_peft_model(base_model("olmoe"), PerftConfig(variant=variant, r=4, init_weights="perft", **kwargs))
    path = tmp_path / variant
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize(
    "variant, kwargs, routers",
    [("S", {}, 0), ("D", dict(num_experts=3), 0), ("R", dict(num_experts=4, top_k=2), 4), ("E", {}, 8)],
)
def test_adapter_panels_from_saved_tensors(tmp_path, variant, kwargs, routers):
    model, path = _save(tmp_path, variant, **kwargs)
    tensors, config = f6.load_adapter(path)
    base = base_model("olmoe")
    router = base.model.layers[LAYER].mlp.gate.weight
    panel = f6.adapter_panel(tensors, config, LAYER, base_router=router)
    layer = next(m for n, m in model.named_modules() if isinstance(m, PerftLayer) and f"layers.{LAYER}." in n)
    A = layer.perft_A["default"].detach()
    M, r, _ = A.shape
    torch.testing.assert_close(panel.vectors[panel.kind == f6.KEY], A.reshape(M * r, -1))
    assert panel.expert[panel.kind == f6.KEY].tolist() == [j for j in range(M) for _ in range(r)]
    assert int((panel.kind == f6.ROUTER).sum()) == routers
    if variant == "R":
        torch.testing.assert_close(panel.vectors[panel.kind == f6.ROUTER], layer.perft_router["default"].detach())
    if variant == "E":
        torch.testing.assert_close(panel.vectors[panel.kind == f6.ROUTER], router.detach())
        with pytest.raises(ValueError, match="base router"):
            f6.adapter_panel(tensors, config, LAYER)


def test_one_projection_for_every_panel(tmp_path):
    """A PEFT key vector equal to an FFN key vector lands on the same point: all panels share the base's fit, and
    the fit ignores the adapters' vectors."""
    model, path = _save(tmp_path, "D", num_experts=2)
    base = base_model("olmoe")
    up = f6.up_projection(base.model.layers[LAYER].mlp.experts).detach()
    layer = next(m for n, m in model.named_modules() if isinstance(m, PerftLayer) and f"layers.{LAYER}." in n)
    with torch.no_grad():
        layer.perft_A["default"][1, 2] = up[5, 7]
        layer.perft_A["default"][0, 0] = 1e3  # far away: would dominate a fit that included it
    model.save_pretrained(path)
    _, projection, coords = f6.figure6(base, {"D": path}, LAYER, tmp_path / "fig.png", use_umap=False)
    base_panel = f6.base_panel(base, LAYER)
    keys = base_panel.kind == f6.KEY
    ffn_point = coords[0][keys][5 * up.shape[1] + 7]
    torch.testing.assert_close(coords[1][1 * 4 + 2], ffn_point)
    refit = f6.fit_projection(base_panel.key_vectors, use_umap=False)
    torch.testing.assert_close(projection.components, refit.components)
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_command_draws_saved_adapters(tmp_path, capsys):
    base = base_model("olmoe")
    base.save_pretrained(tmp_path / "base")
    paths = [_save(tmp_path, v, **kw)[1] for v, kw in (("S", {}), ("R", dict(num_experts=4, top_k=1)))]
    for p in paths:  # record the saved base, as the recipes do
        config = json.loads((p / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = str(tmp_path / "base")
        (p / "adapter_config.json").write_text(json.dumps(config))
    out = tmp_path / "figure6.png"
    f6.main(
        [
            "--adapter",
            str(paths[0]),
            f"{paths[1]}=PERFT-R",
            "--layer",
            str(LAYER),
            "--output",
            str(out),
            "--projection",
            "pca",
        ]
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PCA" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        f6.main(["--adapter", str(tmp_path / "nothing"), "--layer", "1", "--output", str(out)])


def test_bad_input():
    model = base_model("olmoe")
    with pytest.raises(ValueError, match="Layer 7 has no MoE experts module; MoE layers: \\[0, 1\\]"):
        f6.base_panel(model, 7)
    with pytest.raises(ValueError, match="draws PERFT adapters"):
        f6.adapter_panel({}, {"peft_type": "LORA"}, LAYER)
    with pytest.raises(ValueError, match="no PERFT experts in layer 3"):
        f6.adapter_panel(
            {"base_model.model.model.layers.1.mlp.experts.perft_A": torch.zeros(1, 2, 3)},
            {"peft_type": "PERFT", "variant": "S"},
            3,
        )


def test_umap_after_pca_when_installed():
    umap = pytest.importorskip("umap")
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    projection = f6.fit_projection(x, use_umap=True)
    assert isinstance(projection.umap, umap.UMAP)
    expected = projection.umap.transform(projection.pca(x[:5]).numpy())
    torch.testing.assert_close(projection(x[:5]), torch.as_tensor(expected, dtype=torch.float32))


class _FakeUMAP:
    """Stands in for umap.UMAP (umap-learn is an optional extra, not installed by `make test`): records what it is
    given, so the PCA -> UMAP wiring runs whether or not umap-learn is present."""

    def __init__(self, **settings):
        self.settings = settings

    def fit(self, x):
        self.fitted_on = x
        return self

    def transform(self, x):
        return x[:, ::-1][:, :2].copy()  # any fixed map to 2-D that is not PCA's first two columns


def test_umap_wiring_without_umap_learn(monkeypatch, tmp_path, capsys):
    import sys
    import types

    x = torch.randn(60, 8, generator=torch.Generator().manual_seed(0))
    monkeypatch.setitem(sys.modules, "umap", None)  # not installed: auto = PCA alone, --projection umap refused
    assert not f6.umap_available() and f6.fit_projection(x).umap is None
    adapter = _save(tmp_path, "S")[1]
    with pytest.raises(SystemExit):
        f6.main(
            ["--adapter", str(adapter), "--layer", "1", "--output", str(tmp_path / "f.png"), "--projection", "umap"]
        )
    assert "needs umap-learn" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=_FakeUMAP))
    projection = f6.fit_projection(x)  # auto: UMAP when importable
    assert isinstance(projection.umap, _FakeUMAP) and projection.umap.settings == f6.UMAP_SETTINGS
    pca = projection.pca(x)
    assert pca.shape[1] == projection.components.shape[0]
    torch.testing.assert_close(torch.as_tensor(projection.umap.fitted_on), pca)  # fitted on the PCA scores
    torch.testing.assert_close(projection(x[:5]), pca[:5].flip(1)[:, :2].float())
    assert f6.fit_projection(x, use_umap=False).umap is None
