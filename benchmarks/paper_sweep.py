"""The PERFT comparison in miniature, made to answer: every method fine-tuned the same way on the same MoE base,
its learning rate chosen from a grid on a validation split, several seeds, scored on held-out tasks; a
Table-1-shaped table (mean ± 95% CI), a Figure-4-shaped plot with error bars, and the papers' comparisons answered
("reproduces" / "contradicts" / "cannot tell at this scale") with paired intervals (benchmarks/harness/questions.py).

    python benchmarks/paper_sweep.py            # offline: synthetic tiny MoE + synthetic tasks, ~2 h on 2 CPUs
    python benchmarks/paper_sweep.py --quick    # the same, tiny and meaningless: a smoke run in seconds
    python benchmarks/paper_sweep.py --model allenai/OLMoE-1B-7B-0924 --data commonsense_170k.json \\
        --eval_data_dir LLM-Adapters/dataset --benchmarks boolq piqa social_i_qa hellaswag winogrande ARC-Easy \\
        ARC-Challenge openbookqa --max_steps -1 --epochs 3 --learning_rates 1e-5 2e-5 5e-5 --batch_size 16 \\
        --bf16 --output benchmarks/results/olmoe_commonsense    # the real experiment, on a GPU machine

Writes <output>.md (tables, answers, machine), <output>.png (plot) and <output>.json (every run, appended as it
finishes: rerunning resumes, a file of another set-up is refused; --fresh starts over). To use several cores,
pre-train the base first (--base_only), run one process per share of the methods (disjoint --methods, one
--output; they add to one file), then once with every method to write the whole report. How it works:
benchmarks/harness/sweep.py and synthetic.py.
"""

import argparse
from pathlib import Path

import torch

from harness import sweep
from harness.report import machine_lines
from harness.synthetic import Task
from perft_peft.evaluation import ARITHMETIC, COMMONSENSE

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
p.add_argument(
    "--output",
    default=str(Path(__file__).parent / "results" / "paper_sweep"),
    help="path prefix of the .md, .png and .json results",
)
p.add_argument("--fresh", action="store_true", help="ignore runs already in <output>.json")
p.add_argument(
    "--base_only",
    action="store_true",
    help="offline: pre-train (or find cached) the synthetic base, print what it knows, stop",
)
p.add_argument(
    "--quick",
    action="store_true",
    help="tiny sizes, few methods, 2 rates x 2 seeds: a smoke run (explicit flags still override)",
)
p.add_argument("--methods", nargs="+", default=sweep.DEFAULT_METHODS, help="method specs (harness/methods.py)")
p.add_argument("--ranks", nargs="+", type=int, default=sweep.DEFAULT_RANKS, help="r for specs that name none")
g = p.add_argument_group("protocol")
g.add_argument(
    "--learning_rates",
    nargs="+",
    type=float,
    default=sweep.DEFAULT_LEARNING_RATES,
    help="the grid each method's rate is chosen from, on the validation split (seed 0)",
)
g.add_argument("--seeds", type=int, default=sweep.DEFAULT_SEEDS, help="seeds 0..N-1 at the chosen rate")
g = p.add_argument_group("fine-tuning (every method alike)")
g.add_argument("--max_steps", type=int, default=sweep.FinetuneSettings.max_steps, help="-1: --epochs")
g.add_argument("--epochs", type=float, default=1.0)
g.add_argument("--batch_size", type=int, default=sweep.FinetuneSettings.batch_size)
g.add_argument("--cutoff_len", type=int, default=sweep.FinetuneSettings.cutoff_len)
g.add_argument("--eval_batch_size", type=int, default=64)
g.add_argument(
    "--validation_per_task",
    type=int,
    default=40,
    help="items per task to choose the rate on (real runs: taken off the front of each test set)",
)
g = p.add_argument_group("offline: the synthetic base and tasks")
g.add_argument("--hidden_size", type=int, default=sweep.BaseSettings.hidden_size)
g.add_argument("--layers", type=int, default=sweep.BaseSettings.num_hidden_layers)
g.add_argument(
    "--look_up_steps",
    type=int,
    default=sweep.BaseSettings.look_up_steps,
    help="pre-training steps on the pure look-up alone, before the world's mixture (0: none)",
)
g.add_argument("--base_steps", type=int, default=sweep.BaseSettings.steps, help="pre-training steps on the world")
g.add_argument("--base_learning_rate", type=float, default=sweep.BaseSettings.learning_rate)
g.add_argument("--train_per_task", type=int, default=400)
g.add_argument("--test_per_task", type=int, default=100)
g.add_argument(
    "--cache_dir",
    help="where pre-trained bases are kept (default: $PERFT_PEFT_CACHE or ~/.cache/perft_peft, under paper_sweep/)",
)
g = p.add_argument_group("real experiment (GPU)")
g.add_argument("--model", help="Hub id or directory of the base MoE; with --data and --eval_data_dir")
g.add_argument("--data", help="LLM-Adapters training file (commonsense_170k.json, math_10k.json) or Hub dataset")
g.add_argument("--eval_data_dir", help="LLM-Adapters dataset/ folder with <benchmark>/test.json")
g.add_argument("--benchmarks", nargs="+", help="benchmarks to score (default: all 14)")
g.add_argument("--bf16", action="store_true")


