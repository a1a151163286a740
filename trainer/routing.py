"""Routing telemetry: how evenly tokens spread over experts, per adapted layer, accumulated during training."""

from __future__ import annotations

import json
import math
import os

import torch
from torch import nn

from perft_peft.perft.layer import PerftLayer


def _short(name: str) -> str:
    return name.removeprefix("base_model.model.").removeprefix("model.")


class RoutingStats:
    """Token counts per expert for every PERFT-R/E layer: since the last log and over the whole run.

    R counts its own M PEFT experts, E the model's N experts (which its PEFT experts follow). Counting is an
    ``index_add`` on the device: no host sync per step.
    """

    def __init__(self, model: nn.Module):
        self.layers = [(_short(n), m) for n, m in model.named_modules() if isinstance(m, PerftLayer)]
        self.window: dict[str, torch.Tensor] = {}
        self.total: dict[str, torch.Tensor] = {}

    def update(self) -> None:
        for name, layer in self.layers:
            for adapter, record in layer.router_records.items():
                key = f"{name}/{adapter}"
                index = record.top_k_index.reshape(-1)
                counts = torch.zeros(record.num_experts, device=index.device).index_add_(
                    0, index, torch.ones_like(index, dtype=torch.float32))
                self.window[key] = self.window.get(key, 0) + counts
                self.total[key] = self.total.get(key, 0) + counts

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
        out = {}
        for key, counts in self.total.items():
            cv, entropy = self.health(counts)
            load = (counts / counts.sum().clamp(min=1)).cpu().tolist()
            out[key] = {"load": load, "tokens": int(counts.sum()), "load_cv": cv, "load_entropy": entropy}
        return out

    def save(self, output_dir: str) -> list[str]:
        """Write routing_stats.json and an expert-load heatmap (one row per layer) per adapter; return paths."""
        summary = self.summary()
        if not summary:
            return []
        os.makedirs(output_dir, exist_ok=True)
        paths = [os.path.join(output_dir, "routing_stats.json")]
        with open(paths[0], "w") as f:
            json.dump({"perft": summary}, f, indent=2)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        adapters = sorted({key.rsplit("/", 1)[1] for key in summary})
        for adapter in adapters:
            rows = [(k.rsplit("/", 1)[0], v["load"]) for k, v in summary.items() if k.endswith("/" + adapter)]
            data = torch.tensor([load for _, load in rows])
            fig, ax = plt.subplots(figsize=(1 + 0.4 * data.shape[1], 1 + 0.35 * len(rows)))
            image = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0)
            ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=7)
            ax.set_xticks(range(data.shape[1]))
            ax.set_xlabel("expert")
            ax.set_title(f"expert load (share of routed tokens), adapter '{adapter}'")
            fig.colorbar(image, ax=ax)
            fig.tight_layout()
            path = os.path.join(output_dir, f"expert_load_{adapter}.png")
            fig.savefig(path, dpi=100)
            plt.close(fig)
            paths.append(path)
        return paths
