"""The benchmark harnesses: their measuring tools against known answers, the method specs, the synthetic tasks'
answers against the world's facts, and a smoke run of each script at tiny sizes (no timing is asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from perft_peft import parameter_accounting
from perft_peft.bench.measure import count_flops, interleaved_times, paired_ratio, peak_memory
from perft_peft.bench.methods import parse_method
from perft_peft.bench.speed import ModelShape, matched_method, mixtral_shaped, shared_copy
from perft_peft.bench.synthetic import COLOURS, HOMES, TASKS, World
from perft_peft.evaluation import is_correct

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


def test_peak_memory_counts_live_storages_once_and_frees():
    def step():
        a = torch.ones(1024, 256)  # 1 MiB
        view = a[:10]  # no new storage
        b = a * 2  # 1 MiB more, peak 2 MiB
        del a, view
        c = b + 1  # a freed first: still 2 MiB
        return c.sum()  # 4 more bytes while b and c live

    assert peak_memory(step, CPU) == 2 * 2**20 + 4
    model = torch.nn.Linear(256, 256, bias=False)
    assert peak_memory(lambda: None, CPU, model) == 256 * 256 * 4


def test_flops_of_grouped_gemm_forward_and_backward():
    from transformers.integrations.moe import _grouped_mm

    x = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(4, 16, 32, requires_grad=True)
    offsets = torch.tensor([10, 30, 40, 64], dtype=torch.int32)
    grad = torch.randn(64, 16)

    def step():
        (_grouped_mm(x, w.transpose(1, 2), offsets) * grad).sum().backward()

    # forward, grad of x, grad of w: each 2 * 64 * 32 * 16
    assert count_flops(step) == 3 * 2 * 64 * 32 * 16
    assert count_flops(lambda: torch.randn(8, 4) @ torch.randn(4, 5)) == 2 * 8 * 4 * 5


def test_paired_ratio_and_rotation():
    assert paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0]) == (2.0, 2.0, 2.5)
    order = []
    times = interleaved_times({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 2, CPU)
    assert order == ["a", "b", "b", "a"] and all(len(t) == 2 for t in times.values())


@pytest.mark.parametrize("spec,label", [("R:r=4,M=8,K=2", "PERFT-R (Top2/8) r=4"), ("E:r=8", "PERFT-E r=8"),
                                        ("D:r=2,M=2", "PERFT-D (2) r=2"), ("lora_experts:r=1", "LoRA (experts) r=1"),
                                        ("loramoe:r=8,E=4", "LoRAMoE (q,v) E=4 r=8")])
def test_method_specs(spec, label):
    assert parse_method(spec).label == label


@pytest.mark.parametrize("spec,message", [("X:r=2", "Unknown method"), ("R:r=2,M=4", "needs K"),
                                          ("E:r=0", "positive integer"), ("S:r=2,M=3", "is not one of"),
                                          ("R:r=2,M=2,K=3", "top_k=3 is larger")])
def test_bad_method_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_method(spec)


def test_matched_rank_is_the_closest_and_shared_copy_shares_weights():
    base = mixtral_shaped(ModelShape(hidden_size=64, num_hidden_layers=1, vocab_size=64))
    clone = shared_copy(base)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(base.parameters(), clone.parameters()))
    ids = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(base(ids).logits, clone(ids).logits)

    def act(spec):
        return parameter_accounting(get_peft_model(shared_copy(base), parse_method(spec).config())).activated_trainable

    target = act("lora_attn:r=8")
    method = matched_method("R:M=8,K=2", base, target)
    chosen = act(method.spec)
    assert all(abs(chosen - target) <= abs(act(f"R:M=8,K=2,r={r}") - target) for r in range(1, 12))


def test_synthetic_answers_follow_the_world_and_splits_are_disjoint():
    world = World(0)
    assert not set(world.train_creatures) & set(world.test_creatures)
    assert not set(world.train_pairs) & set(world.test_pairs)
    for task in TASKS:
        for split, creatures, pairs in (("train", world.train_creatures, world.train_pairs),
                                        ("test", world.test_creatures, world.test_pairs)):
            for record in world.records(task.name, split, 40, seed=1):
                words = record["instruction"].split()
                assert is_correct(task.benchmark.extract(record["output"]), record["answer"],
                                  numeric=task.benchmark.numeric)
                if task.name in ("add", "two_step"):
                    a, b = int(words[2]), int(words[7])
                    assert (a, b) in pairs
                    c = int(words[12]) if task.name == "two_step" else 0
                    assert int(record["answer"]) == a + b - c
                    continue
                if task.name == "option":
                    options = [int(w) for w, prev in zip(words[1:], words) if prev.startswith("Option")]
                    pick = options[int(record["answer"][-1]) - 1]
                    assert pick == (max(options) if " more than " in record["instruction"] else min(options))
                    continue
                creature = next(w for w in words if w in creatures)
                colour, home, size = world.facts[creature]
                if task.name == "truefalse":
                    claimed = words[words.index(creature) + 1]
                    assert record["answer"] == ("true" if claimed in (colour, size) else "false")
                else:
                    prefix = task.benchmark.name == "piqa" and "Solution" or record["answer"][:-1].capitalize()
                    options = record["instruction"].split(f"{prefix}")[1:]
                    chosen = options[int(record["answer"][-1]) - 1]
                    truth = {"answer": colour}.get(task.name, home)
                    assert truth in chosen.split() and all(truth not in o.split() for o in options if o != chosen)
                    assert truth in (COLOURS if task.name == "answer" else HOMES)


def _run(args, timeout=900):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                            env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout


@pytest.mark.slow
def test_speed_script_smoke(tmp_path):
    output = tmp_path / "speed.md"
    _run(["benchmarks/speed.py", "--output", output, "--hidden_size", 64, "--layers", 1, "--seq_len", 16,
          "--batch_size", 2, "--vocab_size", 64, "--repeats", 2, "--warmup", 1, "--layer_hidden_size", 64,
          "--layer_intermediate_size", 32, "--layer_experts", 16, "--layer_top_k", 4, "--layer_tokens", 16,
          "--layer_repeats", 2, "--fusion_features", 32, "--fusion_tokens", 16, "--fusion_repeats", 2, "--loracoe_hidden_size", 64,
          "--loracoe_layers", 1, "--loracoe_repeats", 2])
    text = output.read_text()
    for label in ["LoRA (q,v) r=8", "PERFT-R (Top2/8)", "PERFT-E", "PERFT-D (2)", "PERFT-S", "LoRA (experts)",
                  "LoRACoE (q,v) E=2 r=8", "frozen block alone", "PERFT-R (Top8/64) r=8, sparse path", "| fused |",
                  "LoRACoE E=2 r=16", "LoRACoE r=16, warmup phase (no router)", "- Machine: CPU"]:
        assert label in text, label


@pytest.mark.slow
def test_paper_sweep_script_smoke_and_resume(tmp_path):
    args = ["benchmarks/paper_sweep.py", "--output", tmp_path / "sweep", "--cache_dir", tmp_path / "cache",
            "--methods", "R:M=4,K=1", "E", "lora_attn", "loracoe:r=4,E=2", "--ranks", 2, "--hidden_size", 32,
            "--layers", 1, "--base_steps", 3, "--max_steps", 2, "--train_per_task", 2, "--test_per_task", 2,
            "--batch_size", 4]
    _run(args)
    results = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["spec"] for r in results] == ["base", "R:M=4,K=1,r=2", "E:r=2", "lora_attn:r=2", "loracoe:r=4,E=2"]
    assert all(len(r["scores"]) == len(TASKS) for r in results)
    assert (tmp_path / "sweep.png").stat().st_size > 0
    table = (tmp_path / "sweep.md").read_text()
    assert "| Strategy | r | # Act. | % Act. | TF |" in table and "PERFT-R (Top1/4)" in table
    assert len(list((tmp_path / "cache").iterdir())) == 1
    _run(args + ["--methods", "E", "S"])  # resumes: E is not trained again (same record), S is
    again = json.loads((tmp_path / "sweep.json").read_text())
    assert again[:5] == results and again[5]["spec"] == "S:r=2" and len(again) == 6
