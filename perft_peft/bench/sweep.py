"""The paper sweep (``benchmarks/paper_sweep.py``): every method fine-tuned the same way on the same base model,
scored on held-out tasks, tabulated like the PERFT paper's Table 1 and plotted like its Figure 4.

Offline (the default), the base is a tiny Mixtral-shaped MoE pre-trained here on ``synthetic.World`` (cached on
disk, keyed by its settings) and the tasks are the world's. With ``--model``, ``--data`` and ``--eval_data_dir``
the same loop fine-tunes a real model on LLM-Adapters data and scores the papers' benchmarks. Fine-tuning is
PerftTrainer (PERFT-R's balancing loss, LoRACoE's two phases); scoring is the evaluation module's generation and
answer extraction. Each finished run is appended to a JSON file at once, so an interrupted sweep resumes.
"""

from __future__ import annotations

import hashlib
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

from ..accounting import parameter_accounting
from ..data import generate_eval_prompt, generate_prompt, make_collator, tokenize_dataset
from ..evaluation import ARITHMETIC, COMMONSENSE, generate_responses, is_correct
from .methods import Method
from .synthetic import TASKS, World

DEFAULT_METHODS = ["R:M=4,K=1", "R:M=8,K=2", "E", "D:M=2", "S", "lora_attn", "lora_router", "lora_experts",
                   "loracoe:r=8,E=2", "loramoe:r=8,E=4"]
DEFAULT_RANKS = [2, 8]
LORACOE_JOINT_LR_FACTOR = 0.25  # LoRACoE paper: warmup at 2e-4, joint at 5e-5


@dataclass(frozen=True)
class BaseSettings:
    """The synthetic base model and its pre-training; the cache key."""

    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_experts: int = 8
    top_k: int = 2
    steps: int = 600
    batch_size: int = 16
    block_size: int = 128
    learning_rate: float = 3e-3
    world_seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FinetuneSettings:
    max_steps: int = 300
    num_train_epochs: float = 1.0  # used when max_steps is -1 (real runs)
    batch_size: int = 16
    learning_rate: float = 1e-2
    warmup_fraction: float = 0.1
    cutoff_len: int = 128
    train_on_inputs: bool = False
    seed: int = 0


def default_cache_dir() -> Path:
    return Path(os.environ.get("PERFT_PEFT_CACHE", Path.home() / ".cache" / "perft_peft")) / "paper_sweep"


# -- the synthetic base model -------------------------------------------------------------------------------------------

def world_tokenizer(world: World):
    """A word-level tokenizer over every word the world, its tasks and the LLM-Adapters templates use."""
    from ..data import tiny_word_tokenizer

    texts = world.pretraining_texts(3000, seed=0)
    for task in TASKS:
        for split in ("train", "test"):
            for record in world.records(task.name, split, 300, seed=0):
                texts += [generate_prompt(record), generate_eval_prompt(record["instruction"])]
    texts.append(" ".join(str(n) for n in range(0, 2 * 21)))
    return tiny_word_tokenizer(texts)


def _pretraining_blocks(world: World, tokenizer, settings: BaseSettings, seed: int) -> torch.Tensor:
    """[steps * batch, block] token ids: documents joined with EOS and cut into blocks, nanoGPT style."""
    needed = settings.steps * settings.batch_size * settings.block_size
    stream: list[int] = []
    rng_seed = seed
    while len(stream) < needed:
        texts = world.pretraining_texts(20000, seed=rng_seed)
        for ids in tokenizer(texts)["input_ids"]:
            stream += ids + [tokenizer.eos_token_id]
        rng_seed += 1
    return torch.tensor(stream[:needed]).view(-1, settings.block_size)


def pretrain_base(settings: BaseSettings, path: Path, progress: bool = True) -> Path:
    """Pre-train the synthetic base on the world's knowledge (every weight, AdamW, cosine) and save it."""
    from transformers import get_cosine_schedule_with_warmup

    from ..testing import pretrain
    from .speed import ModelShape, mixtral_shaped

    world = World(settings.world_seed)
    tokenizer = world_tokenizer(world)
    shape = ModelShape(settings.hidden_size, settings.num_hidden_layers, settings.num_experts, settings.top_k,
                       seq_len=settings.block_size, vocab_size=len(tokenizer))
    model = mixtral_shaped(shape, seed=settings.world_seed)
    model.config.update(dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id))
    model.generation_config.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)
    blocks = _pretraining_blocks(world, tokenizer, settings, seed=settings.world_seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, settings.steps // 20), settings.steps)
    loss = pretrain(model, blocks.split(settings.batch_size), optimizer, schedule, "pre-train the synthetic base",
                    progress)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "pretraining.json").write_text(json.dumps({**asdict(settings), "final_loss": loss}, indent=2))
    return path


