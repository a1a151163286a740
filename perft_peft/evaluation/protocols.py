"""Evaluation protocols: how a benchmark is prompted, how many tokens the model may answer with, and where in the
decoded text its answer is read.

``llm-adapters`` (the default) is LLM-Adapters' generic scripts, as ``benchmarks`` describes. ``perft`` is the
PERFT authors' (github liuyilun2000/PERFT), with which their tables were made:

- commonsense (``commonsense/commonsense_evaluate.py``, ``generate_prompt``, lines 171-190): LLM-Adapters'
  evaluation prompt with ``the correct answer is`` written after the response's 16-space indentation, so the
  model continues that sentence; at most 4 new tokens (``--max_new_tokens 4`` in
  ``commonsense/OLMoE-1B-7B.eval.sh``);
- every benchmark: the answer is the text after the *last* ``### Response:`` (``o.split("### Response:")[-1]``,
  ``commonsense/commonsense_evaluate.py`` line 117 and ``math/math_evaluate.py`` line 117), not the first;
- arithmetic otherwise as LLM-Adapters (``math/math_evaluate.py``: the same prompt, 4 beams, and 256 new tokens
  in ``math/OLMoE-1B-7B.eval.sh``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data import RESPONSE_MARKER, extract_response
from .tasks import ARITHMETIC, COMMONSENSE, MAX_NEW_TOKENS, Benchmark

PERFT_ANSWER_PREFIX = "the correct answer is"


@dataclass(frozen=True)
class Protocol:
    name: str
    # Per domain: text appended to the evaluation prompt, and the generation length.
    prompt_suffix: dict[str, str] = field(default_factory=dict)
    max_new_tokens: dict[str, int] = field(default_factory=lambda: dict(MAX_NEW_TOKENS))
    last_response: bool = False  # read the answer after the last marker (True) or the first (False)

    def suffix(self, benchmark: Benchmark) -> str:
        return self.prompt_suffix.get(benchmark.domain, "")

    def tokens(self, benchmark: Benchmark) -> int:
        return self.max_new_tokens[benchmark.domain]

    def response(self, decoded: str) -> str:
        """The model's answer in a decoded generation (prompt included), stripped."""
        if not self.last_response:
            return extract_response(decoded)
        if RESPONSE_MARKER not in decoded:
            raise ValueError(f"No {RESPONSE_MARKER!r} marker in the generated text: {decoded[:200]!r}")
        return decoded.rsplit(RESPONSE_MARKER, 1)[1].strip()


PROTOCOLS = {
    "llm-adapters": Protocol("llm-adapters"),
    "perft": Protocol(
        "perft",
        prompt_suffix={COMMONSENSE: PERFT_ANSWER_PREFIX},
        max_new_tokens={COMMONSENSE: 4, ARITHMETIC: MAX_NEW_TOKENS[ARITHMETIC]},
        last_response=True,
    ),
}
DEFAULT_PROTOCOL = "llm-adapters"


def get_protocol(name: str | Protocol) -> Protocol:
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise ValueError(f"Unknown evaluation protocol {name!r}; choose one of {', '.join(PROTOCOLS)}.")
    return PROTOCOLS[name]
