"""The LLM-Adapters record format and its check.

A record is ``{"instruction", "input", "output", "answer"}``: ``instruction`` holds the question (with the answer
choices and "Answer format: ..." for commonsense tasks), ``input`` is extra context (empty in every LLM-Adapters
set), ``output`` is the target response ("the correct answer is solution1", or a rationale ending in the number
for math) and ``answer`` is the gold label the evaluation compares against ("solution1", "true", "576.0").

The check runs at load time because a missing field otherwise fails late or, worse, silently: a null ``output``
formats as the word "None" in the prompt and gets trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

INSTRUCTION, INPUT, OUTPUT, ANSWER = "instruction", "input", "output", "answer"
FIELDS = (INSTRUCTION, INPUT, OUTPUT, ANSWER)
# Needed to build the training prompt. ``answer`` only matters for evaluation (and not every training set has it).
REQUIRED_FIELDS = (INSTRUCTION, INPUT, OUTPUT)
EVAL_REQUIRED_FIELDS = (INSTRUCTION, INPUT, OUTPUT, ANSWER)


class RecordError(ValueError):
    """A data set whose records do not follow the LLM-Adapters format."""


def check_records(records, required: Sequence[str] = REQUIRED_FIELDS, source: str = "data") -> None:
    """Raise :class:`RecordError` naming the field(s) and the first record (0-based) that lacks them.

    ``records`` is a ``datasets.Dataset`` (checked column-wise in Arrow, fast on 170k records) or any sequence
    of mappings. A field counts as missing when absent or null; empty strings are fine (``input`` is usually "").
    """
    if hasattr(records, "column_names") and hasattr(records, "data"):
        _check_dataset(records, tuple(required), source)
    else:
        _check_mappings(records, tuple(required), source)


def _fail(source: str, index: int, fields: Iterable[str], required: Sequence[str], extra: str = "") -> None:
    names = ", ".join(repr(f) for f in fields)
    raise RecordError(
        f"{source}: record {index} has no {names} field (LLM-Adapters records need {', '.join(required)}){extra}."
    )


def _check_dataset(dataset, required: tuple[str, ...], source: str) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(dataset) == 0:
        raise RecordError(f"{source}: no records.")
    absent = [f for f in required if f not in dataset.column_names]
    if absent:
        _fail(source, 0, absent, required, f"; no record has it (columns found: {', '.join(dataset.column_names)})")
    table = dataset.with_format("arrow")[:]  # honours indices mappings (select / shuffle / filter)
    first_bad: dict[str, int] = {}
    for field in required:
        column = table.column(field)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise RecordError(f"{source}: field {field!r} must be text, but its values are {column.type}.")
        if column.null_count:
            first_bad[field] = pc.index(pc.is_null(column), True).as_py()
    if first_bad:
        index = min(first_bad.values())
        _fail(source, index, [f for f, i in first_bad.items() if i == index], required)


def _check_mappings(records: Sequence[Mapping], required: tuple[str, ...], source: str) -> None:
    if len(records) == 0:
        raise RecordError(f"{source}: no records.")
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise RecordError(f"{source}: record {index} is a {type(record).__name__}, not a JSON object.")
        missing = [f for f in required if record.get(f) is None]
        if missing:
            _fail(source, index, missing, required)
