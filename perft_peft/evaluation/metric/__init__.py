"""The accuracy metric shipped as an `evaluate` module, loaded by path so it never touches the network.

``evaluate.load("accuracy")`` would fetch a script from the Hub; a local directory holding ``<name>/<name>.py``
is imported from disk instead (evaluate copies it into its modules cache, ``HF_MODULES_CACHE``).
"""

from __future__ import annotations

from pathlib import Path

METRIC_PATH = Path(__file__).resolve().parent / "llm_adapters_accuracy"


def load_accuracy_metric(numeric: bool):
    """The metric for numeric (arithmetic, config "number") or label tasks, kept in memory (no cache files)."""
    import evaluate

    return evaluate.load(str(METRIC_PATH), config_name="number" if numeric else "default", keep_in_memory=True)
