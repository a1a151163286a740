"""PERFT paper Figure 6 (appendix B.3): key memory vectors and expert vectors of one MoE layer, projected in 2-D.

A dense FFN expert projects a token onto the rows of its up-projection, its *key memory vectors*; a router projects
it onto one *expert vector* per expert (paper §3.1.1, Figure 3). A PEFT expert's key memory vectors are the rows of
its ``A``. The figure shows, for one layer, the base model (FFN experts' key vectors and the router's expert
vectors) beside one panel per adapter (its PEFT experts' key vectors; PERFT-R's router rows; for PERFT-E the base
router's rows, which it routes with). Every panel uses one projection fitted on the FFN experts' key vectors only,
as the authors' ``vector-visualize.py`` does (github liuyilun2000/PERFT, lines 357-376): per-feature
standardisation, PCA keeping the components that explain 50% of the variance, then UMAP (n_neighbors 20,
min_dist 0.5, random_state 42) when ``umap-learn`` is installed (``pip install perft-peft[umap]``); without it,
the first two principal components. PCA is an SVD here (no scikit-learn needed).

    python -m perft_peft.analysis.figure6 --adapter out/olmoe-s=S out/olmoe-d=D out/olmoe-r=R out/olmoe-e=E \\
        --layer 8 --output figure6.png
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import moe, plotting

KEY, ROUTER = 0, 1  # vector kinds: key memory vectors (dots) and expert vectors of a router (stars)
EXPLAINED_VARIANCE = 0.5
UMAP_SETTINGS = dict(n_neighbors=20, min_dist=0.5, n_components=2, random_state=42)


@dataclass
class Panel:
    """One subplot: vectors [V, D] (float32), the expert each belongs to [V] and its kind [V] (KEY or ROUTER)."""

    title: str
    vectors: torch.Tensor
    expert: torch.Tensor
    kind: torch.Tensor

    @property
    def key_vectors(self) -> torch.Tensor:
        return self.vectors[self.kind == KEY]


def _panel(title: str, parts: Sequence[tuple[torch.Tensor, torch.Tensor, int]]) -> Panel:
    """parts: (vectors [V, D], expert index [V], kind) -> one Panel."""
    return Panel(
        title,
        torch.cat([v.detach().float().cpu() for v, _, _ in parts]),
        torch.cat([e for _, e, _ in parts]),
        torch.cat([torch.full((len(v),), kind) for v, _, kind in parts]),
    )


def _rows_by_expert(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[E, R, D] -> (the E*R rows [E*R, D], the expert of each row)."""
    E, R, D = weight.shape
    return weight.reshape(E * R, D), torch.arange(E).repeat_interleave(R)


# -- vectors of the base model ----------------------------------------------------------------------------------------


def up_projection(experts: nn.Module) -> torch.Tensor:
    """The experts' up-projections W_up [N, I, D]: ``up_proj``, or the second half of a fused ``gate_up_proj``
    [N, 2I, D] (``gate, up = linear(x, gate_up_proj[e]).chunk(2)`` in transformers' Mixtral, OLMoE, Qwen-MoE...)."""
    experts = getattr(experts, "base_layer", experts)
    D = moe.hidden_size(experts)
    up = getattr(experts, "up_proj", None)
    if isinstance(up, torch.Tensor) and up.dim() == 3 and up.shape[-1] == D:
        return up
    fused = getattr(experts, "gate_up_proj", None)
    if isinstance(fused, torch.Tensor) and fused.dim() == 3 and fused.shape[-1] == D and fused.shape[1] % 2 == 0:
        return fused.chunk(2, dim=1)[1]
    raise ValueError(
        f"{type(experts).__name__} keeps its up-projection in a layout Figure 6 does not read (expected "
        "up_proj [N, I, D] or gate_up_proj [N, 2I, D])."
    )


def router_weight(block: nn.Module, num_experts: int, hidden: int) -> torch.Tensor:
    """The MoE block's router weight [N, D] (its ``gate`` or ``router`` child)."""
    for name in ("gate", "router"):
        weight = getattr(getattr(block, name, None), "weight", None)
        if isinstance(weight, torch.Tensor) and tuple(weight.shape) == (num_experts, hidden):
            return weight
    raise ValueError(
        f"No router weight [{num_experts}, {hidden}] found in {type(block).__name__} "
        "(looked for .gate.weight and .router.weight)."
    )


def moe_layer(model: nn.Module, layer_index: int) -> tuple[nn.Module, nn.Module]:
    """(MoE block, experts module) of decoder layer ``layer_index`` (wrapped by PERFT or not)."""
    names = [n for n in moe.find_experts_modules(model) if re.search(rf"\.layers\.{layer_index}\.", f".{n}.")]
    if not names:
        found = sorted(
            {int(m.group(1)) for n in moe.find_experts_modules(model) if (m := re.search(r"layers\.(\d+)\.", n))}
        )
        raise ValueError(f"Layer {layer_index} has no MoE experts module; MoE layers: {found}.")
    name = names[0].removesuffix(".base_layer")
    return model.get_submodule(name.rpartition(".")[0]), model.get_submodule(name)


