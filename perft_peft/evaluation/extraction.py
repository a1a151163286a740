"""Answer extraction and scoring, rule for rule as LLM-Adapters' evaluation scripts do it.

Source: AGI-Edgerunners/LLM-Adapters (``main``, 2024-03-10): ``commonsense_evaluate.py`` (``extract_answer``) and
``evaluate.py`` (``extract_answer_number``, ``extract_answer_letter`` and the ``miss = 0.001`` comparison). The
papers' numbers were computed with those rules, so their quirks are reproduced rather than fixed:

- label tasks take the *first* occurrence of any of the task's labels anywhere in the response, case-sensitively,
  even inside a longer word: "solution1 or solution2" counts as solution1, "untrue" as true, "Solution1" as
  nothing (""), which never scores;
- SIQA, ARC-e, ARC-c and OBQA share one pattern, answer1 ... answer5, whatever the number of choices, so for SIQA
  "answer4 or answer1" is answer4 (wrong), not answer1;
- numbers: commas are deleted first ("1,234" is 1234, but "3,4" is 34), then the *last* run of an optional minus,
  digits, an optional point and more digits is taken ("$5" is 5, "18." is 18, ".5" is 5, "5-3" ends in -3);
- AQuA takes the first capital A-E anywhere, inside words too ("Each box ... (C)" is E);
- a number is right when it is within 0.001 of the reference (``abs(prediction - reference) <= 0.001``), a label
  when it equals the reference.

The one difference is in representation and never changes a score: where they return ``inf`` (no number, or one
too large for a float) we return ``None``, which JSON can hold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# evaluate.py: ``miss = 0.001`` and ``abs(label - predict) <= miss``.
NUMBER_TOLERANCE = 1e-3

# Equivalent to evaluate.py's r'-?\d+\.?\d*' (after \d+ has taken every digit, \d* can only follow the point).
_NUMBER = re.compile(r"-?\d+(?:\.\d*)?")


@dataclass(frozen=True)
class FirstOf:
    """Extracts the first of ``choices`` found anywhere in a response (case-sensitive), or "" if there is none.

    As ``re.findall('a|b|...', response)[0]`` in LLM-Adapters: the leftmost occurrence wins, and at one position
    the earlier choice. A frozen dataclass rather than a closure so a benchmark prints its rule.
    """

    choices: tuple[str, ...]

    def __call__(self, response: str) -> str:
        match = re.search("|".join(map(re.escape, self.choices)), response)
        return match.group(0) if match else ""


def last_number(response: str) -> float | None:
    """The last number in a response, commas removed first, as a float; None if there is none (or it overflows)."""
    numbers = _NUMBER.findall(response.replace(",", ""))
    if not numbers:
        return None
    value = float(numbers[-1])
    return value if math.isfinite(value) else None


def _numbered(stem: str, count: int) -> tuple[str, ...]:
    return tuple(f"{stem}{i}" for i in range(1, count + 1))


TRUE_FALSE = FirstOf(("true", "false"))  # BoolQ
SOLUTION = FirstOf(_numbered("solution", 2))  # PIQA
ANSWER = FirstOf(_numbered("answer", 5))  # SIQA, ARC-e, ARC-c, OBQA: one pattern in LLM-Adapters
ENDING = FirstOf(_numbered("ending", 4))  # HellaSwag
OPTION = FirstOf(_numbered("option", 2))  # WinoGrande
OPTION_LETTER = FirstOf(tuple("ABCDE"))  # AQuA


def is_correct(
    prediction: str | float | None, reference: str | float, *, numeric: bool, tolerance: float = NUMBER_TOLERANCE
) -> bool:
    """Whether an extracted prediction scores: for numeric tasks a number within ``tolerance`` of the reference
    (which may be text such as "576.0", as in the test sets), else a label equal to the reference."""
    if numeric:
        return prediction is not None and abs(float(prediction) - float(reference)) <= tolerance
    return prediction == reference


def accuracy(
    predictions: Sequence, references: Sequence, *, numeric: bool, tolerance: float = NUMBER_TOLERANCE
) -> dict:
    """``{"accuracy": fraction correct, "correct": n, "total": n}``; the metric module's computation."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    if not references:
        raise ValueError("No predictions to score.")
    correct = sum(is_correct(p, r, numeric=numeric, tolerance=tolerance) for p, r in zip(predictions, references))
    return {"accuracy": correct / len(references), "correct": correct, "total": len(references)}
