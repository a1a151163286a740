"""A synthetic world for the paper sweep: pre-training knowledge for a tiny MoE, and held-out fine-tuning tasks in
the LLM-Adapters record format, shaped like the papers' two suites.

The world: creatures with a colour, a home and a size; small numbers (0..20) with their sums, differences and
order. Pre-training states those facts ("the fox is red .", "7 plus 5 is 12 .") and answers plain questions in the
LLM-Adapters training template, so the base model knows the facts and the template but none of the tasks'
formats. The tasks ask about the same facts in the formats of the papers' benchmarks, scored by the same
extractors (``perft_peft.evaluation``):

    truefalse  BoolQ's "Answer format: true/false"          ending   HellaSwag's ending1..ending4
    solution   PIQA's solution1/solution2                   option   WinoGrande's fill-the-blank option1/option2
    answer     SIQA/ARC/OBQA's answer1..answer3             add, two_step   word problems with a final number

Test items use creatures and number pairs that fine-tuning never shows (their facts are in pre-training), so a
score says whether the adapter learnt the task, not the answers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..data import generate_prompt
from ..evaluation import ARITHMETIC, COMMONSENSE, Benchmark, get_benchmark

MAX_NUMBER = 20
COLOURS = ["red", "blue", "green", "yellow"]
HOMES = ["forest", "river", "city", "desert"]
SIZES = ["small", "big"]
CREATURES = ["fox", "owl", "cat", "dog", "bee", "eel", "elk", "yak", "ant", "bat", "cow", "hen", "pig", "rat",
             "ram", "emu", "frog", "goat", "hare", "lark", "mole", "moth", "newt", "seal", "swan", "toad", "wasp",
             "wolf", "crab", "deer", "duck", "lion"]
PEOPLE = ["tom", "anna", "ben", "mia"]
THINGS = ["apples", "coins", "books", "cards"]


@dataclass(frozen=True)
class Task:
    name: str
    label: str  # table column
    benchmark: Benchmark  # whose answer extractor and domain the task uses

    @property
    def domain(self) -> str:
        return self.benchmark.domain


TASKS = [Task("truefalse", "TF", get_benchmark("boolq")), Task("solution", "Sol", get_benchmark("piqa")),
         Task("answer", "Ans", get_benchmark("social_i_qa")), Task("ending", "End", get_benchmark("hellaswag")),
         Task("option", "Opt", get_benchmark("winogrande")), Task("add", "Add", get_benchmark("AddSub")),
         Task("two_step", "2-step", get_benchmark("MultiArith"))]
assert {t.domain for t in TASKS} == {COMMONSENSE, ARITHMETIC}


class World:
    """Every fact of the world, drawn from ``seed``, and the train / test split of creatures and number pairs."""

    def __init__(self, seed: int = 0):
        rng = random.Random(seed)
        self.facts = {c: (rng.choice(COLOURS), rng.choice(HOMES), rng.choice(SIZES)) for c in CREATURES}
        creatures = list(CREATURES)
        rng.shuffle(creatures)
        self.train_creatures, self.test_creatures = creatures[:20], creatures[20:]
        pairs = [(a, b) for a in range(MAX_NUMBER + 1) for b in range(MAX_NUMBER + 1 - a)]
        rng.shuffle(pairs)
        cut = len(pairs) * 2 // 3
        self.train_pairs, self.test_pairs = pairs[:cut], pairs[cut:]

    # -- pre-training -------------------------------------------------------------------------------------------

    def pretraining_document(self, rng: random.Random) -> str:
        """One statement or template-formatted question of the world's knowledge."""
        kind = rng.randrange(7)
        creature = rng.choice(CREATURES)
        colour, home, size = self.facts[creature]
        a, b = rng.choice(self.train_pairs + self.test_pairs)
        if kind == 0:
            return f"the {creature} is {colour} . the {creature} lives in the {home} . the {creature} is {size} ."
        if kind == 1:
            return f"{a} plus {b} is {a + b} . {a + b} minus {b} is {a} ."
        if kind == 2:
            x, y = rng.sample(range(MAX_NUMBER + 1), 2)
            return f"{max(x, y)} is more than {min(x, y)} . {min(x, y)} is less than {max(x, y)} ."
        question, answer = [
            (f"what colour is the {creature} ?", colour), (f"where does the {creature} live ?", home),
            (f"is the {creature} small or big ?", size), (f"what is {a} plus {b} ?", str(a + b)),
        ][kind - 3]
        return generate_prompt({"instruction": question, "input": "", "output": answer})

    def pretraining_texts(self, count: int, seed: int) -> list[str]:
        rng = random.Random(seed)
        return [self.pretraining_document(rng) for _ in range(count)]

    # -- tasks ----------------------------------------------------------------------------------------------------

    def records(self, task: str, split: str, count: int, seed: int) -> list[dict]:
        """``count`` LLM-Adapters records of ``task`` on the ``split`` ("train" / "test") creatures or pairs."""
        rng = random.Random(f"{task}/{split}/{seed}")
        creatures = self.train_creatures if split == "train" else self.test_creatures
        pairs = self.train_pairs if split == "train" else self.test_pairs
        make = getattr(self, f"_{task}")
        return [make(rng, creatures, pairs) for _ in range(count)]

    @staticmethod
    def _choice(rng, correct: str, others: list[str], n: int, prefix: str) -> tuple[str, str]:
        """n options (the correct one at a random place) as 'Prefix1: ... Prefix2: ...' and the gold label."""
        options = rng.sample([o for o in others if o != correct], n - 1)
        place = rng.randrange(n)
        options.insert(place, correct)
        text = " ".join(f"{prefix.capitalize()}{i + 1}: {o}" for i, o in enumerate(options))
        return text, f"{prefix}{place + 1}"

    @staticmethod
    def _record(instruction: str, output: str, answer: str) -> dict:
        return {"instruction": instruction, "input": "", "output": output, "answer": answer}

    def _truefalse(self, rng, creatures, pairs):
        creature = rng.choice(creatures)
        colour, home, size = self.facts[creature]
        attribute = rng.choice([colour, size])
        truth = rng.random() < 0.5
        claimed = attribute if truth else rng.choice([v for v in (COLOURS if attribute in COLOURS else SIZES)
                                                      if v != attribute])
        answer = "true" if truth else "false"
        return self._record(f"Please answer the following question with true or false, question: is the "
                            f"{creature} {claimed} ?\n\nAnswer format: true/false", f"the correct answer is {answer}",
                            answer)

    def _solution(self, rng, creatures, pairs):
        creature = rng.choice(creatures)
        home = self.facts[creature][1]
        options, answer = self._choice(rng, f"go to the {home} .", [f"go to the {h} ." for h in HOMES], 2,
                                       "solution")
        options = options.replace(" Solution2:", "\n\nSolution2:")
        return self._record(f"Please choose the correct solution to the question: how do you find the {creature} ?"
                            f"\n\n{options}\n\nAnswer format: solution1/solution2",
                            f"the correct answer is {answer}", answer)

    def _answer(self, rng, creatures, pairs):
        creature = rng.choice(creatures)
        options, answer = self._choice(rng, self.facts[creature][0], COLOURS, 3, "answer")
        return self._record(f"Please choose the correct answer to the question: what colour is the {creature} ?"
                            f"\n\n{options}\n\nAnswer format: answer1/answer2/answer3",
                            f"the correct answer is {answer}", answer)

    def _ending(self, rng, creatures, pairs):
        creature = rng.choice(creatures)
        options, answer = self._choice(rng, f"{self.facts[creature][1]} .", [f"{h} ." for h in HOMES], 4, "ending")
        return self._record(f"Please choose the correct ending to complete the given sentence: the {creature} lives "
                            f"in the\n\n{options}\n\nAnswer format: ending1/ending2/ending3/ending4",
                            f"the correct answer is {answer}", answer)

    def _option(self, rng, creatures, pairs):
        a, b = rng.choice(pairs)
        low, high = min(a, b), max(a, b) + (a == b)
        word = rng.choice(["more", "less"])  # "_ is more than low": only high; "_ is less than high": only low
        correct, pivot = (high, low) if word == "more" else (low, high)
        options, answer = self._choice(rng, str(correct), [str(low), str(high)], 2, "option")
        return self._record(f"Please choose the correct answer to fill in the blank to complete the given sentence: "
                            f"_ is {word} than {pivot} .\n\n{options} Answer format: option1/option2",
                            f"the correct answer is {answer}", answer)

    def _add(self, rng, creatures, pairs):
        a, b = rng.choice(pairs)
        person, thing = rng.choice(PEOPLE), rng.choice(THINGS)
        return self._record(f"{person} has {a} {thing} . {person} gets {b} more {thing} . how many {thing} does "
                            f"{person} have now ?", f"{a} plus {b} is {a + b} . the answer is {a + b}", str(a + b))

    def _two_step(self, rng, creatures, pairs):
        a, b = rng.choice(pairs)
        c = rng.randint(0, a + b)
        person, other, thing = *rng.sample(PEOPLE, 2), rng.choice(THINGS)
        return self._record(f"{person} has {a} {thing} . {person} gets {b} more {thing} and gives {c} {thing} to "
                            f"{other} . how many {thing} does {person} have now ?",
                            f"{a} plus {b} is {a + b} . {a + b} minus {c} is {a + b - c} . the answer is {a + b - c}",
                            str(a + b - c))
