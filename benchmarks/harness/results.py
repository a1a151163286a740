"""The sweep's results file read back: every run's record, the learning rate chosen per method, and per-seed
metrics at that rate. Pure Python on the JSON records, so the questions and tables can be tested without torch.

A record is one training run (or the base model scored alone, spec "base"): ``spec``, ``learning_rate``,
``seed``, ``scored_from`` (the spec whose training run was scored: itself, or the router-on spec for a
``router=off`` variant) and ``validation`` / ``test``: ``{task: {"accuracy": %, "loss": mean NLL}}``.

Selection: for each trained spec, the runs at ``GRID_SEED`` over the learning-rate grid are compared on the
*validation* split (higher mean accuracy over tasks; ties: lower mean loss); the test split is read only at the
chosen rate, over every seed run there. A ``router=off`` variant takes its trained spec's choice, so it is paired
with it seed for seed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

GRID_SEED = 0
METRICS = ("accuracy", "loss")  # accuracy in %, higher is better; loss = mean NLL per answer token, lower is better


def fingerprint(setup: dict) -> str:
    """A short hash of everything but method, rate and seed that makes a run's numbers (base, data, settings)."""
    return hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_key(record: dict) -> tuple:
    return canonical(record["spec"]), record["learning_rate"], record["seed"]


def load_records(path: Path, setup: str | None = None) -> list[dict]:
    """The records in ``path`` ([] if there is none), refusing a file that is not a results file or that holds runs
    of another ``setup`` (a fingerprint): resuming them would mix two experiments in one table."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
        if not isinstance(records, list) or not all(isinstance(r, dict) and "spec" in r for r in records):
            raise ValueError("not a list of run records")
    except ValueError as error:
        raise ValueError(f"{path} is not a sweep results file ({error}); move it away or pass --fresh.") from None
    if setup is not None:
        other = sorted({str(r.get("setup")) for r in records} - {setup})
        if other:
            raise ValueError(
                f"{path} holds runs of another set-up (fingerprint {', '.join(other)}, this one {setup}: another "
                "base (a base pre-trained anew on another thread count or CPU is another base), data or "
                "fine-tuning settings, or an older harness). Resuming would mix two experiments in "
                "one table: pass --fresh to start over, or another --output."
            )
    return records


def append_records(path: Path, new: list[dict]) -> list[dict]:
    """Add ``new`` to the results file and return all its records. Under a lock and re-read first, so processes
    sharing one file (disjoint --methods on both cores) add to it instead of overwriting each other; written to a
    temporary file and renamed, so a kill leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        records = load_records(path)
        done = {run_key(r) for r in records}
        records += [r for r in new if run_key(r) not in done]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(records, indent=2))
        os.replace(tmp, path)
    return records


def canonical(spec: str) -> str:
    """A spec with its key=value items sorted, so "R:M=8,K=2,r=5" and "R:r=5,K=2,M=8" are one method."""
    kind, _, rest = spec.partition(":")
    return f"{kind}:{','.join(sorted(filter(None, rest.split(','))))}" if rest else kind


def mean_over_tasks(split: dict, metric: str, tasks: Sequence[str] | None = None) -> float:
    names = list(split) if tasks is None else list(tasks)
    return sum(split[t][metric] for t in names) / len(names)


@dataclass
class Selection:
    """One method's learning-rate choice and its test runs."""

    spec: str
    learning_rate: float | None
    grid: dict[float, tuple[float, float]]  # learning rate -> (validation accuracy, validation loss), GRID_SEED
    runs: dict[int, dict]  # seed -> record at the chosen learning rate

    def per_seed(self, metric: str, tasks: Sequence[str] | None = None) -> dict[int, float]:
        """{seed: test ``metric`` averaged over ``tasks`` (default: all)}."""
        return {seed: mean_over_tasks(run["test"], metric, tasks) for seed, run in self.runs.items()}

    @property
    def record(self) -> dict:
        """Any one run (for the method's fixed facts: label, group, # Act., ...)."""
        return next(iter(self.runs.values()))


def select(records: list[dict]) -> dict[str, Selection]:
    """{canonical spec: Selection} for every spec in ``records``, in first-appearance order."""
    by_spec: dict[str, list[dict]] = {}
    for record in records:
        by_spec.setdefault(canonical(record["spec"]), []).append(record)
    chosen: dict[str, float | None] = {}
    grids: dict[str, dict] = {}
    for spec, runs in by_spec.items():
        grid = {
            run["learning_rate"]: (
                mean_over_tasks(run["validation"], "accuracy"),
                mean_over_tasks(run["validation"], "loss"),
            )
            for run in runs
            if run["seed"] == GRID_SEED
        }
        grids[spec] = grid
        if grid:
            chosen[spec] = max(grid, key=lambda lr: (grid[lr][0], -grid[lr][1]))
    out = {}
    for spec, runs in by_spec.items():
        source = canonical(runs[0].get("scored_from") or spec)
        lr = chosen.get(source)
        at_lr = {run["seed"]: run for run in runs if run["learning_rate"] == lr}
        if at_lr:
            out[spec] = Selection(spec, lr, grids[spec], dict(sorted(at_lr.items())))
    return out