def real_setup(args):
    """Loader, tokenizer, training records and test sets of the real experiment."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from perft_peft.data import ensure_pad_token, load_llm_adapters_dataset
    from perft_peft.evaluation import resolve

    if not (args.data and args.eval_data_dir):
        p.error("--model needs --data (training set) and --eval_data_dir (LLM-Adapters dataset/ folder)")
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(args.model))
    dtype = torch.bfloat16 if args.bf16 else torch.float32

    def load_base():
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, device_map="auto")

    train = list(load_llm_adapters_dataset(args.data))
    validation, tests = {}, {}
    for b in resolve(args.benchmarks):
        task = Task(b.name, b.label, b)
        items = list(load_llm_adapters_dataset(b.data_path(args.eval_data_dir), split="test", require_answer=True))
        validation[task], tests[task] = items[: args.validation_per_task], items[args.validation_per_task :]
    data = dict(model=args.model, data=args.data, eval_data_dir=args.eval_data_dir, benchmarks=args.benchmarks)
    return load_base, tokenizer, train, validation, tests, args.model, None, dict(data, split=args.validation_per_task)


def synthetic_setup(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = sweep.BaseSettings(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        look_up_steps=args.look_up_steps,
        steps=args.base_steps,
        learning_rate=args.base_learning_rate,
    )
    results = Path(args.output).with_suffix(".json")
    if results.exists() and not (args.fresh or args.base_only):
        if not sweep.is_cached(sweep.base_path(base, args.cache_dir)):
            raise SystemExit(  # say so now, not after pre-training
                f"{results} holds runs on a pre-trained base that is not in this machine's cache. Pre-training "
                "it anew gives the same weights only on the same thread count and CPU; otherwise those runs are "
                "of another set-up and would be refused. Pass another --output to start a new results file, "
                "--fresh to replace these runs, or run --base_only first and then resume if its weights match."
            )
    path = sweep.cached_base(base, args.cache_dir)
    weights = sweep.weights_digest(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, validation, tests = sweep.synthetic_tasks(
        base, args.train_per_task, args.validation_per_task, args.test_per_task
    )
    report = sweep.base_report(path)
    knows = report["knowledge"]
    facts = ", ".join(f"{kind} {value:.1f}%" for kind, value in knows.items() if kind != "all")
    if knows["all"] < sweep.KNOWLEDGE_AIM:
        facts += (
            f"; BELOW the {sweep.KNOWLEDGE_AIM:.0f}% aim: the tasks partly test facts the base does not "
            "know, not only adaptation (more --base_steps)"
        )
    load_base = lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # noqa: E731
    quiz, stated = (sweep.look_up(load_base(), tokenizer, sweep.World(base.world_seed), stated=s) for s in (0, 1))
    facts += (
        f"; picks the right option of {quiz['quiz']:.1f}% of fresh quizzes in its pre-training format "
        f"(chance {quiz['chance']:.1f}%), of {stated['quiz']:.1f}% when the quiz states the fact first "
        f"(chance {stated['chance']:.1f}%)"
    )
    return (
        load_base,
        tokenizer,
        train,
        validation,
        tests,
        f"synthetic tiny Mixtral-shaped MoE (hidden {base.hidden_size}, {base.num_hidden_layers} layers, "
        f"{base.num_experts} experts top-{base.top_k}, pre-trained {base.steps} steps at lr "
        f"{base.learning_rate:g} in {report['seconds'] / 60:.1f} min; cache key {path.name}, weights {weights})",
        f"answers {knows['all']:.1f}% of the world's facts asked as in pre-training ({facts})",
        dict(
            base=path.name,
            weights=weights,
            per_task=(args.train_per_task, args.validation_per_task, args.test_per_task),
        ),
    )


QUICK = dict(
    methods=["R:M=8,K=2,r=5", "lora_attn:r=8", "loracoe:r=8,E=2", "loracoe:r=8,E=2,router=off"],
    learning_rates=[1e-3, 1e-2],
    seeds=2,
    hidden_size=32,
    layers=1,
    look_up_steps=2,
    base_steps=3,
    max_steps=2,
    train_per_task=2,
    validation_per_task=2,
    test_per_task=2,
    batch_size=4,
)


if __name__ == "__main__":
    args = p.parse_args()
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args()
    methods = sweep.expand(args.methods, args.ranks)
    load_base, tokenizer, train, validation, tests, base_name, knowledge, setup = (
        real_setup if args.model else synthetic_setup
    )(args)
    if args.base_only:
        print(f"Base model: {base_name}\nBase knowledge: {knowledge}")
        raise SystemExit
    settings = sweep.FinetuneSettings(
        max_steps=args.max_steps,
        num_train_epochs=args.epochs,
        batch_size=args.batch_size,
        cutoff_len=args.cutoff_len,
        train_on_inputs=bool(args.model),
    )
    protocol = sweep.Protocol(tuple(args.learning_rates), args.seeds)
    output = Path(args.output)
    results_path = output.with_suffix(".json")
    if args.fresh and results_path.exists():
        results_path.unlink()
    synthetic = not args.model
    records = sweep.run_sweep(
        methods,
        load_base,
        tokenizer,
        train,
        validation,
        tests,
        settings,
        protocol,
        results_path,
        greedy=synthetic,
        eval_batch_size=args.eval_batch_size,
        max_new_tokens={COMMONSENSE: 12, ARITHMETIC: 32} if synthetic else None,
        setup=setup,
    )
    tasks = list(tests)
    title = f"{'Synthetic tasks' if synthetic else base_name}: accuracy vs activated parameters"
    sweep.plot(records, tasks, output.with_suffix(".png"), title)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # a router=off record is a second scoring of its method's run: its training is counted once
    hours = sum(r["train_seconds"] for r in records if r["scored_from"] in (None, r["spec"])) / 3600
    text = "\n".join(
        [
            "# The PERFT comparison in miniature" if synthetic else f"# PERFT sweep on {base_name}",
            "",
            *machine_lines(device),
            f"- Base model: {base_name}",
            *([f"- Base knowledge: {knowledge}"] if knowledge else []),
            f"- Fine-tuning (every method): {settings}",
            f"- Protocol: learning rate chosen per method from {list(protocol.learning_rates)} on the validation split "
            f"(seed 0; best mean accuracy, ties: lower answer NLL), then seeds 0..{protocol.seeds - 1} at that rate; "
            f"{len(next(iter(validation.values())))} validation and {len(next(iter(tests.values())))} test items per "
            f"task, disjoint (synthetic: different creatures and number pairs); {hours:.2f} h of fine-tuning in total",
            "",
            "## Table 1 (test accuracy %, mean ± 95% CI half-width over seeds)",
            "",
            sweep.table(records, tasks, methods),
            "",
            f"![accuracy vs % Act.]({output.with_suffix('.png').name})",
            "",
            "# Act.: trainable parameters a token activates; % Act.: their share of the base model's activated "
            "parameters. Scores: accuracy (%) on held-out items, answers extracted as in LLM-Adapters; answer NLL: "
            "mean negative log-likelihood per response token, teacher-forced, averaged over the tasks.",
            "",
            "## The papers' comparisons",
            "",
            "Paired over seeds: a - b per seed, mean [95% t-interval]. Accuracy decides; the loss is shown beside it "
            "(benchmarks/harness/questions.py has the rule).",
            "",
            sweep.answers_markdown(records),
            "",
            "## Learning-rate grid (validation accuracy % / answer NLL, seed 0)",
            "",
            sweep.grid_table(records),
            "",
        ]
    )
    output.with_suffix(".md").write_text(text)
    print(text)
