"""Which initialisation should PerftConfig default to? Both, at the paper's learning rate and at the sweep's.

    OMP_NUM_THREADS=1 python benchmarks/perft_init.py    # ~20 min on a shared 2-core CPU (11 pre-training, cached)
    python benchmarks/perft_init.py --methods R:M=8,K=2 --learning_rates 1e-5 2e-5 --max_steps 300

Fine-tunes PERFT adapters on the paper sweep's synthetic base and tasks (benchmarks/harness/sweep.py) with
``init_weights=True`` (peft LoRA's: Kaiming-uniform A, B = 0) and ``init_weights="perft"`` (the PERFT authors':
A ~ N(0, 2/r), B ~ 1e-6 N(0, 1)), everything else equal, and reports the held-out loss (teacher-forced, on the
answers of test items fine-tuning never saw), the last training loss and the held-out accuracy. Writes
<output>.md and <output>.json.
"""

import argparse
import dataclasses
import json
import math
from pathlib import Path

import torch

from harness import sweep
from harness.report import machine_lines

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
p.add_argument("--output", default=str(Path(__file__).parent / "results" / "perft_init"))
p.add_argument("--methods", nargs="+", default=["R:M=8,K=2,r=8", "S:r=8"])
p.add_argument("--inits", nargs="+", default=["True", "perft"])
p.add_argument(
    "--learning_rates",
    nargs="+",
    type=float,
    default=[1e-5, sweep.FinetuneSettings.learning_rate],
    help="the paper's OLMoE learning rate and the sweep's",
)
p.add_argument("--max_steps", type=int, default=200)
p.add_argument("--train_per_task", type=int, default=400)
p.add_argument("--test_per_task", type=int, default=30)
p.add_argument("--seed", type=int, default=0)


@torch.no_grad()
def heldout_loss(model, tokenizer, records, cutoff_len):
    """Mean token loss on the answers (prompt masked) of the test records, in the training template."""
    from datasets import Dataset

    from perft_peft.data import make_collator, tokenize_dataset

    dataset = tokenize_dataset(Dataset.from_list(records), tokenizer, cutoff_len=cutoff_len, train_on_inputs=False)
    collate = make_collator(tokenizer)
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(dataset), 32):
        batch = collate([dataset[i] for i in range(start, min(start + 32, len(dataset)))])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100
        )
        total, count = total + losses.sum().item(), count + (labels != -100).sum().item()
    return total / count


def main(args):
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from perft_peft.data import tokenize_dataset

    base_settings = sweep.BaseSettings()
    path = sweep.cached_base(base_settings)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, tests = sweep.synthetic_tasks(base_settings, args.train_per_task, args.test_per_task, args.seed)
    test_records = [r for records in tests.values() for r in records]
    finetune = sweep.FinetuneSettings(max_steps=args.max_steps, seed=args.seed)
    dataset = tokenize_dataset(
        Dataset.from_list(train), tokenizer, cutoff_len=finetune.cutoff_len, train_on_inputs=False
    )
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = [
        {
            "method": "base",
            "init": "-",
            "lr": None,
            "heldout_loss": heldout_loss(base, tokenizer, test_records, finetune.cutoff_len),
        }
    ]
    for spec in args.methods:
        method = sweep.expand([spec], [8])[0]
        for lr in args.learning_rates:
            for init in args.inits:
                init_weights = {"True": True, "False": False}.get(init, init)
                torch.manual_seed(args.seed)
                config = dataclasses.replace(method.config(), init_weights=init_weights)
                model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), config)
                settings = dataclasses.replace(finetune, learning_rate=lr)
                loss = sweep.finetune(model, method, dataset, tokenizer, settings, progress=False)
                scores = sweep.score(
                    model,
                    tokenizer,
                    tests,
                    greedy=True,
                    batch_size=64,
                    max_new_tokens={"commonsense": 12, "arithmetic": 32},
                    progress=False,
                )
                row = {
                    "method": method.label,
                    "init": init,
                    "lr": lr,
                    "train_loss": loss,
                    "heldout_loss": heldout_loss(model, tokenizer, test_records, finetune.cutoff_len),
                    "accuracy": sum(scores.values()) / len(scores),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    output = Path(args.output)
    output.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    lines = [
        "# PERFT initialisation at the paper's and the sweep's learning rate",
        "",
        *machine_lines(torch.device("cpu")),
        f"- Base: the paper sweep's synthetic MoE (cache key {base_settings.key()}); {args.max_steps} steps, "
        f"batch {finetune.batch_size}, cosine schedule, {args.test_per_task} test items per task",
        "",
        "| Method | init_weights | lr | held-out loss | last train loss | accuracy (%) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lr = "-" if row["lr"] is None else f"{row['lr']:g}"
        train_loss = row.get("train_loss")
        lines.append(
            f"| {row['method']} | {row['init']} | {lr} | {row['heldout_loss']:.4f} | "
            f"{'-' if train_loss is None or math.isnan(train_loss) else f'{train_loss:.4f}'} | "
            f"{row['accuracy']:.1f} |"
            if "accuracy" in row
            else f"| {row['method']} | - | - | {row['heldout_loss']:.4f} | - | - |"
        )
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(p.parse_args())
