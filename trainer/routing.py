"""Routing telemetry: how evenly tokens spread over experts, per adapted layer, accumulated during training."""

from __future__ import annotations

import json
import math
import os
import textwrap

import torch
from torch import nn

from perft_peft import plotting
from perft_peft.loracoe.layer import LoraCoeLayer
from perft_peft.perft.layer import PerftLayer

STATE_NAME = "routing_state.json"  # in each checkpoint


def _device(module: nn.Module):
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else None


def _short(name: str) -> str:
    return name.removeprefix("base_model.model.").removeprefix("model.")


class RoutingStats:
    """Token counts per expert for every PERFT-R/E layer: since the last log and over the whole run.

    R counts its own M PEFT experts, E the model's N experts (which its PEFT experts follow). Counting is an
    ``index_add`` on the device: no host sync per step.
    """

    def __init__(self, model: nn.Module):
        self.layers = [(_short(n), m) for n, m in model.named_modules() if isinstance(m, PerftLayer)]
        self.loracoe_layers = [(_short(n), m) for n, m in model.named_modules() if isinstance(m, LoraCoeLayer)]
        self.window: dict[str, torch.Tensor] = {}
        self.total: dict[str, torch.Tensor] = {}
        self.rank_usage: dict[str, list] = {}  # key -> [sum of per-batch mean c, number of batches]

    def update(self) -> None:
        for name, layer in self.layers:
            for adapter, record in layer.router_records.items():
                key = f"{name}/{adapter}"
                index = record.top_k_index.reshape(-1)
                counts = torch.zeros(record.num_experts, device=index.device).index_add_(
                    0, index, torch.ones_like(index, dtype=torch.float32)
                )
                self.window[key] = self.window.get(key, 0) + counts
                self.total[key] = self.total.get(key, 0) + counts
        for name, layer in self.loracoe_layers:
            for adapter, usage in layer.rank_usage.items():
                total = self.rank_usage.setdefault(f"{name}/{adapter}", [0, 0])
                total[0], total[1] = total[0] + usage, total[1] + 1

    @staticmethod
    def health(counts: torch.Tensor) -> tuple[float, float]:
        """(coefficient of variation, entropy normalised to [0, 1]) of an expert-load vector."""
        counts = counts.double().cpu()
        cv = float(counts.std(unbiased=False) / counts.mean()) if counts.mean() > 0 else float("nan")
        p = counts / counts.sum().clamp(min=1)
        entropy = float(-(p[p > 0] * p[p > 0].log()).sum() / math.log(len(p))) if len(p) > 1 else 1.0
        return cv, entropy

    def log_window(self) -> dict[str, float]:
        """Per-layer load CV and entropy since the last call, plus their means; resets the window."""
        logs, cvs, entropies = {}, [], []
        for key, counts in self.window.items():
            cv, entropy = self.health(counts)
            logs[f"routing/{key}/load_cv"] = cv
            logs[f"routing/{key}/load_entropy"] = entropy
            cvs.append(cv)
            entropies.append(entropy)
        if cvs:
            logs["routing/load_cv"] = sum(cvs) / len(cvs)
            logs["routing/load_entropy"] = sum(entropies) / len(entropies)
        self.window = {}
        return logs

    def summary(self) -> dict:
        """{"perft": {layer/adapter: load stats}, "loracoe": {module/adapter: {"rank_usage": mean c per rank}}}."""
        perft = {}
        for key, counts in self.total.items():
            cv, entropy = self.health(counts)
            load = (counts / counts.sum().clamp(min=1)).cpu().tolist()
            perft[key] = {"load": load, "tokens": int(counts.sum()), "load_cv": cv, "load_entropy": entropy}
        loracoe = {
            key: {"rank_usage": (total / batches).cpu().tolist(), "batches": batches}
            for key, (total, batches) in self.rank_usage.items()
        }
        return {name: part for name, part in (("perft", perft), ("loracoe", loracoe)) if part}

    def save_state(self, checkpoint: str) -> None:
        """The run's totals so far, into a checkpoint, so that a resumed run's statistics cover the whole run."""
        state = {
            "total": {key: counts.cpu().tolist() for key, counts in self.total.items()},
            "rank_usage": {
                key: [torch.as_tensor(total).cpu().tolist(), batches]
                for key, (total, batches) in self.rank_usage.items()
            },
        }
        with open(os.path.join(checkpoint, STATE_NAME), "w") as f:
            json.dump(state, f)

    def load(self, checkpoint: str) -> None:
        """Continue from a checkpoint's totals (a checkpoint without them starts the counts afresh, and says so)."""
        path = os.path.join(checkpoint, STATE_NAME)
        if not os.path.isfile(path):
            if self.layers or self.loracoe_layers:
                print(
                    f"[perft-peft] {checkpoint} has no {STATE_NAME}: routing statistics cover the resumed steps only",
                    flush=True,
                )
            return
        with open(path) as f:
            state = json.load(f)
        devices = {name: _device(layer) for name, layer in self.layers + self.loracoe_layers}
        self.total = {
            key: torch.tensor(counts, device=devices.get(key.rsplit("/", 1)[0]))
            for key, counts in state["total"].items()
        }
        self.rank_usage = {
            key: [torch.tensor(total, device=devices.get(key.rsplit("/", 1)[0])), batches]
            for key, (total, batches) in state["rank_usage"].items()
        }

    def save(self, output_dir: str) -> list[str]:
        """Write routing_stats.json plus, per adapter, a heatmap with one row per layer: expert load (PERFT)
        or rank usage (LoRACoE). Returns the paths written."""
        summary = self.summary()
        if not summary:
            return []
        os.makedirs(output_dir, exist_ok=True)
        paths = [os.path.join(output_dir, "routing_stats.json")]
        with open(paths[0], "w") as f:
            json.dump(summary, f, indent=2)
        plots = (
            ("perft", "load", "expert", "expert load (share of routed tokens)", "expert_load"),
            ("loracoe", "rank_usage", "rank", "rank usage (mean composition weight c)", "rank_usage"),
        )
        for part, field, xlabel, title, stem in plots:
            entries = summary.get(part, {})
            for adapter in sorted({key.rsplit("/", 1)[1] for key in entries}):
                rows = [(k.rsplit("/", 1)[0], v[field]) for k, v in entries.items() if k.endswith("/" + adapter)]
                path = os.path.join(output_dir, f"{stem}_{adapter}.png")
                _heatmap(rows, xlabel, f"{title}, adapter '{adapter}'", path)
                paths.append(path)
        return paths


def _heatmap(rows: list[tuple[str, list[float]]], xlabel: str, title: str, path: str) -> None:
    data = torch.tensor([values for _, values in rows])
    width = 2 + 0.35 * data.shape[1]
    fig, ax = plotting.figure(size=(width, 1.2 + 0.3 * len(rows)), layout="tight")
    image = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=7)
    ax.set_xticks(range(data.shape[1]))
    ax.set_xlabel(xlabel)
    ax.set_title(textwrap.fill(title, int(8 * width)), fontsize=9)  # a narrow figure (few experts) wraps it
    fig.colorbar(image, ax=ax)
    plotting.save(fig, path, dpi=100)
