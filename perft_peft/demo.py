"""`make demo`: PERFT-R end to end on a tiny Mixtral-shaped MoE, on CPU, in about a minute, with no download.

    python -m perft_peft.demo [--output_dir demo_output] [--steps 300] [--seed 0] [--family mixtral]

Read it top to bottom:

1. A word-level vocabulary (numbers 0..29 and a few words) and a synthetic world written in it.
2. Pre-train a tiny MoE language model (every weight, plain AdamW) on that world's "knowledge": counting,
   successors ("Q: what is after 7 ? A: 8") and addition ("Q: what is 5 plus 7 ? A: 12").
3. Fine-tune a PERFT-R adapter -- PEFT experts with their own top-K router, in parallel with every MoE block;
   peft freezes the base model -- on a held-out task that pre-training never shows: an instruction token the
   base has never seen, <next>, asks for the number after the answer: "<next> Q: what is 5 plus 7 ? A: 13"
   (the base model answers 12). As in LLM-Adapters, an instruction and a question go in and the answer is scored
   by exact match. The (a, b) pairs are split in two and the test half is never seen in fine-tuning, so test
   accuracy measures whether the adapter learnt the task, not the answers. As in the PERFT paper (OLMoE), the
   adapter's router gets a load-balancing loss with coefficient 0.01.
4. Evaluate before and after, save the adapter, reload it onto a fresh copy of the saved base model, and check
   that the reloaded model evaluates exactly like the one in memory.
"""

from __future__ import annotations

import argparse
import math
import random
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

# Importing perft_peft registers PERFT with peft: needed before get_peft_model and PeftModel.from_pretrained.
from perft_peft import PerftConfig, load_balancing_loss, parameter_accounting, pretraining
from perft_peft.data import tiny_word_tokenizer
from perft_peft.testing import TINY_FAMILIES, tiny_moe

# -- 1. the synthetic world ----------------------------------------------------------------------------------------

MAX_NUMBER = 29  # the numbers 0..29 are single tokens
WORDS = ["Q:", "A:", "what", "is", "after", "plus", "?", "count", "<next>"]  # <next> only in the held-out task
VOCAB = ["<pad>", "<s>", "</s>", *WORDS, *(str(n) for n in range(MAX_NUMBER + 1))]
TOKENIZER = tiny_word_tokenizer(vocabulary=VOCAB)
PAD, BOS, EOS = TOKENIZER.pad_token_id, TOKENIZER.bos_token_id, TOKENIZER.eos_token_id


def encode(text: str) -> list[int]:
    return TOKENIZER.encode(text, add_special_tokens=False)


# Every (a, b) whose a + b + 1 is still a number of the vocabulary: 435 pairs.
PAIRS = [(a, b) for a in range(MAX_NUMBER) for b in range(MAX_NUMBER - a)]


def successor(n: int) -> tuple[list[int], list[int]]:
    """Pre-training knowledge, as (prompt ids, answer ids)."""
    return [BOS] + encode(f"Q: what is after {n} ? A:"), encode(str(n + 1)) + [EOS]


def addition(a: int, b: int) -> tuple[list[int], list[int]]:
    """Pre-training knowledge: every pair's sum is in the pre-training corpus."""
    return [BOS] + encode(f"Q: what is {a} plus {b} ? A:"), encode(str(a + b)) + [EOS]


def held_out_task(a: int, b: int) -> tuple[list[int], list[int]]:
    """An addition question behind the instruction <next>: answer the number after the sum."""
    return [BOS] + encode(f"<next> Q: what is {a} plus {b} ? A:"), encode(str(a + b + 1)) + [EOS]


def pretraining_document(rng: random.Random) -> list[int]:
    kind = rng.random()
    if kind < 0.2:
        start = rng.randint(0, MAX_NUMBER - 5)
        return [BOS] + encode("count " + " ".join(str(n) for n in range(start, start + 6))) + [EOS]
    prompt, answer = successor(rng.randint(0, MAX_NUMBER - 1)) if kind < 0.4 else addition(*rng.choice(PAIRS))
    return prompt + answer


def pretraining_batch(rng: random.Random, batch_size: int, block_size: int) -> torch.Tensor:
    """nanoGPT style: each row is a stream of documents cut to block_size tokens (no padding needed)."""
    rows = []
    for _ in range(batch_size):
        stream = []
        while len(stream) < block_size:
            stream += pretraining_document(rng)
        rows.append(stream[:block_size])
    return torch.tensor(rows)


def split_pairs(seed: int, test_fraction: float = 0.5):
    """(fine-tuning pairs, test pairs) of the held-out task: disjoint, so test questions are never trained on."""
    pairs = list(PAIRS)
    random.Random(seed).shuffle(pairs)
    n_test = int(len(pairs) * test_fraction)
    return pairs[n_test:], pairs[:n_test]


