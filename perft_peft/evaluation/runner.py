"""``evaluate_benchmarks``: generate, extract, score through the shipped metric (``score_benchmark``), tabulate."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..data import EVAL_REQUIRED_FIELDS, check_records, load_llm_adapters_dataset
from .extraction import is_correct
from .generation import generate_responses
from .metric import load_accuracy_metric
from .protocols import DEFAULT_PROTOCOL, Protocol, get_protocol
from .report import BenchmarkResult, EvalReport
from .tasks import Benchmark, get_benchmark


def evaluate_benchmarks(
    model,
    tokenizer,
    benchmarks: Mapping[str, str | os.PathLike | Sequence[Mapping]],
    *,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    greedy: bool = False,
    limit: int | None = None,
    model_name: str | None = None,
    progress: bool = True,
    protocol: str | Protocol = DEFAULT_PROTOCOL,
) -> EvalReport:
    """Evaluate ``model`` (a ``PeftModel`` or a plain causal LM) on LLM-Adapters test sets.

    ``benchmarks`` maps a benchmark name (``"boolq"``, ``"siqa"``, ``"gsm8k"``: see ``BENCHMARKS``) to its test
    set: a ``test.json`` path or directory (LLM-Adapters' ``dataset/<name>/``) or a sequence of records with
    ``instruction`` and ``answer`` (and ``input`` / ``output``, as in the test files). Decoding defaults to each
    benchmark's LLM-Adapters setting (4 beams; 32 or 256 new tokens); ``num_beams`` / ``max_new_tokens`` override
    it for all, ``greedy=True`` means one beam. ``limit`` keeps each test set's first records (quick checks; the
    numbers are then not the papers'). ``protocol="perft"`` evaluates as the PERFT authors did (commonsense prompts
    end in "the correct answer is", 4 new tokens, the answer read after the last ``### Response:``; see
    ``protocols``); ``max_new_tokens`` still overrides its lengths. Every test set is loaded and checked before the
    first generation, so a bad path fails in seconds rather than after hours of decoding.
    """
    check_settings(
        batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams, greedy=greedy, limit=limit
    )
    protocol = get_protocol(protocol)
    if not benchmarks:
        raise ValueError("No benchmarks to evaluate.")
    test_sets = {}
    for key, source in benchmarks.items():
        benchmark = get_benchmark(key)
        if benchmark.name in test_sets:
            raise ValueError(f"{key!r} names {benchmark.name!r}, which is already in the benchmarks.")
        test_sets[benchmark.name] = (benchmark, _load_records(benchmark, source, limit))
    results = {
        benchmark.name: score_benchmark(
            model,
            tokenizer,
            benchmark,
            records,
            num_beams=1 if greedy else num_beams or benchmark.num_beams,
            max_new_tokens=max_new_tokens or protocol.tokens(benchmark),
            batch_size=batch_size,
            progress=progress,
            protocol=protocol,
        )
        for benchmark, records in test_sets.values()
    }
    settings = {"batch_size": batch_size, "limit": limit, "greedy": greedy, "protocol": protocol.name}
    return EvalReport(results, model_name=model_name, settings=settings)


def score_benchmark(
    model,
    tokenizer,
    benchmark: Benchmark,
    records: Sequence[Mapping],
    *,
    num_beams: int,
    max_new_tokens: int,
    batch_size: int = 8,
    progress: bool = True,
    desc: str | None = None,
    protocol: str | Protocol = DEFAULT_PROTOCOL,
) -> BenchmarkResult:
    """One test set (records with ``instruction`` and ``answer``, in memory) generated, its answers extracted as
    ``benchmark`` extracts them and scored through the shipped metric: the loop ``evaluate_benchmarks`` runs for
    each benchmark, and the paper sweep for each of its tasks. ``protocol`` sets the prompt suffix and where the
    answer is read; the decoding (``num_beams``, ``max_new_tokens``) is the caller's."""
    protocol = get_protocol(protocol)
    responses = generate_responses(
        model,
        tokenizer,
        [r["instruction"] for r in records],
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        desc=desc or benchmark.label,
        prompt_suffix=protocol.suffix(benchmark),
        read_response=protocol.response,
    )
    predictions = [benchmark.extract(response) for response in responses]
    references = [r["answer"] for r in records]
    score = load_accuracy_metric(benchmark.numeric).compute(predictions=predictions, references=references)
    examples = [
        {
            "instruction": r["instruction"],
            "answer": r["answer"],
            "response": response,
            "prediction": prediction,
            "correct": is_correct(prediction, r["answer"], numeric=benchmark.numeric),
        }
        for r, response, prediction in zip(records, responses, predictions)
    ]
    return BenchmarkResult(benchmark.name, score["correct"], score["total"], num_beams, max_new_tokens, examples)


def check_settings(*, batch_size, max_new_tokens, num_beams, greedy, limit) -> None:
    """Raise ValueError for settings ``evaluate_benchmarks`` cannot honour (also run on flags, before loading)."""
    if greedy and num_beams not in (None, 1):
        raise ValueError(f"greedy decoding uses one beam; it contradicts num_beams={num_beams}.")
    for name, value in (
        ("batch_size", batch_size),
        ("max_new_tokens", max_new_tokens),
        ("num_beams", num_beams),
        ("limit", limit),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")


def _load_records(benchmark: Benchmark, source, limit: int | None) -> list[dict]:
    """The test records as plain dicts (first ``limit``), checked; numeric answers must parse as numbers."""
    if isinstance(source, (str, os.PathLike)):
        records = list(load_llm_adapters_dataset(source, split="test", require_answer=True))
    else:
        records = [dict(r) for r in source]
        check_records(records, EVAL_REQUIRED_FIELDS, source=benchmark.name)
    records = records[:limit]
    if benchmark.numeric:
        for index, record in enumerate(records):
            try:
                float(record["answer"])
            except (TypeError, ValueError):
                raise ValueError(
                    f"{benchmark.name}: record {index} has answer {record['answer']!r}, which is not a number."
                ) from None
    return records