def base_panel(model: nn.Module, layer_index: int, title: str = "Base model") -> Panel:
    """The FFN experts' key memory vectors (rows of W_up) and the router's expert vectors of one layer."""
    block, experts = moe_layer(model, layer_index)
    up = up_projection(experts)
    keys, owner = _rows_by_expert(up)
    router = router_weight(block, up.shape[0], up.shape[-1])
    return _panel(title, [(keys, owner, KEY), (router, torch.arange(router.shape[0]), ROUTER)])


# -- vectors of a saved PERFT adapter ---------------------------------------------------------------------------------


def adapter_panel(
    tensors: Mapping[str, torch.Tensor],
    config: Mapping,
    layer_index: int,
    base_router: torch.Tensor | None = None,
    title: str | None = None,
) -> Panel:
    """A PERFT adapter's vectors in one layer, from its saved tensors (``adapter_model.safetensors``): the rows of
    every PEFT expert's A, PERFT-R's router rows, and for PERFT-E the base router's rows (``base_router``)."""
    if config.get("peft_type") != "PERFT":
        raise ValueError(f"Figure 6 draws PERFT adapters; this one is {config.get('peft_type')!r}.")
    layer = re.compile(rf"(^|\.)layers\.{layer_index}\.")
    found = {key.rpartition(".")[2]: value for key, value in tensors.items() if layer.search(key)}
    if "perft_A" not in found:
        raise ValueError(f"The adapter has no PERFT experts in layer {layer_index}.")
    keys, owner = _rows_by_expert(found["perft_A"])
    parts = [(keys, owner, KEY)]
    if "perft_router" in found:
        parts.append((found["perft_router"], torch.arange(found["perft_router"].shape[0]), ROUTER))
    elif config.get("variant") == "E":
        if base_router is None:
            raise ValueError("PERFT-E's expert vectors are the base router's: pass base_router.")
        parts.append((base_router, torch.arange(base_router.shape[0]), ROUTER))
    return _panel(title or default_title(config), parts)


def default_title(config: Mapping) -> str:
    variant, r = config.get("variant"), config.get("r")
    detail = {
        "R": f" (Top{config.get('top_k')}/{config.get('num_experts')})",
        "D": f" ({config.get('num_experts')})",
    }.get(variant, "")
    return f"PERFT-{variant}{detail}, r={r}"


def load_adapter(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, adapter_config) of a saved adapter directory (safetensors only)."""
    from safetensors.torch import load_file

    path = Path(path)
    return load_file(str(path / "adapter_model.safetensors")), json.loads((path / "adapter_config.json").read_text())


# -- the projection ---------------------------------------------------------------------------------------------------


@dataclass
class Projection:
    """x -> ((x - mean) / std) @ components.T [-> UMAP]: fitted on the FFN experts' key memory vectors."""

    mean: torch.Tensor  # [D]
    std: torch.Tensor  # [D]
    components: torch.Tensor  # [k, D], orthonormal rows, by decreasing variance
    explained_variance_ratio: torch.Tensor  # [k]
    umap: object = None

    def pca(self, vectors: torch.Tensor) -> torch.Tensor:
        return ((vectors.double() - self.mean) / self.std) @ self.components.T

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """[V, D] -> [V, 2] plot coordinates."""
        reduced = self.pca(vectors)
        if self.umap is None:
            return reduced[:, :2].float()
        return torch.as_tensor(self.umap.transform(reduced.numpy()), dtype=torch.float32)


def fit_projection(
    key_vectors: torch.Tensor, explained: float = EXPLAINED_VARIANCE, use_umap: bool | None = None
) -> Projection:
    """Standardise each feature, PCA by SVD keeping the fewest components (at least 2) explaining ``explained`` of
    the variance, then fit UMAP on them if ``use_umap`` (default: when umap-learn is installed)."""
    x = key_vectors.double()
    mean = x.mean(0)
    std = x.std(0, correction=0).clamp_min(1e-12)  # as StandardScaler: population std, constant features kept
    _, s, vh = torch.linalg.svd((x - mean) / std, full_matrices=False)
    ratio = s.square() / s.square().sum()
    k = max(2, int(torch.searchsorted(ratio.cumsum(0), torch.tensor(explained, dtype=ratio.dtype))) + 1)
    k = min(k, vh.shape[0])
    # Deterministic signs: the largest-magnitude loading of each component is positive.
    signs = torch.sign(vh[:k].gather(1, vh[:k].abs().argmax(1, keepdim=True)))
    projection = Projection(mean, std, vh[:k] * signs, ratio[:k])
    if use_umap is None:
        use_umap = umap_available()
    if use_umap:
        import umap

        projection.umap = umap.UMAP(**UMAP_SETTINGS).fit(projection.pca(x).numpy())
    return projection


def umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


# -- the figure -------------------------------------------------------------------------------------------------------