def task_tensors(pairs, form=held_out_task) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and labels (-100 except on the answer tokens) of the questions `form(*pair)`."""
    rows = [form(*pair) for pair in pairs]
    length = max(len(prompt) + len(answer) for prompt, answer in rows)
    data = {
        "input_ids": torch.full((len(rows), length), PAD),
        "attention_mask": torch.zeros((len(rows), length), dtype=torch.long),
        "labels": torch.full((len(rows), length), -100),
    }
    for i, (prompt, answer) in enumerate(rows):
        n = len(prompt) + len(answer)
        data["input_ids"][i, :n] = torch.tensor(prompt + answer)
        data["attention_mask"][i, :n] = 1
        data["labels"][i, len(prompt) : n] = torch.tensor(answer)
    return data


# -- 2. the base model ---------------------------------------------------------------------------------------------

MODEL_SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3)  # 8 experts, top-2 (testing.py)


def build_model(family: str, seed: int):
    """A randomly initialised tiny MoE causal LM of `family`, a little larger than the unit-test models."""
    return tiny_moe(family, seed, **MODEL_SIZE, vocab_size=len(TOKENIZER), max_position_embeddings=64)


def warmup_cosine(optimizer, steps: int, warmup_fraction: float = 0.1):
    """Learning rate: linear warm-up over the first 10% of the steps, then cosine decay to zero."""
    warmup = max(1, int(steps * warmup_fraction))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / max(1, steps))))
    )


def pretrain(model, steps: int, seed: int, lr: float = 3e-3, batch_size: int = 32, block_size: int = 32):
    """Train every weight on the pre-training corpus; the loss includes the model's own router balancing loss."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    batches = [pretraining_batch(rng, batch_size, block_size) for _ in range(steps)]
    pretraining.pretrain(model, batches, optimizer, warmup_cosine(optimizer, steps), desc="pre-train the base model")
    return model


# -- 3. fine-tuning and evaluation ---------------------------------------------------------------------------------


def finetune(
    model,
    data: dict[str, torch.Tensor],
    steps: int,
    seed: int,
    lr: float,
    batch_size: int = 64,
    balance_coef: float = 0.01,
):
    """Train what peft left trainable (the adapter): answer loss + balance_coef * PERFT router balancing loss."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, steps)
    model.train()  # PERFT layers record their routing only in training mode
    for _ in (bar := tqdm(range(steps), desc="fine-tune the PERFT-R adapter")):
        rows = torch.randint(0, len(data["input_ids"]), (batch_size,), generator=generator)
        batch = {key: value[rows] for key, value in data.items()}
        task_loss = model(**batch).loss
        balance = load_balancing_loss(model, batch["attention_mask"])  # None for variants without a router
        loss = task_loss if balance is None else task_loss + balance_coef * balance
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{task_loss.item():.3f}", balance=f"{0 if balance is None else balance.item():.3f}")
    return model.eval()


@torch.no_grad()
def evaluate(model, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean loss over the answer tokens, and exact match: every answer token (the number and <eos>) is the
    model's top prediction -- the same as greedy decoding producing exactly the answer."""
    model.eval()
    logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits[:, :-1]
    labels = data["labels"][:, 1:]
    answer = labels != -100
    loss = F.cross_entropy(logits[answer], labels[answer]).item()
    exact = ((logits.argmax(-1) == labels) | ~answer).all(dim=1)
    return {"loss": loss, "accuracy": exact.float().mean().item()}


@torch.no_grad()
def answers(model, pairs, form=held_out_task) -> list[str]:
    """What the model answers by greedy generation (all prompts have the same length: no padding)."""
    prompts = torch.tensor([form(*pair)[0] for pair in pairs])
    out = model.generate(
        input_ids=prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=2,
        do_sample=False,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    return TOKENIZER.batch_decode(out[:, prompts.shape[1] :], skip_special_tokens=True)


# -- 4. putting it together ----------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m perft_peft.demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output_dir", default="demo_output", help="where the base model and the adapter go")
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps of the PERFT-R adapter")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak fine-tuning learning rate")
    parser.add_argument("--pretrain_steps", type=int, default=1000, help="pre-training steps of the base model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the initialisations and the batches")
    parser.add_argument(
        "--family",
        default="mixtral",
        choices=sorted(TINY_FAMILIES),
        help="transformers MoE family of the tiny base model",
    )
    return parser.parse_args(argv)


