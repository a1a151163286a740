"""Evaluation on the papers' 14 benchmarks with the LLM-Adapters protocol (or the PERFT authors', ``protocols``).

The pieces: the benchmarks and their decoding defaults (``benchmarks``), answer extraction and scoring copied rule
for rule from LLM-Adapters (``extraction``), batched left-padded generation (``generation``), the accuracy metric
shipped as an ``evaluate`` module and loaded by path (``metric``), the table (``report``), the whole run
(``runner``) and ``recipes/evaluate_adapter.py``'s flags and model loading (``cli``).

    from perft_peft.evaluation import evaluate_benchmarks
    report = evaluate_benchmarks(model, tokenizer, {"boolq": "dataset/boolq/test.json", "gsm8k": "dataset/gsm8k"})
    print(report.to_markdown()); report.to_json("eval_results.json")
"""

from .extraction import NUMBER_TOLERANCE, FirstOf, is_correct, last_number
from .generation import evaluation_generation_config, generate_responses
from .metric import METRIC_PATH, load_accuracy_metric
from .protocols import PROTOCOLS, Protocol, get_protocol
from .report import BenchmarkResult, EvalReport
from .runner import evaluate_benchmarks, score_benchmark
from .tasks import ARITHMETIC, BENCHMARKS, COMMONSENSE, Benchmark, fixture_benchmarks, get_benchmark, resolve

__all__ = [
    "ARITHMETIC",
    "BENCHMARKS",
    "COMMONSENSE",
    "METRIC_PATH",
    "PROTOCOLS",
    "NUMBER_TOLERANCE",
    "Benchmark",
    "BenchmarkResult",
    "EvalReport",
    "FirstOf",
    "Protocol",
    "evaluate_benchmarks",
    "evaluation_generation_config",
    "fixture_benchmarks",
    "generate_responses",
    "get_benchmark",
    "get_protocol",
    "is_correct",
    "last_number",
    "load_accuracy_metric",
    "resolve",
    "score_benchmark",
]
