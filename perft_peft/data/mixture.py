"""The LoRACoE paper's training data (§4.1): a seeded random 75k subset of commonsense_170k plus a 75k subset of
OrcaMath (microsoft/orca-math-word-problems-200k), as one shuffled set of LLM-Adapters records.

Each source is loaded, checked and sampled on its own, so a bad one fails before anything is tokenised or trained,
with an error that names it; OrcaMath's ``question`` / ``answer`` become ``instruction`` / ``output`` (``input``
empty), the LLM-Adapters template then formats both alike. The parts are joined with ``datasets``' own
``concatenate_datasets`` and shuffled with the same seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .fixtures import FIXTURES_DIR
from .loading import _json_file, _looks_like_path, load_llm_adapters_dataset
from .records import INPUT, INSTRUCTION, OUTPUT, REQUIRED_FIELDS, RecordError, check_records

ORCA_MATH = "microsoft/orca-math-word-problems-200k"
ORCA_MATH_COLUMNS = ("question", "answer")
# 24 of math_tiny's problems in OrcaMath's columns (so the tiny tokenizer knows every word), for --tiny runs.
ORCA_MATH_FIXTURE = FIXTURES_DIR / "orca_math_tiny.jsonl"
FORMATS = ("llm_adapters", "orca_math")


@dataclass(frozen=True)
class MixturePart:
    """One source of a mixture: where it is, how many records to draw from it, and its format."""

    source: str | os.PathLike
    size: int | None = None  # None: all of it
    format: str = "llm_adapters"  # or "orca_math" (question / answer columns)
    split: str = "train"

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"{self.source}: format must be one of {FORMATS}, got {self.format!r}.")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise ValueError(f"{self.source}: size must be a positive integer or None, got {self.size!r}.")


def load_mixture(parts: list[MixturePart], seed: int = 42, **load_kwargs):
    """One shuffled ``datasets.Dataset`` of LLM-Adapters records (instruction, input, output): from each part a
    seeded random sample of ``size`` records. Every part is checked first; errors name the part's source."""
    import datasets

    if not parts:
        raise ValueError("load_mixture needs at least one MixturePart.")
    sampled = [_sample(_load_part(part, **load_kwargs), part, seed) for part in parts]
    return datasets.concatenate_datasets(sampled).shuffle(seed=seed).flatten_indices()


def loracoe_mixture(
    commonsense: str | os.PathLike,
    orca_math: str | os.PathLike = ORCA_MATH,
    commonsense_size: int | None = 75_000,
    math_size: int | None = 75_000,
    seed: int = 42,
    **load_kwargs,
):
    """The paper's set: ``commonsense_size`` records of commonsense_170k (LLM-Adapters JSON) and ``math_size``
    of OrcaMath (a Hub id or a local JSON(L) file with question / answer)."""
    return load_mixture(
        [MixturePart(commonsense, commonsense_size), MixturePart(orca_math, math_size, "orca_math")],
        seed=seed,
        **load_kwargs,
    )


def _load_part(part: MixturePart, **load_kwargs):
    try:
        if part.format == "llm_adapters":
            return load_llm_adapters_dataset(part.source, part.split, **load_kwargs).select_columns(
                list(REQUIRED_FIELDS)
            )
        dataset = _load_raw(part.source, part.split, **load_kwargs)
    except RecordError:
        raise
    except ValueError as error:  # e.g. datasets' 'Instruction "train" corresponds to no data!' for an empty file
        raise RecordError(f"{part.source}: no records could be loaded ({error}).") from error
    name = f"{part.source} (OrcaMath format)"
    missing = [c for c in ORCA_MATH_COLUMNS if c not in dataset.column_names]
    if missing:
        raise RecordError(
            f"{name}: no {', '.join(repr(c) for c in missing)} column; OrcaMath records need "
            f"{' and '.join(ORCA_MATH_COLUMNS)} (columns found: {', '.join(dataset.column_names)})."
        )
    if len(dataset) == 0:
        raise RecordError(f"{name}: no records.")
    dataset = dataset.select_columns(list(ORCA_MATH_COLUMNS)).rename_columns(
        {"question": INSTRUCTION, "answer": OUTPUT}
    )
    dataset = dataset.add_column(INPUT, [""] * len(dataset)).select_columns(list(REQUIRED_FIELDS))
    check_records(dataset, REQUIRED_FIELDS, source=name)
    return dataset


def _load_raw(source, split: str, **load_kwargs):
    """A local JSON(L) file / directory through the json builder, else a Hub dataset id."""
    import datasets

    path = Path(source).expanduser()
    if path.exists():
        file = _json_file(path, split)
        return datasets.load_dataset("json", data_files={split: str(file)}, split=split, **load_kwargs)
    if _looks_like_path(str(source)):
        raise FileNotFoundError(f"No such data file or directory: {str(source)!r}.")
    return datasets.load_dataset(str(source), split=split, **load_kwargs)


def _sample(dataset, part: MixturePart, seed: int):
    if part.size is None:
        return dataset
    if part.size > len(dataset):
        raise ValueError(f"{part.source}: asked for {part.size} records, but it has only {len(dataset)}.")
    return dataset.shuffle(seed=seed).select(range(part.size))
