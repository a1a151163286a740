"""What ``recipes/evaluate_adapter.py`` does: its flags, where the test sets are, loading the adapter, writing the
results.

Everything that can be wrong with the flags or the data directory is reported before a model is loaded.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from .protocols import DEFAULT_PROTOCOL, PROTOCOLS
from .report import EvalReport
from .runner import _load_records, check_settings, evaluate_benchmarks
from .tasks import BENCHMARKS, fixture_benchmarks, get_benchmark, resolve

RESULTS_JSON, RESULTS_MD, PREDICTIONS_JSON = "eval_results.json", "eval_results.md", "eval_predictions.json"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--adapter",
        help="adapter to evaluate: a local directory or a Hub repo id (its base model is "
        "the one recorded in adapter_config.json unless --base_model is given)",
    )
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) of --adapter")
    p.add_argument(
        "--base_model",
        help="base model (Hub id or directory): overrides the adapter's; alone, evaluates the base model itself",
    )
    p.add_argument(
        "--benchmarks",
        nargs="+",
        metavar="NAME",
        help=f"benchmarks to run (default: all; with --tiny, all that have a fixture): "
        f"{' '.join(BENCHMARKS)}; table labels such as SIQA or ARC-e work too",
    )
    p.add_argument("--data_dir", help="LLM-Adapters' dataset/ folder, holding <name>/test.json per benchmark")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="use the bundled 10-record test sets instead of --data_dir (offline smoke run)",
    )
    p.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="prompts per generate call (1: no padding, as LLM-Adapters' arithmetic script)",
    )
    p.add_argument("--limit", type=int, help="evaluate only the first N records of each test set")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of LLM-Adapters' 4-beam search")
    p.add_argument("--num_beams", type=int, help="override every benchmark's number of beams (default 4)")
    p.add_argument(
        "--max_new_tokens",
        type=int,
        help="override every benchmark's generation length (default 32 commonsense, 256 arithmetic)",
    )
    p.add_argument(
        "--protocol",
        default=DEFAULT_PROTOCOL,
        choices=sorted(PROTOCOLS),
        help="llm-adapters (default): LLM-Adapters' scripts; perft: the PERFT authors' (commonsense "
        "prompts end in 'the correct answer is', 4 new tokens; answers after the last "
        "'### Response:')",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="dtype to load the model in (auto: the checkpoint's)",
    )
    p.add_argument(
        "--output_dir",
        required=True,
        help=f"where {RESULTS_JSON}, {RESULTS_MD} and {PREDICTIONS_JSON} (every response) are written",
    )
    return p


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse the flags, find and check every test set (``args.sources``: name -> path; ``args.test_sets``: name ->
    records), or exit with what is wrong."""
    args = p.parse_args(argv)
    if not (args.adapter or args.base_model):
        p.error("give --adapter (a directory or Hub repo id), --base_model, or both")
    if args.revision and not args.adapter:
        p.error("--revision pins a revision of --adapter; there is no --adapter")
    if args.tiny == bool(args.data_dir):
        p.error("give one of --data_dir (LLM-Adapters' dataset/ folder) and --tiny (the bundled test sets)")
    try:
        check_settings(
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams,
            greedy=args.greedy,
            limit=args.limit,
        )
        chosen = resolve(args.benchmarks) if args.benchmarks else None
    except ValueError as error:
        p.error(str(error))
    if args.tiny:
        bundled = fixture_benchmarks()
        chosen = chosen or resolve(bundled)
        missing = [b.name for b in chosen if b.name not in bundled]
        if missing:
            p.error(f"no bundled test set for {', '.join(missing)}; --tiny has: {', '.join(bundled)}")
        args.sources = {b.name: bundled[b.name] for b in chosen}
    else:
        args.sources = {b.name: b.data_path(args.data_dir) for b in chosen or resolve()}
        missing = [str(path) for path in args.sources.values() if not path.is_file()]
        if missing:
            p.error(
                f"missing test sets: {', '.join(missing)} (LLM-Adapters' dataset/<name>/test.json; see "
                "docs/evaluation.md, section 'Getting the test sets', for the download)"
            )
    try:  # the records too: a bad one should not wait for the model to load
        args.test_sets = {
            name: _load_records(get_benchmark(name), path, args.limit) for name, path in args.sources.items()
        }
    except ValueError as error:
        p.error(str(error))
    return args


def load_model_and_tokenizer(
    adapter: str | None, base_model: str | None = None, revision: str | None = None, dtype: str = "auto"
):
    """The model to evaluate and its tokenizer.

    The adapter goes through ``AutoPeftModelForCausalLM`` (its recorded base model) or, with ``base_model``, onto
    that model through ``PeftModel.from_pretrained``; ``import perft_peft`` (done by importing this package) lets
    peft read PERFT and LoRACoE adapters. The tokenizer is the adapter directory's if training saved one there,
    else the base model's. On GPUs the model is spread over all of them (``device_map="auto"``).
    """
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load = dict(
        dtype=dtype if dtype == "auto" else getattr(torch, dtype),
        device_map="auto" if torch.cuda.is_available() else None,
    )
    if adapter is None:
        model = AutoModelForCausalLM.from_pretrained(base_model, **load)
    elif base_model is None:
        model = AutoPeftModelForCausalLM.from_pretrained(adapter, revision=revision, **load)
        base_model = model.peft_config[model.active_adapter].base_model_name_or_path
    else:
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_model, **load), adapter, revision=revision
        )
    has_tokenizer = adapter is not None and os.path.isfile(os.path.join(adapter, "tokenizer_config.json"))
    return model, AutoTokenizer.from_pretrained(adapter if has_tokenizer else base_model)


def run(args: argparse.Namespace) -> EvalReport:
    """Load, evaluate, write the results to ``args.output_dir`` and print the table."""
    model, tokenizer = load_model_and_tokenizer(args.adapter, args.base_model, args.revision, args.dtype)
    test_sets = getattr(args, "test_sets", None) or args.sources
    report = evaluate_benchmarks(
        model,
        tokenizer,
        test_sets,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        greedy=args.greedy,
        limit=args.limit,
        model_name=args.adapter or args.base_model,
        protocol=args.protocol,
    )
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report.to_json(output / RESULTS_JSON)
    report.to_json(output / PREDICTIONS_JSON, predictions=True)
    (output / RESULTS_MD).write_text(report.to_markdown(), encoding="utf-8")
    print(report.to_markdown(), flush=True)
    return report
