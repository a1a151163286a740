"""Does the sweep's base learn the multiple-choice look-up, and when? Pre-trains a base as the sweep does
(``sweep.pretrain_base``, not cached) and prints, every ``--every`` steps, its accuracy on fresh quizzes
(``sweep.look_up``) and on quizzes that state their fact first (the pure look-up), beside guessing.

    python benchmarks/look_up_probe.py                          # the sweep's default base, measured as it learns
    python benchmarks/look_up_probe.py --only stated_quiz --steps 2500   # pre-train on stated quizzes alone
    python benchmarks/look_up_probe.py --bare 2 --steps 2500   # stated 2-option quizzes alone, no template
    python benchmarks/look_up_probe.py --look_up_steps 3000 --every 500   # the curriculum: bare look-up, then world
    python benchmarks/look_up_probe.py --look_up_steps 3000 --keep_look_up 0.3   # ... the world keeping the look-up

``--bare N`` pre-trains on stated quizzes of N options written without the prompt template ("the yak lives in the
city . where does the yak live ? Option1: forest Option2: city . option2"), about a third of the tokens of a
templated one, and measures the label the model predicts after such fresh quizzes (teacher-forced argmax).

A diagnostic (docs/benchmarks.md, "The paper in miniature"): it measures between the pre-training steps by
wrapping the batches that ``pretrain`` consumes, so the trained weights are those ``pretrain_base`` makes.
"""

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from harness import sweep, synthetic

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
p.add_argument(
    "--look_up_steps",
    type=int,
    default=sweep.BaseSettings.look_up_steps,
    help="a first phase on the pure look-up alone (World.look_up_document), before --steps of the world",
)
p.add_argument("--steps", type=int, default=sweep.BaseSettings.steps)
p.add_argument("--every", type=int, default=250, help="measure every this many steps")
p.add_argument("--learning_rate", type=float, default=sweep.BaseSettings.learning_rate)
p.add_argument("--head_dim", type=int, default=sweep.BaseSettings.head_dim)
p.add_argument("--kv_groups", type=int, default=sweep.BaseSettings.kv_groups)
p.add_argument("--only", choices=["quiz", "stated_quiz", "table"], help="pre-train on this one format alone")
p.add_argument("--bare", type=int, help="pre-train on stated quizzes of this many options without the template")
p.add_argument(
    "--keep_look_up",
    type=float,
    default=0.0,
    help="share of the world phase's documents that are the first phase's bare look-up (so it is not dropped)",
)
p.add_argument("--count", type=int, default=200, help="quizzes per measurement")
args = p.parse_args()

settings = sweep.BaseSettings(
    look_up_steps=args.look_up_steps,
    steps=args.steps,
    learning_rate=args.learning_rate,
    head_dim=args.head_dim,
    kv_groups=args.kv_groups,
)
world = sweep.World(settings.world_seed)
tokenizer = sweep.world_tokenizer(world)  # the default world's vocabulary, whatever --only pre-trains on
sweep.world_tokenizer = lambda world: tokenizer
if args.only:
    synthetic.World.pretraining_document = getattr(synthetic.World, f"_format_{args.only}")


def bare_quiz(world, rng, options):
    """A stated quiz of ``options`` options without the template, and its label."""
    while True:
        quiz, label = world.quiz(rng, stated=True)
        if quiz.count(": ") == options:
            return f"{quiz} .", label


def bare_accuracy(model, options):
    """% of fresh bare stated quizzes of ``options`` options whose label is the model's next-token argmax."""
    rng = random.Random("bare")
    quizzes = [bare_quiz(world, rng, options) for _ in range(args.count)]
    batch = tokenizer([q for q, _ in quizzes], return_tensors="pt", padding=True, padding_side="left")
    predicted = model(**batch).logits[:, -1].argmax(-1)
    labels = tokenizer.convert_tokens_to_ids([label for _, label in quizzes])
    return 100.0 * sum(p == t for p, t in zip(predicted.tolist(), labels)) / args.count


if args.bare:
    synthetic.World.pretraining_document = lambda self, rng: " ".join(bare_quiz(self, rng, args.bare))
if args.keep_look_up:
    world_document = synthetic.World.pretraining_document
    synthetic.World.pretraining_document = lambda self, rng: (
        self.look_up_document(rng) if rng.random() < args.keep_look_up else world_document(self, rng)
    )
pretrain = sweep.pretrain


class Measured:
    """The pre-training batches, measuring the model every ``args.every`` of them."""

    def __init__(self, model, batches):
        self.model, self.batches, self.start = model, batches, time.perf_counter()

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for step, batch in enumerate(self.batches):
            if step % args.every == 0:
                self.measure(step)
            yield batch
        self.measure(len(self.batches))

    def measure(self, step):
        self.model.eval()
        with torch.no_grad():
            if args.bare:
                accuracy = bare_accuracy(self.model, args.bare)
                print(f"step {step:5d}: bare {args.bare}-option stated quizzes {accuracy:5.1f}%", flush=True)
                return self.model.train()
            quiz, stated = (sweep.look_up(self.model, tokenizer, world, args.count, stated=s) for s in (0, 1))
            bare = bare_accuracy(self.model, 2)
        self.model.train()
        print(
            f"step {step:5d} ({time.perf_counter() - self.start:5.0f} s): quizzes {quiz['quiz']:5.1f}%, "
            f"stated {stated['quiz']:5.1f}% (guessing {quiz['chance']:.1f}%), bare 2-option {bare:5.1f}% "
            "(guessing 50%)",
            flush=True,
        )


def measured_pretrain(model, batches, optimizer, schedule, desc, progress):
    print(f"== {desc}: {len(batches)} steps", flush=True)
    return pretrain(model, Measured(model, batches), optimizer, schedule, desc, False)


sweep.pretrain = measured_pretrain
with tempfile.TemporaryDirectory() as tmp:
    path = sweep.pretrain_base(settings, Path(tmp) / "base", progress=False)
    print(f"knowledge: {sweep.base_report(path)['knowledge']}")