def cached_base(settings: BaseSettings, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """The pre-trained synthetic base for ``settings``: from the cache, or pre-trained now and cached."""
    path = Path(cache_dir or default_cache_dir()) / settings.key()
    if not (path / "config.json").is_file():
        with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmp:
            pretrain_base(settings, Path(tmp) / "model", progress)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / "model", path)  # atomic: a half-written base is never found in the cache
    return path


def synthetic_tasks(settings: BaseSettings, train_per_task: int, test_per_task: int, seed: int):
    """(training records of all tasks, shuffled; {task: test records})."""
    world = World(settings.world_seed)
    train = [r for t in TASKS for r in world.records(t.name, "train", train_per_task, seed)]
    random.Random(seed).shuffle(train)
    return train, {t: world.records(t.name, "test", test_per_task, seed) for t in TASKS}


# -- fine-tuning and scoring ------------------------------------------------------------------------------------------

@dataclass
class RunResult:
    spec: str
    group: str
    label: str
    r: int | None
    trainable: int
    activated: int
    pct_activated: float
    scores: dict[str, float]  # task name -> accuracy in %
    train_seconds: float
    final_loss: float | None


def training_arguments(output_dir: str, method: Method | None, settings: FinetuneSettings, steps_hint: int,
                       progress: bool):
    from ..trainer import PerftTrainingArguments

    lr = settings.learning_rate
    extra = {}
    if method is not None and method.kind in ("loracoe", "loramoe"):
        extra = dict(loracoe_warmup_steps=steps_hint // 2, loracoe_warmup_learning_rate=lr)
        lr = lr * LORACOE_JOINT_LR_FACTOR
    return PerftTrainingArguments(
        output_dir=output_dir, max_steps=settings.max_steps, num_train_epochs=settings.num_train_epochs,
        per_device_train_batch_size=settings.batch_size, learning_rate=lr, lr_scheduler_type="cosine",
        warmup_steps=int(settings.warmup_fraction * steps_hint), weight_decay=0.0, logging_steps=10,
        save_strategy="no", report_to="none", seed=settings.seed, remove_unused_columns=False,
        disable_tqdm=not progress, use_cpu=not torch.cuda.is_available(), **extra)


def finetune(model, method: Method, train_dataset, tokenizer, settings: FinetuneSettings, progress: bool):
    """Train the adapter with PerftTrainer; returns the last logged training loss."""
    from ..trainer import PerftTrainer

    per_epoch = math.ceil(len(train_dataset) / settings.batch_size)
    steps = settings.max_steps if settings.max_steps > 0 else math.ceil(per_epoch * settings.num_train_epochs)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = PerftTrainer(model=model, args=training_arguments(output_dir, method, settings, steps, progress),
                               train_dataset=train_dataset, data_collator=make_collator(tokenizer),
                               processing_class=tokenizer)
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses[-1] if losses else None


def score(model, tokenizer, tests: dict, *, greedy: bool, batch_size: int, max_new_tokens: dict[str, int] | None,
          progress: bool) -> dict[str, float]:
    """Accuracy (%) per task: generate, extract the answer as the task's benchmark does, compare."""
    scores = {}
    for task, records in tests.items():
        benchmark = task.benchmark
        tokens = (max_new_tokens or {}).get(task.domain, benchmark.max_new_tokens)
        responses = generate_responses(model, tokenizer, [r["instruction"] for r in records],
                                       num_beams=1 if greedy else benchmark.num_beams, max_new_tokens=tokens,
                                       batch_size=batch_size, progress=progress, desc=task.label)
        correct = [is_correct(benchmark.extract(text), r["answer"], numeric=benchmark.numeric)
                   for text, r in zip(responses, records)]
        scores[task.name] = 100.0 * sum(correct) / len(correct)
    return scores


def expand(specs: list[str], ranks: list[int]) -> list[Method]:
    """The methods: each spec that names no r once per rank in ``ranks``."""
    from .methods import parse_method

    return list(dict.fromkeys(parse_method(spec, r) for spec in specs for r in ranks))


def run_sweep(methods: list[Method], load_base: Callable, tokenizer, train_records: list[dict], tests: dict,
              settings: FinetuneSettings, results_path: Path, *, greedy: bool = True, eval_batch_size: int = 64,
              max_new_tokens: dict[str, int] | None = None, progress: bool = True) -> list[RunResult]:
    """Fine-tune and score each method (and the base model alone, spec "base"), appending each result to
    ``results_path`` as it finishes; results already there for the same spec are kept, not re-run."""
    from datasets import Dataset
    from peft import get_peft_model

    done = {r["spec"]: RunResult(**r) for r in json.loads(results_path.read_text())} if results_path.exists() else {}
    dataset = tokenize_dataset(Dataset.from_list(train_records), tokenizer, cutoff_len=settings.cutoff_len,
                               train_on_inputs=settings.train_on_inputs)
    eval_args = dict(greedy=greedy, batch_size=eval_batch_size, max_new_tokens=max_new_tokens, progress=False)
    for method in tqdm([None, *methods], desc="sweep", disable=not progress):
        spec = "base" if method is None else method.spec
        if spec in done:
            continue
        base = load_base()
        if method is None:
            result = RunResult("base", "base model", "base model (no fine-tuning)", None, 0, 0, 0.0,
                               score(base, tokenizer, tests, **eval_args), 0.0, None)
        else:
            torch.manual_seed(settings.seed)
            model = get_peft_model(base, method.config())
            accounting = parameter_accounting(model)
            start = time.perf_counter()
            loss = finetune(model, method, dataset, tokenizer, settings, progress=False)
            seconds = time.perf_counter() - start
            result = RunResult(spec, method.group, method.label, method.r, accounting.trainable,
                               accounting.activated_trainable, accounting.pct_activated,
                               score(model, tokenizer, tests, **eval_args), seconds, loss)
        done[spec] = result
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps([asdict(r) for r in done.values()], indent=2))
    order = ["base", *(m.spec for m in methods)]
    return [done[spec] for spec in order]


