"""A synthetic world for the paper sweep: pre-training knowledge for a tiny MoE, and held-out fine-tuning tasks in
the LLM-Adapters record format, shaped like the papers' two suites.

The world: creatures with a colour, a home and a size; small numbers (0..20) with their sums, differences and
order. Pre-training states those facts ("the fox is red .", "7 plus 5 is 12 .", "12 minus 5 is 7 .") and asks
every one of them as a plain question in the LLM-Adapters training template ("what is 12 minus 5 ?" -> "7"). It
also uses the facts in formats other than the tasks' own (``FORMATS``): multiple-choice quizzes that point at an
option by its label (every label family the tasks use, with any kind of question and any number of options),
claims marked true/false or correct/wrong, and stories of people counting things. So the base meets every word
of the tasks' responses and practises the look-up their choices need (``sweep.look_up`` measures whether it
learnt it) but none of the tasks' templates: fine-tuning should adapt a format, not teach new words.
``World.facts_of`` lists the questions: the sweep measures how many the base answers (its knowledge, in its
pre-training format). The tasks ask about the same facts in the formats of the papers' benchmarks, scored by the
same extractors (``perft_peft.evaluation``):

    truefalse  BoolQ's "Answer format: true/false"          ending   HellaSwag's ending1..ending4
    solution   PIQA's solution1/solution2                   option   WinoGrande's fill-the-blank option1/option2
    answer     SIQA/ARC/OBQA's answer1..answer3             add, two_step   word problems with a final number

Training, validation and test items use disjoint creatures and number pairs (all of whose facts are in
pre-training), so a test score says whether the adapter learnt the task, not the answers, and choosing a learning
rate on validation never looks at the test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from perft_peft.data import generate_prompt
from perft_peft.evaluation import ARITHMETIC, COMMONSENSE, Benchmark, get_benchmark

MAX_NUMBER = 20
COLOURS = ["red", "blue", "green", "yellow"]
HOMES = ["forest", "river", "city", "desert"]
SIZES = ["small", "big"]
CREATURES = [
    "fox",
    "owl",
    "cat",
    "dog",
    "bee",
    "eel",
    "elk",
    "yak",
    "ant",
    "bat",
    "cow",
    "hen",
    "pig",
    "rat",
    "ram",
    "emu",
    "frog",
    "goat",
    "hare",
    "lark",
    "mole",
    "moth",
    "newt",
    "seal",
    "swan",
    "toad",
    "wasp",
    "wolf",
    "crab",
    "deer",
    "duck",
    "lion",
    "mink",
    "puma",
    "orca",
    "kiwi",
    "ibis",
    "gnu",
    "koi",
    "lynx",
    "mule",
    "oryx",
    "pony",
    "quail",
    "robin",
    "shrew",
    "tiger",
    "viper",
]
PEOPLE = ["tom", "anna", "ben", "mia"]
SUMS = [(a, b) for a in range(MAX_NUMBER + 1) for b in range(MAX_NUMBER + 1 - a)]  # a + b <= MAX_NUMBER
DIFFERENCES = [(n, c) for n in range(MAX_NUMBER + 1) for c in range(n + 1)]
ORDERED = [(x, y) for x in range(MAX_NUMBER + 1) for y in range(MAX_NUMBER + 1) if x != y]
STATEMENTS = ("creature", "sum", "difference", "order")  # pre-training's plain statements
QUESTIONS = ("colour", "home", "size", "sum", "difference", "more")  # and its questions: the probed knowledge
# and the facts used in other formats than the tasks' (module docstring), with their weights in pre-training
FORMATS = {"quiz": 2, "stated_quiz": 2, "table": 4, "claim": 1, "story": 1}
LABELS = ("answer", "solution", "ending", "option")  # the label families of the tasks' choices
THINGS = ["apples", "coins", "books", "cards"]


@dataclass(frozen=True)
class Task:
    name: str
    label: str  # table column
    benchmark: Benchmark  # whose answer extractor and domain the task uses

    @property
    def domain(self) -> str:
        return self.benchmark.domain


TASKS = [
    Task("truefalse", "TF", get_benchmark("boolq")),
    Task("solution", "Sol", get_benchmark("piqa")),
    Task("answer", "Ans", get_benchmark("social_i_qa")),
    Task("ending", "End", get_benchmark("hellaswag")),
    Task("option", "Opt", get_benchmark("winogrande")),
    Task("add", "Add", get_benchmark("AddSub")),
    Task("two_step", "2-step", get_benchmark("MultiArith")),
]
assert {t.domain for t in TASKS} == {COMMONSENSE, ARITHMETIC}


SPLITS = {"train": 0.5, "validation": 0.2, "test": 0.3}  # shares of the creatures and of the number pairs


def _split(items: list) -> dict[str, list]:
    """``items`` cut into SPLITS' shares, in order."""
    out, start = {}, 0
    for i, (name, share) in enumerate(SPLITS.items()):
        end = len(items) if i == len(SPLITS) - 1 else start + round(share * len(items))
        out[name], start = items[start:end], end
    return out


