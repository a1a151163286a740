"""The small data sets shipped inside the package, for tests and ``--tiny`` runs without a download.

``commonsense_tiny.json`` and ``math_tiny.json`` are training sets in the LLM-Adapters format (the formats of
commonsense_170k.json and math_50k.json); ``eval/<task>.json`` are 10-record test sets in the format of
LLM-Adapters' ``dataset/<task>/test.json``. Their contents were written for this package, not taken from the
real sets.
"""

from __future__ import annotations

from pathlib import Path

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"


def available_fixtures() -> list[str]:
    """Names accepted by :func:`fixture_path`, e.g. ``commonsense_tiny`` and ``eval/boolq``."""
    return sorted(p.relative_to(FIXTURES_DIR).with_suffix("").as_posix() for p in FIXTURES_DIR.rglob("*.json"))


def fixture_path(name: str) -> Path:
    """Path of a bundled fixture: ``"commonsense_tiny"``, ``"math_tiny.json"``, ``"eval/boolq"`` or just
    ``"boolq"`` (looked up under ``eval/`` too)."""
    stem = name[: -len(".json")] if name.endswith(".json") else name
    for candidate in (FIXTURES_DIR / f"{stem}.json", FIXTURES_DIR / "eval" / f"{stem}.json"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"No bundled fixture {name!r}; available: {', '.join(available_fixtures())}.")