def project_panels(panels: Sequence[Panel], use_umap: bool | None = None) -> tuple[Projection, list[torch.Tensor]]:
    """Fit on the first panel's (the base model's) key vectors; project every panel's vectors with it."""
    projection = fit_projection(panels[0].key_vectors, use_umap=use_umap)
    return projection, [projection(p.vectors) for p in panels]


def plot_figure6(
    panels: Sequence[Panel], path: str | os.PathLike, *, use_umap: bool | None = None, suptitle: str | None = None
):
    """Draw the panels side by side (shared axes) into ``path``; returns (figure, projection, coordinates)."""
    projection, coordinates = project_panels(panels, use_umap)
    fig, axes = plotting.figure(
        1, len(panels), size=(4 * len(panels), 4.2), layout="tight", sharex=True, sharey=True, squeeze=False
    )
    cmap = plotting.colormap("hsv")
    for ax, panel, xy in zip(axes[0], panels, coordinates):
        n = int(panel.expert.max()) + 1
        colours = cmap((panel.expert.numpy() % n) / max(n, 1))
        keys, routers = (panel.kind == KEY).numpy(), (panel.kind == ROUTER).numpy()
        ax.scatter(
            xy[keys, 0],
            xy[keys, 1],
            c=colours[keys],
            s=8,
            marker="o",
            alpha=0.6,
            linewidths=0,
            label="key memory vectors",
        )
        if routers.any():
            ax.scatter(
                xy[routers, 0],
                xy[routers, 1],
                c=colours[routers],
                s=120,
                marker="*",
                edgecolors="black",
                linewidths=0.5,
                label="expert vectors (router)",
            )
        ax.set_title(panel.title)
    method = "PCA + UMAP" if projection.umap is not None else "PCA (PC1, PC2)"
    axes[0][0].legend(loc="best", fontsize=7)
    fig.suptitle(suptitle or f"Key memory and expert vectors, {method} fitted on the FFN experts' key vectors")
    plotting.save(fig, path, dpi=150)
    return fig, projection, coordinates


def figure6(
    base_model: nn.Module,
    adapters: Mapping[str, str | os.PathLike],
    layer_index: int,
    path: str | os.PathLike,
    *,
    use_umap: bool | None = None,
):
    """Figure 6 for saved PERFT adapters (title -> adapter directory) on ``base_model``, one layer."""
    base = base_panel(base_model, layer_index)
    block, experts = moe_layer(base_model, layer_index)
    up = up_projection(experts)
    router = router_weight(block, up.shape[0], up.shape[-1])
    panels = [base]
    for title, directory in adapters.items():
        tensors, config = load_adapter(directory)
        panels.append(adapter_panel(tensors, config, layer_index, base_router=router, title=title))
    return plot_figure6(panels, path, use_umap=use_umap)


def _adapter_argument(text: str) -> tuple[str, str]:
    """DIR or DIR=TITLE."""
    directory, _, title = text.partition("=")
    if not (Path(directory) / "adapter_config.json").is_file():
        raise argparse.ArgumentTypeError(f"{directory!r} is not a saved adapter directory (no adapter_config.json)")
    return directory, title


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m perft_peft.analysis.figure6",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--adapter",
        nargs="+",
        required=True,
        type=_adapter_argument,
        metavar="DIR[=TITLE]",
        help="saved PERFT adapter directories, one panel each (title: its variant by default)",
    )
    p.add_argument("--base_model", help="base model (Hub id or directory); default: the first adapter's")
    p.add_argument("--layer", type=int, required=True, help="decoder layer index (the paper shows OLMoE layer 8)")
    p.add_argument("--output", required=True, help="image file to write (.png, .pdf, ...)")
    p.add_argument(
        "--projection",
        choices=["auto", "pca", "umap"],
        default="auto",
        help="auto: UMAP after PCA when umap-learn is installed, else PCA alone",
    )
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    args = p.parse_args(argv)
    if args.projection == "umap" and not umap_available():
        p.error("--projection umap needs umap-learn: pip install perft-peft[umap]")
    configs = [json.loads((Path(d) / "adapter_config.json").read_text()) for d, _ in args.adapter]
    base_id = args.base_model or configs[0].get("base_model_name_or_path")
    if not base_id:
        p.error("the adapter records no base model: give --base_model")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        base_id, dtype=args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    )
    adapters = {}
    for (directory, title), config in zip(args.adapter, configs):
        title = title or default_title(config)
        adapters[title if title not in adapters else f"{title} ({directory})"] = directory
    use_umap = {"auto": None, "pca": False, "umap": True}[args.projection]
    _, projection, _ = figure6(model, adapters, args.layer, args.output, use_umap=use_umap)
    print(
        f"wrote {args.output} ({'PCA + UMAP' if projection.umap is not None else 'PCA'}; "
        f"{projection.components.shape[0]} components explain "
        f"{float(projection.explained_variance_ratio.sum()):.0%} of the FFN key vectors' variance)"
    )


if __name__ == "__main__":
    main()
