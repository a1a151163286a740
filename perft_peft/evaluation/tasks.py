"""The 14 benchmarks of the PERFT and LoRACoE papers, with LLM-Adapters' data layout and decoding defaults.

Each benchmark is keyed by its LLM-Adapters dataset name (``--dataset`` of their scripts and the folder of
``dataset/<name>/test.json``), carries the column label of the papers' tables, its domain, its answer extractor and
the decoding LLM-Adapters uses for it: beam search with 4 beams in both scripts, at most 32 new tokens in
``commonsense_evaluate.py`` and 256 in ``evaluate.py`` (the arithmetic rationales are long). Their sampling
arguments (temperature 0.1, top_p 0.75, top_k 40) are inert there, since ``do_sample`` stays False, and are not
carried over.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..data import available_fixtures, fixture_path
from .extraction import ANSWER, ENDING, OPTION, OPTION_LETTER, SOLUTION, TRUE_FALSE, last_number

COMMONSENSE, ARITHMETIC = "commonsense", "arithmetic"
# The "Avg." column of each domain's table: commonsense reasoning (CR) and arithmetic reasoning (AR).
DOMAIN_AVERAGES = {COMMONSENSE: "CR", ARITHMETIC: "AR"}
NUM_BEAMS = 4
MAX_NEW_TOKENS = {COMMONSENSE: 32, ARITHMETIC: 256}


@dataclass(frozen=True)
class Benchmark:
    name: str  # LLM-Adapters dataset name: the key here and the folder under dataset/
    label: str  # column header in the papers' tables
    domain: str  # COMMONSENSE or ARITHMETIC
    extract: Callable[[str], str | float | None]
    aliases: tuple[str, ...] = ()

    @property
    def numeric(self) -> bool:
        """Scored by value within a tolerance (the arithmetic tasks except AQuA, which is multiple choice)."""
        return self.extract is last_number

    @property
    def max_new_tokens(self) -> int:
        return MAX_NEW_TOKENS[self.domain]

    @property
    def num_beams(self) -> int:
        return NUM_BEAMS

    def data_path(self, data_dir: str | os.PathLike) -> Path:
        """Where LLM-Adapters keeps the test set: ``<data_dir>/<name>/test.json``."""
        return Path(data_dir) / self.name / "test.json"


_ALL = (
    # The papers' column order (PERFT Tables 4-8, as in LLM-Adapters' tables).
    Benchmark("boolq", "BoolQ", COMMONSENSE, TRUE_FALSE),
    Benchmark("piqa", "PIQA", COMMONSENSE, SOLUTION),
    Benchmark("social_i_qa", "SIQA", COMMONSENSE, ANSWER),
    Benchmark("hellaswag", "HellaS", COMMONSENSE, ENDING, aliases=("HellaSwag",)),
    Benchmark("winogrande", "WinoG", COMMONSENSE, OPTION, aliases=("WinoGrande",)),
    Benchmark("ARC-Easy", "ARC-e", COMMONSENSE, ANSWER),
    Benchmark("ARC-Challenge", "ARC-c", COMMONSENSE, ANSWER),
    Benchmark("openbookqa", "OBQA", COMMONSENSE, ANSWER),
    Benchmark("MultiArith", "MultiArith", ARITHMETIC, last_number),
    Benchmark("gsm8k", "GSM8K", ARITHMETIC, last_number),
    Benchmark("AddSub", "AddSub", ARITHMETIC, last_number),
    Benchmark("AQuA", "AQuA", ARITHMETIC, OPTION_LETTER),
    Benchmark("SingleEq", "SingleEq", ARITHMETIC, last_number),
    Benchmark("SVAMP", "SVAMP", ARITHMETIC, last_number),
)
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _ALL}


def get_benchmark(name: str) -> Benchmark:
    """A benchmark by its LLM-Adapters name, its table label or an alias, case-insensitively ("siqa", "ARC-e")."""
    wanted = name.lower()
    for benchmark in _ALL:
        if wanted in (n.lower() for n in (benchmark.name, benchmark.label, *benchmark.aliases)):
            return benchmark
    raise ValueError(
        f"Unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} (or their labels: "
        f"{', '.join(b.label for b in _ALL)})."
    )


def resolve(names: Iterable[str] | None = None) -> list[Benchmark]:
    """The named benchmarks (all 14 by default), each once, in the papers' order."""
    if names is None:
        return list(_ALL)
    chosen = {get_benchmark(n).name for n in names}
    return [b for b in _ALL if b.name in chosen]


def fixture_benchmarks() -> dict[str, Path]:
    """The benchmarks with a bundled 10-record test set (``perft_peft/data/fixtures/eval/<name>.json``)."""
    bundled = set(available_fixtures())
    return {b.name: fixture_path(f"eval/{b.name}") for b in _ALL if f"eval/{b.name}" in bundled}