def run(args) -> dict:
    out = Path(args.output_dir)
    base_dir, adapter_dir = out / "base", out / "adapter"
    start = time.time()

    base = build_model(args.family, args.seed)
    layers = MODEL_SIZE["num_hidden_layers"]
    print(
        f"1. Base model: a tiny {type(base).__name__} ({layers} MoE layers, hidden size {MODEL_SIZE['hidden_size']}, "
        f"8 experts, top-2), {len(TOKENIZER)}-word vocabulary, {sum(p.numel() for p in base.parameters()):,} parameters"
    )
    print(f"2. Pre-training all its weights on counting, successors and addition ({args.pretrain_steps} steps)")
    base = pretrain(base, args.pretrain_steps, args.seed)
    base.save_pretrained(base_dir)
    train_pairs, test_pairs = split_pairs(args.seed)
    knows_addition = evaluate(base, task_tensors(test_pairs, addition))["accuracy"]
    knows_successor = evaluate(base, task_tensors([(n,) for n in range(MAX_NUMBER)], successor))["accuracy"]
    print(
        f"   It answers 'Q: what is a plus b ? A:' right for {knows_addition:.1%} of the test pairs (a, b) below, "
        f"'Q: what is after n ? A:' for {knows_successor:.1%} of the n."
    )

    train, test = task_tensors(train_pairs), task_tensors(test_pairs)
    prompt, answer = held_out_task(*test_pairs[0])
    print(
        f"3. Held-out task, e.g. '{TOKENIZER.decode(prompt + answer, skip_special_tokens=True)}': {len(train_pairs)} "
        f"pairs (a, b) to fine-tune on, {len(test_pairs)} others to test on"
    )
    base_result = evaluate(base, test)
    torch.manual_seed(args.seed)
    # peft LoRA's initialisation (B = 0): the fresh adapter computes exactly the base model, as shown below.
    model = get_peft_model(
        base, PerftConfig(variant="R", num_experts=4, top_k=2, r=8, lora_alpha=16, init_weights=True)
    )
    accounting = parameter_accounting(model)
    print(
        f"   PERFT-R adapter: 4 PEFT experts (rank 8) with their own top-2 router beside each of the {layers} MoE "
        f"blocks, base model frozen\n   {accounting}"
    )
    shown = test_pairs[:4]
    before, before_answers = evaluate(model, test), answers(model, shown)
    print(f"   Fine-tuning it ({args.steps} steps, peak lr {args.lr}, plus 0.01 x the router load-balancing loss)")
    model = finetune(model, train, args.steps, args.seed, lr=args.lr)
    after, after_answers = evaluate(model, test), answers(model, shown)

    model.save_pretrained(adapter_dir)
    reloaded = evaluate(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir), test)

    print(f"4. Test split: {len(test_pairs)} questions, none seen in fine-tuning")
    print(f"   {'':<38}{'loss':>7}{'accuracy':>10}")
    for name, result in [
        ("before fine-tuning (= the base model)", before),
        ("after fine-tuning PERFT-R", after),
        ("the saved adapter, reloaded", reloaded),
    ]:
        print(f"   {name:<38}{result['loss']:>7.3f}{result['accuracy']:>10.1%}")
    print(f"\n   {'question':<38}{'answer':<8}{'before':<8}after")
    for (a, b), old, new in zip(shown, before_answers, after_answers):
        print(f"   {TOKENIZER.decode(held_out_task(a, b)[0], skip_special_tokens=True):<38}{a + b + 1:<8}{old:<8}{new}")
    print(f"\n   Before fine-tuning, PERFT (B = 0) computes exactly the base model: {before == base_result}")
    print(f"   The reloaded adapter evaluates exactly like the one in memory: {reloaded == after}")
    print(
        f"Files: base model in {base_dir}/ ({', '.join(sorted(p.name for p in base_dir.iterdir()))}), adapter in "
        f"{adapter_dir}/ ({', '.join(sorted(p.name for p in adapter_dir.iterdir()))}). "
        f"Took {time.time() - start:.0f} s."
    )
    if reloaded != after:
        raise RuntimeError(f"The reloaded adapter evaluates differently: {reloaded} != {after}")
    return {
        "before": before,
        "after": after,
        "reloaded": reloaded,
        "base": base_result,
        "base_knows_addition": knows_addition,
        "base_knows_successor": knows_successor,
        "trainable": accounting.trainable,
        "activated_trainable": accounting.activated_trainable,
        "pct_activated": accounting.pct_activated,
        "base_dir": str(base_dir),
        "adapter_dir": str(adapter_dir),
    }


def main(argv=None) -> dict:
    """Run the demo; returns its metrics (loss and accuracy before, after and reloaded, parameter counts, paths)."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    # The model is so small that one thread is as fast as two, and one thread does not stall when other jobs
    # share the cores; it also makes the numbers independent of the machine's core count.
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            # peft 0.21 reads a transformers attribute that transformers 5 deprecated; nothing to act on here.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return run(args)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
