"""The paper sweep (``benchmarks/paper_sweep.py``): every method fine-tuned the same way on the same base model,
scored on held-out tasks, tabulated like the PERFT paper's Table 1 and plotted like its Figure 4, and the papers'
comparisons answered with intervals over seeds (``questions``).

Offline (the default), the base is a tiny Mixtral-shaped MoE pre-trained here on ``synthetic.World`` (cached on
disk, keyed by its settings and by the code and vocabulary that make it; ``knowledge`` measures what it knows)
and the tasks are the world's. With ``--model``, ``--data`` and ``--eval_data_dir``
the same loop fine-tunes a real model on LLM-Adapters data and scores the papers' benchmarks. Fine-tuning is
PerftTrainer (PERFT-R's balancing loss, LoRACoE's two phases); scoring is the evaluation module's generation and
answer extraction (accuracy) plus the teacher-forced mean NLL of the response tokens (loss).

The protocol (``run_sweep``): each method is trained at every learning rate of a small grid with seed
``results.GRID_SEED`` and scored on a validation split the test never sees; the rate with the best validation
score is chosen (``results.select``) and the method is trained again with the other seeds at that rate. Each
finished run is appended to a JSON file at once, so an interrupted sweep resumes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from perft_peft import plotting
from perft_peft.accounting import parameter_accounting
from perft_peft.data import generate_eval_prompt, generate_prompt, make_collator, tokenize_dataset, tokenize_example
from perft_peft.evaluation import ARITHMETIC, COMMONSENSE, generate_responses, score_benchmark
from perft_peft.pretraining import pretrain

from . import synthetic
from .methods import Method
from .results import GRID_SEED, append_records, canonical, fingerprint, load_records, run_key, select
from .synthetic import QUESTIONS, SPLITS, TASKS, World

# Every method of the questions (harness.questions), at the ranks that give PERFT-R (Top2/8), E, D and S
# the activated parameters of LoRA (q,v) r=8 on the default base (hidden 128): 3,584 per layer each.
DEFAULT_METHODS = [
    "R:M=8,K=2,r=5",
    "R:M=8,K=1,r=5",
    "R:M=8,K=4,r=5",
    "R:M=8,K=2,r=5,init=perft",
    "E:r=7",
    "D:M=2,r=7",
    "S:r=14",
    "lora_attn:r=8",
    "loracoe:r=8,E=1",
    "loracoe:r=8,E=2",
    "loracoe:r=8,E=2,router=off",
    "loracoe:r=8,E=4",
    "loramoe:r=8,E=4",
]
DEFAULT_RANKS = [8]  # for specs that name no r
# Budget (docs/benchmarks.md, "The paper in miniature"): 12 trained methods x (5 rates + 2 more seeds) = 84 runs
# of 300 steps; measured: 32-36 min of wall-clock with two one-thread processes on the two cores (72 core-minutes).
# The full run on 3e-3..3e-2 chose an edge for three methods (LoRA(q,v) and Top1/8 the lowest, S the highest),
# so the grid reaches one step further each way.
DEFAULT_LEARNING_RATES = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
DEFAULT_SEEDS = 3
KNOWLEDGE_AIM = 90.0  # % of the world's facts the base should answer before fine-tuning measures adaptation
LORACOE_JOINT_LR_FACTOR = 0.25  # LoRACoE paper: warmup at 2e-4, joint at 5e-5


@dataclass(frozen=True)
class BaseSettings:
    """The synthetic base model and its pre-training; the cache key."""

    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_experts: int = 8
    top_k: int = 2
    # 4 heads of 32 sharing 2 KV heads: the KV width (64) and so every adapter's size stay those of Mixtral's
    # ratios (1 KV head for 2 heads of 64), but there are twice as many attention patterns for the look-up
    head_dim: int = 32
    kv_groups: int = 2
    # a curriculum: first the pure look-up alone (World.look_up_document) with its own warmup and cosine schedule,
    # then the world's mixture for `steps`. Off by default: 3,000 such steps did not give the base the templated
    # look-up (docs/benchmarks.md, "Teaching the base the look-up")
    look_up_steps: int = 0
    steps: int = 2000
    batch_size: int = 16
    block_size: int = 128
    learning_rate: float = 3e-3
    world_seed: int = 0

    def key(self) -> str:
        """A hash of these settings and of everything else that makes the base: the world's code (synthetic.py),
        the vocabulary, the prompt template and the pre-training code."""
        tokenizer = world_tokenizer(World(self.world_seed))
        payload = {
            **asdict(self),
            "world": inspect.getsource(synthetic),
            "vocab": sorted(tokenizer.get_vocab()),
            "template": generate_prompt({"instruction": "{i}", "input": "", "output": "{o}"}),
            "pretraining": [inspect.getsource(f) for f in (_pretraining_blocks, pretrain_base, pretrain)],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FinetuneSettings:
    """Everything about a run but its learning rate and seed, which the protocol varies."""

    max_steps: int = 300
    num_train_epochs: float = 1.0  # used when max_steps is -1 (real runs)
    batch_size: int = 16
    warmup_fraction: float = 0.1
    cutoff_len: int = 128
    train_on_inputs: bool = False


def default_cache_dir() -> Path:
    return Path(os.environ.get("PERFT_PEFT_CACHE", Path.home() / ".cache" / "perft_peft")) / "paper_sweep"


# -- the synthetic base model ------------------------------------------------------------------------------------------


def world_tokenizer(world: World):
    """A word-level tokenizer over every word the world, its tasks and the LLM-Adapters templates use."""
    from perft_peft.data import tiny_word_tokenizer

    texts = world.pretraining_texts(3000, seed=0)
    texts += [
        generate_prompt({"instruction": q, "input": "", "output": a})
        for kind in QUESTIONS
        for q, a in world.facts_of(kind)
    ]
    for task in TASKS:
        for split in SPLITS:
            for record in world.records(task.name, split, 300, seed=0):
                texts += [generate_prompt(record), generate_eval_prompt(record["instruction"])]
    texts.append(" ".join(str(n) for n in range(0, 2 * 21)))
    return tiny_word_tokenizer(texts)


def _pretraining_blocks(world: World, tokenizer, settings: BaseSettings, seed: int, steps: int, document=None):
    """[steps * batch, block] token ids: documents (``World.pretraining_texts``) joined with EOS and cut into
    blocks, nanoGPT style."""
    needed = steps * settings.batch_size * settings.block_size
    stream: list[int] = []
    rng_seed = seed
    while len(stream) < needed:
        texts = world.pretraining_texts(20000, seed=rng_seed, document=document)
        for ids in tokenizer(texts)["input_ids"]:
            stream += ids + [tokenizer.eos_token_id]
        rng_seed += 1
    return torch.tensor(stream[:needed]).view(-1, settings.block_size)


def knowledge(model, tokenizer, world: World, batch_size: int = 128) -> dict[str, float]:
    """Accuracy (%) of the model on every fact of the world, asked as pre-training asks it (greedy, the first
    word of the response), per kind of knowledge (``synthetic.QUESTIONS``) and over all facts ("all")."""
    out, right, total = {}, 0, 0
    for kind in QUESTIONS:
        facts = world.facts_of(kind)
        responses = generate_responses(
            model,
            tokenizer,
            [q for q, _ in facts],
            num_beams=1,
            max_new_tokens=2,
            batch_size=batch_size,
            progress=False,
        )
        correct = sum(response.split()[:1] == [answer] for response, (_, answer) in zip(responses, facts))
        out[kind] = 100.0 * correct / len(facts)
        right, total = right + correct, total + len(facts)
    out["all"] = 100.0 * right / total
    return out


def look_up(
    model, tokenizer, world: World, count: int = 400, batch_size: int = 128, stated: bool = False
) -> dict[str, float]:
    """Accuracy (%) of the model on ``count`` fresh quizzes in its pre-training format (``World.quiz``: the last
    word of the greedy response is the label) and the accuracy of guessing: whether the base can pick the option
    that holds a fact, the skill the tasks' choices need. ``stated``: quizzes that say the fact first, so only
    the look-up is tested, not the recall."""
    rng = random.Random(f"look-up/{count}")
    quizzes = [world.quiz(rng, stated) for _ in range(count)]
    responses = generate_responses(
        model, tokenizer, [q for q, _ in quizzes], num_beams=1, max_new_tokens=5, batch_size=batch_size, progress=False
    )
    correct = sum(response.split()[-1:] == [label] for response, (_, label) in zip(responses, quizzes))
    chance = sum(1 / sum(word.endswith(":") and word[-2].isdigit() for word in q.split()) for q, _ in quizzes)
    return {"quiz": 100.0 * correct / count, "chance": 100.0 * chance / count}


def pretrain_base(settings: BaseSettings, path: Path, progress: bool = True) -> Path:
    """Pre-train the synthetic base on the world's knowledge (every weight, AdamW, cosine) and save it."""
    from transformers import get_cosine_schedule_with_warmup

    from .shapes import ModelShape, mixtral_shaped

    world = World(settings.world_seed)
    tokenizer = world_tokenizer(world)
    shape = ModelShape(
        settings.hidden_size,
        settings.num_hidden_layers,
        settings.num_experts,
        settings.top_k,
        seq_len=settings.block_size,
        vocab_size=len(tokenizer),
    )
    model = mixtral_shaped(shape, seed=settings.world_seed, head_dim=settings.head_dim, kv_groups=settings.kv_groups)
    model.config.update(
        dict(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model.generation_config.update(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    phases = [  # (name, steps, documents, seed of their stream)
        ("the look-up", settings.look_up_steps, world.look_up_document, settings.world_seed + 100_000),
        ("the world", settings.steps, None, settings.world_seed + 1),
    ]
    start = time.perf_counter()
    for name, steps, document, seed in phases:
        if steps:
            blocks = _pretraining_blocks(world, tokenizer, settings, seed, steps, document)
            schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
            loss = pretrain(
                model, blocks.split(settings.batch_size), optimizer, schedule, f"pre-train the base: {name}", progress
            )
    seconds = time.perf_counter() - start
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    report = {
        **asdict(settings),
        "final_loss": loss,
        "seconds": seconds,
        "knowledge": knowledge(model, tokenizer, world),
    }
    (path / "pretraining.json").write_text(json.dumps(report, indent=2))
    return path


def weights_digest(path: Path) -> str:
    """The first 12 hex digits of the sha256 of a cached base's weights. The cache key names the recipe, not the
    weights: pre-training is deterministic for one thread count on one machine, but another thread count (or
    CPU) gives other weights, so results are fingerprinted by this digest too."""
    digest = hashlib.sha256()
    with open(Path(path) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def base_report(path: Path) -> dict:
    """What pre-training wrote next to a cached base: its settings, time, final loss and ``knowledge``."""
    return json.loads((Path(path) / "pretraining.json").read_text())


def base_path(settings: BaseSettings, cache_dir: Path | None = None) -> Path:
    """Where the base for ``settings`` is cached (``cached_base``)."""
    return Path(cache_dir or default_cache_dir()) / settings.key()


def is_cached(path: Path) -> bool:
    """Whether a base is at ``path`` (``base_path``): ``cached_base`` moves a finished base there in one rename."""
    return (Path(path) / "config.json").is_file()


def cached_base(settings: BaseSettings, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """The pre-trained synthetic base for ``settings``: from the cache, or pre-trained now and cached."""
    path = base_path(settings, cache_dir)
    if not is_cached(path):
        with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmp:
            pretrain_base(settings, Path(tmp) / "model", progress)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / "model", path)  # atomic: a half-written base is never found in the cache
    return path


def synthetic_tasks(
    settings: BaseSettings, train_per_task: int, validation_per_task: int, test_per_task: int, seed: int = 0
):
    """(training records of all tasks, shuffled; {task: validation records}; {task: test records}), each split
    on its own creatures and number pairs."""
    world = World(settings.world_seed)
    train = [r for t in TASKS for r in world.records(t.name, "train", train_per_task, seed)]
    random.Random(seed).shuffle(train)
    return (
        train,
        {t: world.records(t.name, "validation", validation_per_task, seed) for t in TASKS},
        {t: world.records(t.name, "test", test_per_task, seed) for t in TASKS},
    )


# -- fine-tuning and scoring ------------------------------------------------------------------------------------------


def training_arguments(
    output_dir: str,
    method: Method,
    settings: FinetuneSettings,
    learning_rate: float,
    seed: int,
    steps_hint: int,
    progress: bool,
):
    from perft_peft.recipe_args import recipe_training_defaults
    from perft_peft.trainer import PerftTrainingArguments

    lr = learning_rate
    extra = {}
    if method.kind in ("loracoe", "loramoe"):
        extra = dict(loracoe_warmup_steps=steps_hint // 2, loracoe_warmup_learning_rate=lr)
        lr = lr * LORACOE_JOINT_LR_FACTOR
    return PerftTrainingArguments(
        **{
            **recipe_training_defaults(),  # what the recipes' data and devices need, as the recipes train
            **dict(
                output_dir=output_dir,
                max_steps=settings.max_steps,
                num_train_epochs=settings.num_train_epochs,
                per_device_train_batch_size=settings.batch_size,
                learning_rate=lr,
                lr_scheduler_type="cosine",
                warmup_steps=int(settings.warmup_fraction * steps_hint),
                weight_decay=0.0,
                logging_steps=10,
                save_strategy="no",
                report_to="none",
                seed=seed,
                disable_tqdm=not progress,
                **extra,
            ),
        }
    )


def finetune(
    model,
    method: Method,
    train_dataset,
    tokenizer,
    settings: FinetuneSettings,
    learning_rate: float,
    seed: int,
    progress: bool,
):
    """Train the adapter with PerftTrainer; returns the last logged training loss."""
    from perft_peft.trainer import PerftTrainer

    per_epoch = math.ceil(len(train_dataset) / settings.batch_size)
    steps = settings.max_steps if settings.max_steps > 0 else math.ceil(per_epoch * settings.num_train_epochs)
    with tempfile.TemporaryDirectory() as output_dir:
        args = training_arguments(output_dir, method, settings, learning_rate, seed, steps, progress)
        trainer = PerftTrainer(
            model=model,
            args=args,
            train_dataset=train_dataset,
            data_collator=make_collator(tokenizer),
            processing_class=tokenizer,
        )
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses[-1] if losses else None


@torch.no_grad()
def answer_loss(model, tokenizer, records: list[dict], cutoff_len: int, batch_size: int) -> float:
    """Mean NLL (nats per token) of each record's response tokens (its output and EOS) given its prompt, teacher
    forced: what training minimises, measured on held-out items; smooth where accuracy moves in steps."""
    features = [tokenize_example(r, tokenizer, cutoff_len, train_on_inputs=False) for r in records]
    collate = make_collator(tokenizer)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(features), batch_size):
            batch = collate(features[start : start + batch_size]).to(model.device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            total += torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="sum"
            ).item()
            count += int((labels != -100).sum())
    finally:
        model.train(was_training)
    return total / count


def score(
    model,
    tokenizer,
    tests: dict,
    *,
    greedy: bool,
    batch_size: int,
    max_new_tokens: dict[str, int] | None,
    cutoff_len: int,
) -> dict[str, dict[str, float]]:
    """Per task: accuracy (%; the evaluation module's ``score_benchmark`` with the task's benchmark: generate,
    extract the answer as that benchmark does, compare) and the answer loss (``answer_loss``)."""
    scores = {}
    for task, records in tests.items():
        benchmark = task.benchmark
        result = score_benchmark(
            model,
            tokenizer,
            benchmark,
            records,
            num_beams=1 if greedy else benchmark.num_beams,
            max_new_tokens=(max_new_tokens or {}).get(task.domain, benchmark.max_new_tokens),
            batch_size=batch_size,
            progress=False,
            desc=task.label,
        )
        scores[task.name] = {
            "accuracy": result.accuracy,
            "loss": answer_loss(model, tokenizer, records, cutoff_len, batch_size),
        }
    return scores


def expand(specs: list[str], ranks: list[int]) -> list[Method]:
    """The methods: each spec that names no r once per rank in ``ranks``."""
    from .methods import parse_method

    return list(dict.fromkeys(parse_method(spec, r) for spec in specs for r in ranks))


@dataclass(frozen=True)
class Protocol:
    """How many runs: the learning-rate grid (at seed GRID_SEED, judged on validation) and the seeds."""

    learning_rates: tuple[float, ...] = tuple(DEFAULT_LEARNING_RATES)
    seeds: int = DEFAULT_SEEDS

    def __post_init__(self):
        if not self.learning_rates or any(lr <= 0 for lr in self.learning_rates):
            raise ValueError(f"learning_rates must be positive and at least one, got {self.learning_rates}.")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}.")


def _record(
    method: Method | None,
    accounting,
    learning_rate,
    seed,
    validation,
    test,
    seconds,
    loss,
    scored_from: str | None = None,
) -> dict:
    if method is None:
        return dict(
            spec="base",
            group="base model",
            label="base model (no fine-tuning)",
            r=None,
            trainable=0,
            activated=0,
            pct_activated=0.0,
            learning_rate=None,
            seed=GRID_SEED,
            scored_from=None,
            validation=validation,
            test=test,
            train_seconds=0.0,
            final_loss=None,
        )
    return dict(
        spec=method.spec,
        group=method.group,
        label=method.label,
        r=method.r,
        trainable=accounting.trainable,
        activated=accounting.activated_trainable,
        pct_activated=accounting.pct_activated,
        learning_rate=learning_rate,
        seed=seed,
        scored_from=scored_from or method.spec,
        validation=validation,
        test=test,
        train_seconds=seconds,
        final_loss=loss,
    )


def run_sweep(
    methods: list[Method],
    load_base: Callable,
    tokenizer,
    train_records: list[dict],
    validation: dict,
    tests: dict,
    settings: FinetuneSettings,
    protocol: Protocol,
    results_path: Path,
    *,
    greedy: bool = True,
    eval_batch_size: int = 64,
    max_new_tokens: dict[str, int] | None = None,
    progress: bool = True,
    setup: dict | None = None,
) -> list[dict]:
    """The protocol (module docstring) over ``methods`` and the base model alone (spec "base"). Every finished
    run's records (its method's, and its ``router=off`` variant's when that is among ``methods``) are appended
    to ``results_path`` at once; runs already there (same spec, learning rate, seed) are kept, not re-run.
    ``setup`` names everything else that makes the numbers (base, data); with ``settings`` and the scoring options
    its fingerprint is stored in every record, and a results file of another set-up is refused, not resumed.
    Several processes may share ``results_path`` (``results.append_records``)."""
    from datasets import Dataset
    from peft import get_peft_model

    from perft_peft import set_loracoe_phase

    setup_id = fingerprint(dict(setup=setup, settings=asdict(settings), greedy=greedy, max_new_tokens=max_new_tokens))
    records = load_records(results_path, setup_id)
    done = {run_key(r) for r in records}
    dataset = tokenize_dataset(
        Dataset.from_list(train_records),
        tokenizer,
        cutoff_len=settings.cutoff_len,
        train_on_inputs=settings.train_on_inputs,
    )
    eval_args = dict(
        greedy=greedy, batch_size=eval_batch_size, max_new_tokens=max_new_tokens, cutoff_len=settings.cutoff_len
    )
    trained = list(dict.fromkeys(m.trained for m in methods))
    variants = {m: [v for v in methods if v.router_off and v.trained == m] for m in trained}

    def save(*new):
        for record in new:
            record["setup"] = setup_id
        records[:] = append_records(results_path, list(new))
        done.update(map(run_key, records))

    def run(method: Method, learning_rate: float, seed: int):
        done.update(map(run_key, load_records(results_path, setup_id)))  # another process's runs count too
        if all((canonical(m.spec), learning_rate, seed) in done for m in [method, *variants[method]]):
            return
        base = load_base()
        torch.manual_seed(seed)  # the adapter's initialisation; the Trainer seeds the data order
        model = get_peft_model(base, method.config())
        accounting = parameter_accounting(model)
        start = time.perf_counter()
        loss = finetune(model, method, dataset, tokenizer, settings, learning_rate, seed, progress=False)
        seconds = time.perf_counter() - start

        def scored(scored_as: Method, **extra):
            """The record of the model as it is now, scored on validation and test."""
            validation_scores = score(model, tokenizer, validation, **eval_args)
            test_scores = score(model, tokenizer, tests, **eval_args)
            return _record(
                scored_as, accounting, learning_rate, seed, validation_scores, test_scores, seconds, loss, **extra
            )

        new = [scored(method)]
        for variant in variants[method]:
            set_loracoe_phase(model, "warmup")  # the LoRACoE paper's inference without the router
            new.append(scored(variant, scored_from=method.spec))
        save(*new)

    if ("base", None, GRID_SEED) not in done:
        base = load_base()
        save(
            _record(
                None,
                None,
                None,
                GRID_SEED,
                score(base, tokenizer, validation, **eval_args),
                score(base, tokenizer, tests, **eval_args),
                0.0,
                None,
            )
        )
    plan = [(m, lr, GRID_SEED) for m in trained for lr in protocol.learning_rates]
    for method, lr, seed in tqdm(plan, desc="learning-rate grid", disable=not progress):
        run(method, lr, seed)
    chosen = select(records)
    plan = [
        (m, chosen[canonical(m.spec)].learning_rate, seed)
        for m in trained
        for seed in range(protocol.seeds)
        if seed != GRID_SEED
    ]
    for method, lr, seed in tqdm(plan, desc="seeds", disable=not progress):
        run(method, lr, seed)
    return records


# -- Table 1, Figure 4 and the answers ---------------------------------------------------------------------------------


def _domains(tasks) -> dict[str, list[str]]:
    """{"CR": commonsense task names, "AR": arithmetic ones} (where present) and "Avg.": all."""
    out = {
        name: [t.name for t in tasks if t.domain == domain]
        for domain, name in ((COMMONSENSE, "CR"), (ARITHMETIC, "AR"))
    }
    return {**{k: v for k, v in out.items() if v}, "Avg.": [t.name for t in tasks]}


def _ci(interval) -> str:
    return f"{interval.mean:.1f}" if interval.n < 2 else f"{interval.mean:.1f} ± {interval.half_width:.1f}"


def table(records: list[dict], tasks, methods: list[Method] | None = None) -> str:
    """Markdown shaped like the PERFT paper's Table 1 (strategy, # Act., % Act., per-task scores, averages), each
    score the mean over seeds ± the half-width of its 95% t-interval, plus the answer loss and the chosen rate."""
    from .report import markdown_table
    from .stats import t_interval

    selections = select(records)
    order = ["base", *(canonical(m.spec) for m in methods)] if methods else list(selections)
    domains = _domains(tasks)
    header = ["Strategy", "r", "# Act.", "% Act.", "lr", "seeds", *(t.label for t in tasks), *domains, "answer NLL"]
    rows = []
    for spec in (s for s in order if s in selections):
        sel = selections[spec]
        r = sel.record
        cells = [_ci(t_interval(list(sel.per_seed("accuracy", [t.name]).values()))) for t in tasks]
        means = [_ci(t_interval(list(sel.per_seed("accuracy", names).values()))) for names in domains.values()]
        nll = t_interval(list(sel.per_seed("loss").values()))
        rows.append(
            [
                r["label"].rsplit(" r=", 1)[0],
                r["r"] if r["r"] is not None else "-",
                f"{r['activated']:,}",
                f"{r['pct_activated']:.3f}",
                "-" if sel.learning_rate is None else f"{sel.learning_rate:g}",
                len(sel.runs),
                *cells,
                *means[:-1],
                f"**{means[-1]}**",
                f"{nll.mean:.3f}" if nll.n < 2 else f"{nll.mean:.3f} ± {nll.half_width:.3f}",
            ]
        )
    return markdown_table(header, rows)


def grid_table(records: list[dict]) -> str:
    """The learning-rate choice: each method's validation accuracy / loss (seed GRID_SEED) per rate."""
    from .report import markdown_table

    selections = {s: sel for s, sel in select(records).items() if sel.learning_rate is not None}
    rates = sorted({lr for sel in selections.values() for lr in sel.grid})
    rows = [
        [
            sel.record["label"],
            *(f"{sel.grid[lr][0]:.1f} / {sel.grid[lr][1]:.3f}" if lr in sel.grid else "-" for lr in rates),
            f"{sel.learning_rate:g}"
            + (
                " (grid edge: widen it)"
                if len(sel.grid) > 2 and sel.learning_rate in (min(sel.grid), max(sel.grid))
                else ""
            ),
        ]
        for sel in selections.values()
    ]
    return markdown_table(["Method", *(f"lr {lr:g}" for lr in rates), "chosen"], rows)


def answers_markdown(records: list[dict]) -> str:
    """The questions (``questions.QUESTIONS``), each comparison's paired intervals and verdicts."""
    from .questions import answer
    from .report import markdown_table

    lines, current = [], None
    rows = []
    for a in answer(records):
        if a.question is not current:
            if rows:
                lines += [markdown_table(_ANSWER_HEADER, rows), ""]
                rows = []
            current = a.question
            lines += [f"**{a.question.question}.** Paper: {a.question.claim}.", ""]
        note = " (# Act. differ: {:,} vs {:,})".format(*a.activated) if a.unequal_activation else ""
        rows.append(
            [
                f"`{a.comparison.a}` vs `{a.comparison.b}`{note}",
                a.comparison.expect,
                "-" if a.accuracy is None else str(a.accuracy),
                f"**{a.verdict}**",
                "-" if a.loss is None else f"{a.loss.mean:+.3f} [{a.loss.low:+.3f}, {a.loss.high:+.3f}]",
                a.loss_verdict,
            ]
        )
    if rows:
        lines.append(markdown_table(_ANSWER_HEADER, rows))
    return "\n".join(lines)


_ANSWER_HEADER = [
    "a vs b",
    "paper",
    "Δ accuracy a-b, points [95% CI]",
    "answer",
    "Δ answer NLL a-b [95% CI]",
    "the loss says",
]


def plot(records: list[dict], tasks, path: Path, title: str) -> None:
    """Figure 4's shape: average score (mean over seeds, 95% interval as error bar) against % Act. (log scale);
    colour = method family, marker size = r, hollow = scored differently from how it was trained (router off)."""
    from .stats import t_interval

    fig, ax = plotting.figure(size=(8, 5), layout="tight")
    selections = list(select(records).values())
    groups = list(dict.fromkeys(sel.record["group"] for sel in selections if sel.record["r"] is not None))
    colours = dict(zip(groups, plotting.colormap("tab10").colors))
    for sel in selections:
        interval = t_interval(list(sel.per_seed("accuracy").values()))
        record = sel.record
        if record["r"] is None:
            ax.axhline(interval.mean, color="grey", linestyle="--", linewidth=1)
            ax.annotate(
                "base model",
                (0.01, interval.mean),
                xycoords=("axes fraction", "data"),
                textcoords="offset points",
                xytext=(0, 4),
                color="grey",
                fontsize=8,
            )
            continue
        error = 0.0 if interval.n < 2 else interval.half_width
        ax.errorbar(
            record["pct_activated"],
            interval.mean,
            yerr=error,
            fmt="none",
            ecolor=colours[record["group"]],
            alpha=0.6,
            capsize=3,
        )
        hollow = record["scored_from"] != record["spec"]  # e.g. LoRACoE without its router at inference
        ax.scatter(
            record["pct_activated"],
            interval.mean,
            s=25 + 12 * record["r"],
            color="none" if hollow else colours[record["group"]],
            alpha=0.8,
            edgecolors=colours[record["group"]] if hollow else "black",
            linewidths=1.0 if hollow else 0.5,
        )
    for group, colour in colours.items():
        ax.scatter([], [], color=colour, label=group, s=60)
    ax.set_xscale("log")
    ax.set_xlabel("% activated trainable parameters (% Act., log scale)")
    ax.set_ylabel("average test accuracy over the tasks (%), 95% CI")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best", title="marker size = r", title_fontsize=8)
    ax.grid(alpha=0.3)
    plotting.save(fig, path)
