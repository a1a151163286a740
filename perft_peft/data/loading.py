"""Loading LLM-Adapters data from a local file or directory, or from the Hugging Face Hub.

Everything goes through ``datasets.load_dataset`` (its ``json`` builder for local files, as LLM-Adapters'
``finetune.py`` does), so the result is an Arrow-backed, cacheable ``datasets.Dataset`` whatever the source. The
records are checked here, where the file name is still known, rather than failing later inside ``map``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .records import EVAL_REQUIRED_FIELDS, REQUIRED_FIELDS, RecordError, check_records

JSON_SUFFIXES = (".json", ".jsonl")


def load_llm_adapters_dataset(
    source: str | os.PathLike, split: str = "train", *, require_answer: bool = False, **load_kwargs
):
    """Load LLM-Adapters records as a ``datasets.Dataset``.

    ``source`` is one of:

    - a ``.json`` (a list of records, LLM-Adapters' own files) or ``.jsonl`` file; the whole file is ``split``;
    - a directory: its ``<split>.json`` / ``<split>.jsonl`` (LLM-Adapters' ``dataset/<name>/test.json`` layout),
      else its only JSON file;
    - a Hub dataset id (``owner/name``), loaded with ``load_dataset(source, split=split)``.

    Every record must have ``instruction``, ``input`` and ``output`` (and ``answer`` with
    ``require_answer=True``, for test sets); otherwise a :class:`~perft_peft.data.records.RecordError` names the
    field and the first record without it. A path that does not exist raises ``FileNotFoundError``.
    ``load_kwargs`` go to ``datasets.load_dataset`` (``cache_dir``, ``revision``, ...).
    """
    import datasets

    if load_kwargs.get("streaming"):
        raise ValueError(
            "streaming=True is not supported: the records are checked and tokenised as a map-style datasets.Dataset."
        )
    required = EVAL_REQUIRED_FIELDS if require_answer else REQUIRED_FIELDS
    path = Path(source).expanduser()
    if path.exists():
        file = _json_file(path, split)
        try:
            dataset = datasets.load_dataset("json", data_files={split: str(file)}, split=split, **load_kwargs)
            check_records(dataset, required, source=str(file))
        except Exception as error:  # datasets' own errors do not name the file, or mislead (a StopIteration)
            problem = _diagnose(file)
            if problem:
                raise RecordError(f"{file}: {problem}") from error
            if isinstance(error, RecordError):
                raise
            raise RecordError(f"{file}: could not be read as LLM-Adapters records: {error!r}") from error
        return dataset
    if _looks_like_path(str(source)):
        raise FileNotFoundError(f"No such data file or directory: {str(source)!r}.")
    try:
        dataset = datasets.load_dataset(str(source), split=split, **load_kwargs)
    except (FileNotFoundError, ConnectionError) as error:
        raise FileNotFoundError(
            f"{str(source)!r} is not a local file or directory, and loading it as a Hub dataset failed: {error}"
        ) from error
    check_records(dataset, required, source=f"{source} [{split}]")
    return dataset


def _json_file(path: Path, split: str) -> Path:
    if path.is_file():
        if not path.name.endswith(JSON_SUFFIXES):
            raise ValueError(f"{str(path)!r}: expected a .json or .jsonl file of LLM-Adapters records.")
        return path
    for suffix in JSON_SUFFIXES:
        if (path / f"{split}{suffix}").is_file():
            return path / f"{split}{suffix}"
    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(JSON_SUFFIXES))
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(p.name for p in candidates) or "no JSON files"
    raise FileNotFoundError(
        f"{str(path)!r} has no {split}.json or {split}.jsonl, and not exactly one JSON file to use instead ({found})."
    )


def _diagnose(file: Path) -> str | None:
    """What is wrong with the file's structure (read only after loading failed), or None if nothing is."""
    text = file.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        return "the file is empty: no records."
    try:
        if file.name.endswith(".jsonl"):
            records = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        return f"line {number} is not valid JSON ({error.msg}: column {error.colno})."
        else:
            records = json.loads(text)
    except json.JSONDecodeError as error:
        return (
            f"not valid JSON ({error.msg}: line {error.lineno}, column {error.colno}); a truncated or "
            "partly written file?"
        )
    if isinstance(records, dict):
        return "holds one JSON object; expected a list of records (LLM-Adapters' format) or JSON lines."
    if not isinstance(records, list):
        return f"holds a JSON {type(records).__name__}; expected a list of records."
    if not records:
        return "holds an empty list: no records."
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            return f"record {index} is a {type(record).__name__} ({str(record)[:40]!r}), not a JSON object."
    return None


def _looks_like_path(source: str) -> bool:
    # A Hub id is "name" or "owner/name"; anything with a JSON suffix, a leading ./ ../ / ~, a backslash or more
    # than one "/" can only mean a local path, so a typo there gets a file error instead of a Hub lookup.
    return (
        source.endswith(JSON_SUFFIXES) or source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
    )
