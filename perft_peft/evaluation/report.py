"""The evaluation table: accuracy (%) per benchmark and each domain's average, as JSON and as markdown.

Shaped like the PERFT paper's Tables 4-8: one table per domain, the benchmarks in the papers' column order, then
"Avg.", the unweighted mean of the domain's benchmark accuracies (CR for commonsense, AR for arithmetic). A
domain evaluated only in part still gets its average, over the benchmarks present, and the markdown says so,
since such an average is not comparable with the papers'.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from statistics import fmean

from .tasks import BENCHMARKS, DOMAIN_AVERAGES, resolve

_DOMAIN_TITLES = {"commonsense": "Commonsense reasoning", "arithmetic": "Arithmetic reasoning"}


@dataclass
class BenchmarkResult:
    name: str  # LLM-Adapters dataset name, a key of BENCHMARKS
    correct: int
    total: int
    num_beams: int
    max_new_tokens: int
    # Per record: instruction, answer, response, prediction, correct (as LLM-Adapters' experiment/*.json).
    examples: list[dict] = field(default_factory=list, repr=False)

    @property
    def accuracy(self) -> float:
        """Percent correct, as the papers report it."""
        return 100.0 * self.correct / self.total

    def to_dict(self, predictions: bool = False) -> dict:
        benchmark = BENCHMARKS[self.name]
        out = {
            "label": benchmark.label,
            "domain": benchmark.domain,
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "num_beams": self.num_beams,
            "max_new_tokens": self.max_new_tokens,
        }
        return {**out, "examples": self.examples} if predictions else out


@dataclass
class EvalReport:
    results: dict[str, BenchmarkResult]
    model_name: str | None = None
    settings: dict = field(default_factory=dict)  # batch_size, limit, greedy: how the numbers were obtained

    def __post_init__(self):
        self.results = {b.name: self.results[b.name] for b in resolve(self.results)}  # the papers' order

    def domain_results(self, domain: str) -> list[BenchmarkResult]:
        return [r for name, r in self.results.items() if BENCHMARKS[name].domain == domain]

    def averages(self) -> dict[str, float]:
        """``{"CR": ..., "AR": ...}``: each evaluated domain's mean accuracy (%) over its evaluated benchmarks."""
        return {
            key: fmean(r.accuracy for r in self.domain_results(domain))
            for domain, key in DOMAIN_AVERAGES.items()
            if self.domain_results(domain)
        }

    def to_dict(self, predictions: bool = False) -> dict:
        return {
            "model": self.model_name,
            "protocol": self.settings.get("protocol", "llm-adapters"),
            "settings": self.settings,
            "benchmarks": {name: r.to_dict(predictions) for name, r in self.results.items()},
            "averages": self.averages(),
        }

    def to_json(self, path: str | os.PathLike, predictions: bool = False) -> None:
        """Write :meth:`to_dict`; ``predictions=True`` adds every record's response and extracted answer."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(predictions), f, indent=2)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> EvalReport:
        """Read back what :meth:`to_json` wrote (e.g. to put the table in a model card)."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        results = {
            name: BenchmarkResult(
                name, r["correct"], r["total"], r["num_beams"], r["max_new_tokens"], r.get("examples", [])
            )
            for name, r in data["benchmarks"].items()
        }
        return cls(results, data.get("model"), data.get("settings", {}))

    def to_markdown(self) -> str:
        """One table per evaluated domain (benchmark columns, then Avg.), accuracy in % to one decimal."""
        row_name = self.model_name or "model"
        averages = self.averages()
        blocks = []
        for domain, key in DOMAIN_AVERAGES.items():
            evaluated = self.domain_results(domain)
            if not evaluated:
                continue
            columns = [b for b in BENCHMARKS.values() if b.domain == domain]
            cells = [f"{self.results[b.name].accuracy:.1f}" if b.name in self.results else "–" for b in columns]
            lines = [
                f"**{_DOMAIN_TITLES[domain]} ({key})**, accuracy (%)",
                "",
                "| " + " | ".join(["Model", *(b.label for b in columns), "Avg."]) + " |",
                "|" + "|".join([":--", *["--:"] * (len(columns) + 1)]) + "|",
                "| " + " | ".join([row_name, *cells, f"{averages[key]:.1f}"]) + " |",
            ]
            if len(evaluated) < len(columns):
                lines += [
                    "",
                    f"Avg. over the {len(evaluated)} of {len(columns)} benchmarks evaluated: not "
                    "comparable with the papers' averages.",
                ]
            blocks.append("\n".join(lines))
        blocks.append(self._protocol_note())
        return "\n\n".join(blocks) + "\n"

    def _protocol_note(self) -> str:
        decoding = []
        for domain in DOMAIN_AVERAGES:
            settings = sorted({(r.num_beams, r.max_new_tokens) for r in self.domain_results(domain)})
            decoding += [
                f"{domain} {'greedy' if beams == 1 else f'{beams} beams'}, up to {tokens} new tokens"
                for beams, tokens in settings
            ]
        if self.settings.get("protocol") == "perft":
            note = (
                "PERFT authors' protocol (commonsense prompts end in 'the correct answer is', answers read "
                f"after the last '### Response:'), LLM-Adapters answer extraction; {'; '.join(decoding)}"
            )
        else:
            note = f"LLM-Adapters prompts and answer extraction; {'; '.join(decoding)}"
        limit = self.settings.get("limit")
        if limit is not None:
            note += f"; only the first {limit} records of each test set"
        totals = ", ".join(f"{BENCHMARKS[n].label} {r.total}" for n, r in self.results.items())
        return f"{note}. Records scored: {totals}."
