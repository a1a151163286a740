"""Make the LoRACoE paper's Figures 2 and 3 for a trained adapter (peft LoRA, LoRACoE or partition-LoRAMoE):
first-order importance (Eq. 3) on each task's test records, then the rank-vs-dimension variance and the
correlation heatmaps (perft_peft.analysis.patterns).

    python -m perft_peft.analysis.figures --adapter out/lora --data_dir LLM-Adapters/dataset --output_dir figures
    python -m perft_peft.analysis.figures --adapter /tmp/run --tiny --output_dir figures   # bundled test fixtures

Writes figure2.png, figure3.png and importance.json (per task and module, the per-rank importance).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .importance import RankImportance, rank_importance
from .patterns import dimension_variance, plot_correlations, plot_dimension_variance


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, help="saved adapter directory (its base model is loaded with it)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--data_dir", help="LLM-Adapters' dataset/ directory: <data_dir>/<task>/test.json")
    p.add_argument("--tiny", action="store_true", help="the bundled 10-record test fixtures instead of --data_dir")
    p.add_argument("--tasks", nargs="+", help="benchmark names (default: all available)")
    p.add_argument("--modules", nargs="+", help="modules for Figure 3 (default: the first three adapted)")
    p.add_argument("--max_records", type=int, default=128, help="records per task the importance is averaged over")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--cutoff_len", type=int, default=256)
    return p


def task_sources(args) -> dict[str, Path]:
    from ..evaluation.tasks import fixture_benchmarks, resolve

    if args.tiny:
        bundled = fixture_benchmarks()
        names = args.tasks or list(bundled)
        unknown = sorted(set(names) - set(bundled))
        if unknown:
            raise ValueError(f"No bundled test fixture for {unknown}; bundled: {sorted(bundled)}.")
        return {name: bundled[name] for name in names}
    if not args.data_dir:
        raise ValueError("Give --data_dir (LLM-Adapters' dataset/ directory) or --tiny.")
    return {b.name: b.data_path(args.data_dir) for b in resolve(args.tasks)}


def importance_per_task(
    model, tokenizer, sources: dict[str, Path], max_records: int, batch_size: int, cutoff_len: int
) -> dict[str, RankImportance]:
    """Eq. 3 on each task's first ``max_records`` records, loss on the responses only."""
    from torch.utils.data import DataLoader

    from ..data import load_llm_adapters_dataset, make_collator, tokenize_dataset

    results = {}
    for task, path in sources.items():
        records = load_llm_adapters_dataset(path, split="test")
        records = records.select(range(min(max_records, len(records))))
        tokens = tokenize_dataset(records, tokenizer, cutoff_len=cutoff_len, train_on_inputs=False)
        loader = DataLoader(tokens, batch_size=batch_size, collate_fn=make_collator(tokenizer))
        results[task] = rank_importance(model, loader, progress=False)
    return results


def mean_importance(results: dict[str, RankImportance]) -> RankImportance:
    """The element-wise importance averaged over the tasks (Figure 2 pools them)."""
    first = next(iter(results.values()))
    return RankImportance(
        A={m: sum(r.A[m] for r in results.values()) / len(results) for m in first.A},
        B={m: sum(r.B[m] for r in results.values()) / len(results) for m in first.B},
        num_batches=sum(r.num_batches for r in results.values()),
    )


def main(argv=None) -> dict[str, str]:
    from peft import AutoPeftModelForCausalLM, PeftConfig
    from transformers import AutoTokenizer

    import perft_peft  # noqa: F401  (registers PERFT / LoRACoE with peft)

    from ..data import ensure_pad_token

    args = parser().parse_args(argv)
    sources = task_sources(args)
    missing = [str(path) for path in sources.values() if not Path(path).exists()]
    if missing:
        raise FileNotFoundError(f"Missing test sets: {missing[:3]}.")
    base = PeftConfig.from_pretrained(args.adapter).base_model_name_or_path
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(base))
    model = AutoPeftModelForCausalLM.from_pretrained(args.adapter, dtype=torch.float32)
    results = importance_per_task(model, tokenizer, sources, args.max_records, args.batch_size, args.cutoff_len)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    modules = args.modules or list(next(iter(results.values())).A)[:3]
    pooled = mean_importance(results)
    paths = {
        "figure2": plot_dimension_variance(pooled, output / "figure2.png"),
        "figure3": plot_correlations(results, modules, output / "figure3.png"),
    }
    summary = {
        "tasks": {task: {m: v.tolist() for m, v in r.per_rank.items()} for task, r in results.items()},
        "dimension_variance": {m: vars(v) for m, v in dimension_variance(pooled).items()},
    }
    (output / "importance.json").write_text(json.dumps(summary, indent=1))
    return paths


if __name__ == "__main__":
    print(main())
