"""The PERFT paper's comparison in miniature: PERFT variants x r x (M, K) and the baselines, fine-tuned the same
way on the same MoE base, scored on held-out tasks; a Table-1-shaped table and a Figure-4-shaped plot.

    python benchmarks/paper_sweep.py            # offline: synthetic tiny MoE + synthetic tasks, ~20 min on 2 CPUs
    python benchmarks/paper_sweep.py --model allenai/OLMoE-1B-7B-0924 --data commonsense_170k.json \\
        --eval_data_dir LLM-Adapters/dataset --benchmarks boolq piqa social_i_qa hellaswag winogrande ARC-Easy \\
        ARC-Challenge openbookqa --max_steps -1 --epochs 3 --learning_rate 1e-5 --batch_size 16 --bf16 \\
        --output benchmarks/results/olmoe_commonsense    # the real experiment, on a GPU machine

Writes <output>.md (table + machine), <output>.png (plot) and <output>.json (every run, appended as it finishes:
rerunning resumes; --fresh starts over). How it works: perft_peft/bench/sweep.py and perft_peft/bench/synthetic.py.
"""

import argparse
from pathlib import Path

import torch

from perft_peft.bench import sweep
from perft_peft.bench.report import machine_lines
from perft_peft.bench.synthetic import Task
from perft_peft.evaluation import ARITHMETIC, COMMONSENSE

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
p.add_argument("--output", default=str(Path(__file__).parent / "results" / "paper_sweep"),
               help="path prefix of the .md, .png and .json results")
p.add_argument("--fresh", action="store_true", help="ignore runs already in <output>.json")
p.add_argument("--methods", nargs="+", default=sweep.DEFAULT_METHODS, help="method specs (perft_peft.bench.methods)")
p.add_argument("--ranks", nargs="+", type=int, default=sweep.DEFAULT_RANKS, help="r for specs that name none")
g = p.add_argument_group("fine-tuning (every method alike)")
g.add_argument("--max_steps", type=int, default=sweep.FinetuneSettings.max_steps, help="-1: --epochs")
g.add_argument("--epochs", type=float, default=1.0)
g.add_argument("--batch_size", type=int, default=sweep.FinetuneSettings.batch_size)
g.add_argument("--learning_rate", type=float, default=sweep.FinetuneSettings.learning_rate)
g.add_argument("--cutoff_len", type=int, default=sweep.FinetuneSettings.cutoff_len)
g.add_argument("--seed", type=int, default=0)
g.add_argument("--eval_batch_size", type=int, default=64)
g = p.add_argument_group("offline: the synthetic base and tasks")
g.add_argument("--hidden_size", type=int, default=sweep.BaseSettings.hidden_size)
g.add_argument("--layers", type=int, default=sweep.BaseSettings.num_hidden_layers)
g.add_argument("--base_steps", type=int, default=sweep.BaseSettings.steps, help="pre-training steps")
g.add_argument("--train_per_task", type=int, default=400)
g.add_argument("--test_per_task", type=int, default=60)
g.add_argument("--cache_dir", help="where pre-trained bases are kept (default: $PERFT_PEFT_CACHE or "
                                   "~/.cache/perft_peft, under paper_sweep/)")
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
    tests = {Task(b.name, b.label, b): list(load_llm_adapters_dataset(b.data_path(args.eval_data_dir), split="test",
                                                                       require_answer=True))
             for b in resolve(args.benchmarks)}
    return load_base, tokenizer, train, tests, args.model


def synthetic_setup(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = sweep.BaseSettings(hidden_size=args.hidden_size, num_hidden_layers=args.layers, steps=args.base_steps)
    path = sweep.cached_base(base, args.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, tests = sweep.synthetic_tasks(base, args.train_per_task, args.test_per_task, args.seed)
    return (lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), tokenizer, train, tests,
            f"synthetic tiny Mixtral-shaped MoE (hidden {base.hidden_size}, {base.num_hidden_layers} layers, "
            f"{base.num_experts} experts top-{base.top_k}, pre-trained {base.steps} steps; cache key {base.key()})")


if __name__ == "__main__":
    args = p.parse_args()
    methods = sweep.expand(args.methods, args.ranks)
    load_base, tokenizer, train, tests, base_name = real_setup(args) if args.model else synthetic_setup(args)
    settings = sweep.FinetuneSettings(max_steps=args.max_steps, num_train_epochs=args.epochs,
                                      batch_size=args.batch_size, learning_rate=args.learning_rate,
                                      cutoff_len=args.cutoff_len, train_on_inputs=bool(args.model), seed=args.seed)
    output = Path(args.output)
    results_path = output.with_suffix(".json")
    if args.fresh and results_path.exists():
        results_path.unlink()
    synthetic = not args.model
    results = sweep.run_sweep(methods, load_base, tokenizer, train, tests, settings, results_path,
                              greedy=synthetic, eval_batch_size=args.eval_batch_size,
                              max_new_tokens={COMMONSENSE: 12, ARITHMETIC: 32} if synthetic else None)
    tasks = list(tests)
    title = f"{'Synthetic tasks' if synthetic else base_name}: score vs activated parameters"
    sweep.plot(results, tasks, output.with_suffix(".png"), title)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = "\n".join([
        "# The PERFT comparison in miniature" if synthetic else f"# PERFT sweep on {base_name}", "",
        *machine_lines(device), f"- Base model: {base_name}",
        f"- Fine-tuning (every method): {settings}", f"- Test items per task: {len(next(iter(tests.values())))}",
        "", sweep.table(results, tasks), "", f"![score vs % Act.]({output.with_suffix('.png').name})", "",
        "# Act.: trainable parameters a token activates; % Act.: their share of the base model's activated "
        "parameters. Scores: accuracy (%) on held-out items, answers extracted as in LLM-Adapters.", ""])
    output.with_suffix(".md").write_text(text)
    print(text)
