"""The papers' comparisons as questions, answered from a sweep's results with paired intervals over seeds.

Each comparison is two method specs a, b and what the paper says about them: ``"a>b"`` (a scores higher),
``"a<b"``, or ``"a=b"`` (no material difference: within ``EQUIVALENCE`` of each other). The deciding number is
the per-seed difference a - b of the test accuracy averaged over the tasks, with its 95% t-interval over the
seeds both ran (``stats.paired_interval``):

    "a>b" / "a<b"   the interval excludes 0 on the paper's side -> reproduces; on the other side -> contradicts
    "a=b"           the interval lies within +-EQUIVALENCE -> reproduces; it excludes 0 -> contradicts
    otherwise       cannot tell at this scale

The same rule applied to the answer loss (mean NLL, where lower is better, so the expected side flips) is
reported beside it: a smoother measurement, but the papers' claims are about accuracy, so accuracy decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from .results import Selection, canonical, select
from .stats import Interval, paired_interval

REPRODUCES, CONTRADICTS, CANNOT_TELL = "reproduces", "contradicts", "cannot tell at this scale"
EQUIVALENCE = {"accuracy": 2.0, "loss": 0.02}  # points of accuracy; nats per answer token
ACT_TOLERANCE = 0.1  # "equal activated parameters": # Act. within 10%


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    expect: str  # "a>b", "a<b" or "a=b", in accuracy

    def __post_init__(self):
        if self.expect not in ("a>b", "a<b", "a=b"):
            raise ValueError(f"expect must be 'a>b', 'a<b' or 'a=b', got {self.expect!r}.")


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    claim: str  # what the paper says, and where
    comparisons: tuple[Comparison, ...]
    equal_activated: bool = False  # the pairs are meant to activate the same number of trainable parameters


R = "R:M=8,K=2,r=5"  # PERFT-R (Top2/8); r = 5 activates as many parameters per token as LoRA (q,v) r=8 here
LORA = "lora_attn:r=8"
COE = "loracoe:r=8,E=2"
QUESTIONS = (
    Question(
        "perft_r_vs_lora",
        "PERFT-R vs LoRA on W_q, W_v at equal activated parameters",
        "PERFT-R outperforms LoRA (q,v) (PERFT §4.2, Table 1: by up to 17.2% CR / 12.3% AR on OLMoE)",
        (Comparison(R, LORA, "a>b"),),
        equal_activated=True,
    ),
    Question(
        "routed_dense_single",
        "Routed (R) vs dense (D) vs single (S) PEFT experts at equal activated parameters",
        "PERFT-R generally outperforms the other variants; PERFT-D and PERFT-S fail to yield "
        "competitive results (PERFT §4.2)",
        (Comparison(R, "D:M=2,r=7", "a>b"), Comparison(R, "S:r=14", "a>b")),
        equal_activated=True,
    ),
    Question(
        "topk_at_fixed_m",
        "PERFT-R across Top-K/M at a fixed total of M=8 experts (PERFT Figure 5)",
        "at a fixed total number of PEFT experts the gain from activating more is modest, and activating "
        "fewer does not severely degrade performance (PERFT §4.3, Figure 5)",
        (Comparison("R:M=8,K=2,r=5", "R:M=8,K=1,r=5", "a=b"), Comparison("R:M=8,K=4,r=5", R, "a=b")),
    ),
    Question(
        "perft_e_vs_r",
        "PERFT-E vs PERFT-R with the same total number of experts",
        "given the same total number of PEFT experts, PERFT-E consistently performs better than PERFT-R "
        "(PERFT §4.3, Figure 4a; shown there at Top8/64, here Top2/8)",
        (Comparison("E:r=7", R, "a>b"),),
        equal_activated=True,
    ),
    Question(
        "loracoe",
        "LoRACoE vs LoRA vs partition-LoRAMoE on W_q, W_v at equal rank; LoRACoE's E; its router at inference",
        "LoRACoE beats LoRA and the partition-based LoRAMoE (LoRACoE Table 1); more experts "
        "do not help significantly, and inference without the router costs a little, less than training "
        "without it (Table 2; E=1 is not in the paper)",
        (
            Comparison(COE, LORA, "a>b"),
            Comparison(COE, "loramoe:r=8,E=4", "a>b"),
            Comparison("loracoe:r=8,E=4", COE, "a=b"),
            Comparison(COE, "loracoe:r=8,E=1", "a=b"),
            Comparison(COE, f"{COE},router=off", "a>b"),
            Comparison(f"{COE},router=off", LORA, "a>b"),
        ),
    ),
    Question(
        "perft_init",
        "PERFT's two initialisations: the official code's vs this library's",
        "no published comparison; the official code (A ~ N(0, 2/r), B ~ 1e-6 N(0, 1)) moves faster at one "
        "learning rate than ours (Kaiming A, B = 0); with each one's rate tuned, expected: no difference",
        (Comparison(f"{R},init=perft", R, "a=b"),),
    ),
)


def verdict(interval: Interval, expect: str, margin: float) -> str:
    """The rule in the module docstring for a difference a - b where higher is better."""
    if expect == "a=b":
        if -margin < interval.low and interval.high < margin:
            return REPRODUCES
        return CONTRADICTS if interval.excludes_zero() else CANNOT_TELL
    if not interval.excludes_zero():
        return CANNOT_TELL
    return REPRODUCES if (interval.low > 0) == (expect == "a>b") else CONTRADICTS


@dataclass
class Answer:
    question: Question
    comparison: Comparison
    accuracy: Interval | None  # a - b, points
    loss: Interval | None  # a - b, nats per answer token (lower is better)
    verdict: str  # from accuracy
    loss_verdict: str
    activated: tuple[int, int] | None  # # Act. of a and b
    missing: tuple[str, ...] = ()

    @property
    def unequal_activation(self) -> bool:
        if not (self.question.equal_activated and self.activated):
            return False
        a, b = self.activated
        return abs(a - b) > ACT_TOLERANCE * max(a, b)


def answer(records: list[dict], questions=QUESTIONS) -> list[Answer]:
    """Every comparison of every question, answered from the results ``records`` (sweep JSON)."""
    selections = select(records)
    out = []
    for question in questions:
        for comparison in question.comparisons:
            found: list[Selection | None] = [selections.get(canonical(s)) for s in (comparison.a, comparison.b)]
            missing = tuple(s for s, f in zip((comparison.a, comparison.b), found) if f is None)
            if missing:
                out.append(
                    Answer(
                        question, comparison, None, None, f"not run ({', '.join(missing)})", "not run", None, missing
                    )
                )
                continue
            a, b = found
            accuracy = paired_interval(a.per_seed("accuracy"), b.per_seed("accuracy"))
            loss = paired_interval(a.per_seed("loss"), b.per_seed("loss"))
            gain = Interval(-loss.mean, -loss.high, -loss.low, loss.n)  # b - a: the loss a saves, higher is better
            out.append(
                Answer(
                    question,
                    comparison,
                    accuracy,
                    loss,
                    verdict(accuracy, comparison.expect, EQUIVALENCE["accuracy"]),
                    verdict(gain, comparison.expect, EQUIVALENCE["loss"]),
                    (a.record["activated"], b.record["activated"]),
                )
            )
    return out