# -- Table 1 and Figure 4 ---------------------------------------------------------------------------------------------

def averages(result: RunResult, tasks) -> dict[str, float]:
    """Per-domain means (CR, AR) where the domain has tasks, and the mean over all tasks."""
    out = {}
    for domain, name in ((COMMONSENSE, "CR"), (ARITHMETIC, "AR")):
        values = [result.scores[t.name] for t in tasks if t.domain == domain]
        if values:
            out[name] = sum(values) / len(values)
    out["Avg."] = sum(result.scores[t.name] for t in tasks) / len(tasks)
    return out


def table(results: list[RunResult], tasks) -> str:
    """Markdown shaped like the PERFT paper's Table 1: strategy, # Act., % Act., per-task scores, averages."""
    from .report import markdown_table

    header = ["Strategy", "r", "# Act.", "% Act.", *(t.label for t in tasks), *averages(results[0], tasks)]
    rows = [[r.label.rsplit(" r=", 1)[0], r.r if r.r is not None else "-", f"{r.activated:,}",
             f"{r.pct_activated:.3f}", *(f"{r.scores[t.name]:.1f}" for t in tasks),
             *(f"**{v:.1f}**" if k == "Avg." else f"{v:.1f}" for k, v in averages(r, tasks).items())]
            for r in results]
    return markdown_table(header, rows)


def plot(results: list[RunResult], tasks, path: Path, title: str) -> None:
    """Figure 4's shape: average score against % Act. (log scale); colour = method family, size = r."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    groups = sorted({r.group for r in results if r.r is not None}, key=[r.group for r in results].index)
    colours = dict(zip(groups, plt.get_cmap("tab10").colors))
    for result in results:
        if result.r is None:
            ax.axhline(averages(result, tasks)["Avg."], color="grey", linestyle="--", linewidth=1)
            ax.annotate("base model", (0.01, averages(result, tasks)["Avg."]), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(0, 4), color="grey", fontsize=8)
            continue
        ax.scatter(result.pct_activated, averages(result, tasks)["Avg."], s=25 + 12 * result.r,
                   color=colours[result.group], alpha=0.8, edgecolors="black", linewidths=0.5)
    for group, colour in colours.items():
        ax.scatter([], [], color=colour, label=group, s=60)
    ax.set_xscale("log")
    ax.set_xlabel("% activated trainable parameters (% Act., log scale)")
    ax.set_ylabel("average score over the tasks (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best", title="marker size = r", title_fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