class World:
    """Every fact of the world, drawn from ``seed``, and the disjoint train / validation / test splits of creatures
    and number pairs that the tasks ask about (pre-training states the facts of all of them)."""

    def __init__(self, seed: int = 0):
        rng = random.Random(seed)
        self.facts = {c: (rng.choice(COLOURS), rng.choice(HOMES), rng.choice(SIZES)) for c in CREATURES}
        creatures, pairs = list(CREATURES), list(SUMS)
        rng.shuffle(creatures)
        rng.shuffle(pairs)
        self.creatures = _split(creatures)
        self.pairs = _split(pairs)

    # -- pre-training -------------------------------------------------------------------------------------------

    def pretraining_document(self, rng: random.Random) -> str:
        """One statement, template-formatted question or other format (``FORMATS``) of the world's knowledge: every
        kind of statement and question equally likely, each format ``FORMATS[name]`` times as likely."""
        kinds = {**{f"_statement_{k}": 1 for k in STATEMENTS}, **dict.fromkeys(QUESTIONS, 1)}
        kinds.update({f"_format_{k}": weight for k, weight in FORMATS.items()})
        (kind,) = rng.choices(list(kinds), weights=list(kinds.values()))
        if kind.startswith("_"):
            return getattr(self, kind)(rng)
        question, answer = rng.choice(self.facts_of(kind))
        return generate_prompt({"instruction": question, "input": "", "output": answer})

    def _format_quiz(self, rng, stated: bool = False):
        question, label = self.quiz(rng, stated)
        return generate_prompt(
            {"instruction": question, "input": "", "output": rng.choice([label, f"the answer is {label}"])}
        )

    def _format_stated_quiz(self, rng):
        return self._format_quiz(rng, stated=True)

    def quiz(self, rng: random.Random, stated: bool = False, options: int | None = None) -> tuple[str, str]:
        """A fact asked with 2-4 labelled options (any label family; ``options``: that many) and the right option's
        label: pre-training's quizzes (``sweep.look_up`` asks fresh ones to see whether the base can pick an
        option). ``stated``: the fact is said first ("the yak lives in the city . where does the yak live ?
        Option1: ..."), so the quiz is a pure look-up (find the option that holds a word in the context, answer
        its label), without recall."""
        question, correct, statement, pool = rng.choice(self._facts(rng.choice(QUESTIONS + ("less",))))
        count = options or rng.randint(2, min(4, len(pool)))
        text, label = self._choice(rng, correct, pool, count, rng.choice(LABELS))
        return f"{statement + ' ' if stated else ''}{question} {text}", label

    def look_up_document(self, rng: random.Random) -> str:
        """The first phase of pre-training (``sweep.BaseSettings.look_up_steps``): a stated quiz of 2 options
        without the prompt template, then its label ("the yak lives in the city . where does the yak live ?
        Option1: forest Option2: city . option2"). The pure look-up, about three times as many a step as in
        templated quizzes: alone, the base learns it after a plateau of some 2,000 such steps, which the world's
        mixture never gets through (docs/benchmarks.md, "Teaching the base the look-up")."""
        quiz, label = self.quiz(rng, stated=True, options=2)
        return f"{quiz} . {label}"

    def _format_table(self, rng):
        """2-4 labelled options, then up to 6 questions whose answers they hold, each answered with its option's
        label ("Option1: forest Option2: city . where does the yak live ? option2 . where does the elk live ?
        option1 . ..."): the quizzes' look-up, many times a document."""
        facts = self._facts(rng.choice(QUESTIONS + ("less",)))
        values = sorted({value for *_, pool in facts for value in pool}, key=str)
        prefix = rng.choice(LABELS)
        options = rng.sample(values, rng.randint(2, min(4, len(values))))
        asked = [(q, a) for q, a, _, _ in facts if a in options]
        asked = rng.sample(asked, min(len(asked), rng.randint(3, 6)))
        lines = [f"{q} {prefix}{options.index(a) + 1} ." for q, a in asked]
        return " ".join([*(f"{prefix.capitalize()}{i + 1}: {o}" for i, o in enumerate(options)), ".", *lines])

    def _format_claim(self, rng):
        """A claim about a creature or a sum, marked true/false or correct/wrong."""
        creature = rng.choice(CREATURES)
        if rng.random() < 0.5:
            fact = rng.choice(self.facts[creature][::2])  # colour or size
            pool = COLOURS if fact in COLOURS else SIZES
            claimed = fact if rng.random() < 0.5 else rng.choice([v for v in pool if v != fact])
            claim, truth = f"the {creature} is {claimed}", claimed == fact
        else:
            a, b = rng.choice(SUMS)
            total = a + b if rng.random() < 0.5 else rng.choice([n for n in range(MAX_NUMBER + 1) if n != a + b])
            claim, truth = f"{a} plus {b} is {total}", total == a + b
        marks = rng.choice([("true", "false"), ("correct", "wrong")])
        return f"{claim} : {marks[0] if truth else marks[1]} ."

    @staticmethod
    def _format_story(rng):
        """People having, getting and giving things, with the counts said."""
        a, b = rng.choice(SUMS)
        person, other, thing = *rng.sample(PEOPLE, 2), rng.choice(THINGS)
        if rng.random() < 0.5:
            return f"{person} has {a} {thing} . {person} gets {b} more {thing} . now {person} has {a + b} {thing} ."
        return (
            f"{person} has {a + b} {thing} . {person} gives {b} {thing} to {other} . now {person} has {a} "
            f"{thing} . how many {thing} does {other} get ? {b}"
        )

    def pretraining_texts(self, count: int, seed: int, document=None) -> list[str]:
        """``count`` documents drawn by ``document(rng)`` (default: ``pretraining_document``)."""
        rng = random.Random(seed)
        document = document or self.pretraining_document
        return [document(rng) for _ in range(count)]

    def _statement_creature(self, rng):
        creature = rng.choice(CREATURES)
        colour, home, size = self.facts[creature]
        return f"the {creature} is {colour} . the {creature} lives in the {home} . the {creature} is {size} ."

    @staticmethod
    def _statement_sum(rng):
        a, b = rng.choice(SUMS)
        return f"{a} plus {b} is {a + b} ."

    @staticmethod
    def _statement_difference(rng):
        n, c = rng.choice(DIFFERENCES)
        return f"{n} minus {c} is {n - c} ."

    @staticmethod
    def _statement_order(rng):
        x, y = rng.choice(ORDERED)
        return f"{max(x, y)} is more than {min(x, y)} . {min(x, y)} is less than {max(x, y)} ."

    def facts_of(self, kind: str) -> list[tuple[str, str]]:
        """Every (question, one-word answer) of a kind of knowledge, as pre-training asks it in the template."""
        if kind not in QUESTIONS:
            raise ValueError(f"Unknown kind of knowledge {kind!r}; choose one of {', '.join(QUESTIONS)}.")
        return [(question, answer) for question, answer, _, _ in self._facts(kind)]

    def _facts(self, kind: str) -> list[tuple[str, str, str, list[str]]]:
        """(question, answer, the fact as a statement, the answer's alternatives) of every fact of a kind
        (``QUESTIONS`` or "less", which quizzes ask too)."""
        numbers = [str(n) for n in range(MAX_NUMBER + 1)]
        if kind in ("colour", "home", "size"):
            index = ("colour", "home", "size").index(kind)
            ask, say = {
                "colour": ("what colour is the {} ?", "the {} is {} ."),
                "home": ("where does the {} live ?", "the {} lives in the {} ."),
                "size": ("is the {} small or big ?", "the {} is {} ."),
            }[kind]
            pool = (COLOURS, HOMES, SIZES)[index]
            return [(ask.format(c), self.facts[c][index], say.format(c, self.facts[c][index]), pool) for c in CREATURES]
        if kind == "sum":
            return [(f"what is {a} plus {b} ?", str(a + b), f"{a} plus {b} is {a + b} .", numbers) for a, b in SUMS]
        if kind == "difference":
            return [
                (f"what is {n} minus {c} ?", str(n - c), f"{n} minus {c} is {n - c} .", numbers) for n, c in DIFFERENCES
            ]
        pick, other = (max, min) if kind == "more" else (min, max)
        return [
            (
                f"which is {kind} , {x} or {y} ?",
                str(pick(x, y)),
                f"{pick(x, y)} is {kind} than {other(x, y)} .",
                [str(x), str(y)],
            )
            for x, y in ORDERED
        ]

    # -- tasks ----------------------------------------------------------------------------------------------------

    def records(self, task: str, split: str, count: int, seed: int) -> list[dict]:
        """``count`` LLM-Adapters records of ``task`` on the ``split`` (one of SPLITS) creatures or pairs."""
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
        rng = random.Random(f"{task}/{split}/{seed}")
        make = getattr(self, f"_{task}")
        return [make(rng, self.creatures[split], self.pairs[split]) for _ in range(count)]

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
        claimed = (
            attribute
            if truth
            else rng.choice([v for v in (COLOURS if attribute in COLOURS else SIZES) if v != attribute])
        )
        answer = "true" if truth else "false"
        return self._record(
            f"Please answer the following question with true or false, question: is the "
            f"{creature} {claimed} ?\n\nAnswer format: true/false",
            f"the correct answer is {answer}",
            answer,
        )

    def _solution(self, rng, creatures, pairs):
        creature = rng.choice(creatures)
        home = self.facts[creature][1]
        options, answer = self._choice(rng, f"go to the {home} .", [f"go to the {h} ." for h in HOMES], 2, "solution")
        options = options.replace(" Solution2:", "\n\nSolution2:")
        return self._record(
            f"Please choose the correct solution to the question: how do you find the {creature} ?"
            f"\n\n{options}\n\nAnswer format: solution1/solution2",
            f"the correct answer is {answer}",
            answer,
        )

    def _answer(self, rng, creatures, pairs):
        creature = rng.choice(creatures)
        options, answer = self._choice(rng, self.facts[creature][0], COLOURS, 3, "answer")
        return self._record(
            f"Please choose the correct answer to the question: what colour is the {creature} ?"
            f"\n\n{options}\n\nAnswer format: answer1/answer2/answer3",
            f"the correct answer is {answer}",
            answer,
        )

    def _ending(self, rng, creatures, pairs):
        creature = rng.choice(creatures)
        options, answer = self._choice(rng, f"{self.facts[creature][1]} .", [f"{h} ." for h in HOMES], 4, "ending")
        return self._record(
            f"Please choose the correct ending to complete the given sentence: the {creature} lives "
            f"in the\n\n{options}\n\nAnswer format: ending1/ending2/ending3/ending4",
            f"the correct answer is {answer}",
            answer,
        )

    def _option(self, rng, creatures, pairs):
        a, b = rng.choice(pairs)
        low, high = min(a, b), max(a, b) + (a == b)
        word = rng.choice(["more", "less"])  # "_ is more than low": only high; "_ is less than high": only low
        correct, pivot = (high, low) if word == "more" else (low, high)
        options, answer = self._choice(rng, str(correct), [str(low), str(high)], 2, "option")
        return self._record(
            f"Please choose the correct answer to fill in the blank to complete the given sentence: "
            f"_ is {word} than {pivot} .\n\n{options} Answer format: option1/option2",
            f"the correct answer is {answer}",
            answer,
        )

    def _add(self, rng, creatures, pairs):
        a, b = rng.choice(pairs)
        person, thing = rng.choice(PEOPLE), rng.choice(THINGS)
        return self._record(
            f"{person} has {a} {thing} . {person} gets {b} more {thing} . how many {thing} does {person} have now ?",
            f"{a} plus {b} is {a + b} . the answer is {a + b}",
            str(a + b),
        )

    def _two_step(self, rng, creatures, pairs):
        a, b = rng.choice(pairs)
        c = rng.randint(0, a + b)
        person, other, thing = *rng.sample(PEOPLE, 2), rng.choice(THINGS)
        return self._record(
            f"{person} has {a} {thing} . {person} gets {b} more {thing} and gives {c} {thing} to "
            f"{other} . how many {thing} does {person} have now ?",
            f"{a} plus {b} is {a + b} . {a + b} minus {c} is {a + b - c} . the answer is {a + b - c}",
            str(a + b - c),
        )
