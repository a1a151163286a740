"""The LoRACoE paper's Figures 2 and 3 from rank_importance results (perft_peft.analysis.patterns): exact values on
importance written by hand, and a tiny LoRA with one rank zeroed, whose importance on that rank is known to be 0."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from perft_peft.analysis import (
    RankImportance,
    by_module_type,
    dimension_variance,
    plot_correlations,
    plot_dimension_variance,
    rank_correlation,
    rank_importance,
    task_correlation,
)

from .test_loracoe import tiny_llama

PNG = b"\x89PNG\r\n\x1a\n"


def per_rank_result(values, d_in=3, d_out=2):
    """A RankImportance whose per-rank importance is ``values`` (all of it in A's first column)."""
    A = torch.zeros(len(values), d_in)
    A[:, 0] = torch.tensor(values, dtype=torch.float32)
    return RankImportance(A={"m.q_proj": A}, B={"m.q_proj": torch.zeros(d_out, len(values))}, num_batches=1)


def test_dimension_variance_by_hand():
    r, d_in, d_out = 4, 3, 2
    level = torch.arange(1.0, r + 1)  # rank j has importance j + 1 everywhere: no spread along d_in / d_out
    A, B = level[:, None].expand(r, d_in).clone(), level[None, :].expand(d_out, r).clone()
    result = RankImportance(
        A={"l0.q_proj": A, "l1.q_proj": 2 * A}, B={"l0.q_proj": B, "l1.q_proj": 2 * B}, num_batches=1
    )
    variances = dimension_variance(result)
    # Divided by the mean 2.5: values (j + 1) / 2.5, variance over j = 1.25 / 6.25 = 0.2; none along d_in/d_out.
    for value in variances.values():
        assert value.rank == pytest.approx(0.2) and value.io == pytest.approx(0.0, abs=1e-12)
    assert by_module_type(variances)["q_proj"].rank == pytest.approx(0.2)  # scale-free: both layers alike

    # Spread only along d_in: the opposite.
    A = torch.tensor([[1.0, 3.0]]).expand(2, 2).clone()
    result = RankImportance(A={"m": A}, B={"m": torch.ones(2, 2)}, num_batches=1)
    value = dimension_variance(result)["m"]
    assert value.rank == pytest.approx(0.0, abs=1e-12) and value.io == pytest.approx((0.25 + 0) / 2)


def test_correlations_by_hand():
    results = {
        "t1": per_rank_result([1, 2, 3, 4]),
        "t2": per_rank_result([2, 4, 6, 8]),
        "t3": per_rank_result([4, 3, 2, 1]),
    }
    tasks = task_correlation(results, "m.q_proj")
    expected = torch.tensor([[1.0, 1, -1], [1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    torch.testing.assert_close(tasks, expected)
    ranks = rank_correlation(results, "m.q_proj")
    # Shares per task: [.1 .2 .3 .4], [.1 .2 .3 .4], [.4 .3 .2 .1]: every rank moves with rank 0 or against it.
    torch.testing.assert_close(
        ranks, torch.tensor([[1.0, 1, -1, -1], [1, 1, -1, -1], [-1, -1, 1, 1], [-1, -1, 1, 1]], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="at least 3 tasks"):
        rank_correlation({"t1": results["t1"], "t2": results["t2"]}, "m.q_proj")
    with pytest.raises(ValueError, match="No module 'm.v_proj'"):
        task_correlation(results, "m.v_proj")


def lora_with_rank_zeroed(rank=None):
    torch.manual_seed(0)
    model = get_peft_model(
        tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    if rank is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_A" in name:
                    p[rank] = 0
                elif "lora_B" in name:
                    p[:, rank] = 0
    return model


def task_batches(seed):
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": (x := torch.randint(3, 128, (2, 6), generator=gen)), "labels": x} for _ in range(2)]


def test_one_rank_zeroed_on_a_tiny_lora(tmp_path):
    zeroed = lora_with_rank_zeroed(rank=1)
    results = {f"task{seed}": rank_importance(zeroed, task_batches(seed), progress=False) for seed in (1, 2, 3)}
    for result in results.values():
        assert all(scores[1] == 0 and (scores[[0, 2, 3]] > 0).all() for scores in result.per_rank.values())
    # Concentrating importance on fewer ranks raises the rank variance against the input/output variance.
    full = dimension_variance(rank_importance(lora_with_rank_zeroed(), task_batches(1), progress=False))
    less = dimension_variance(results["task1"])
    assert all(less[m].rank / less[m].io > full[m].rank / full[m].io for m in full)

    module = "model.layers.0.self_attn.q_proj"
    tasks = task_correlation(results, module)
    torch.testing.assert_close(tasks.diagonal(), torch.ones(3, dtype=torch.float64))
    assert ((tasks >= -1 - 1e-9) & (tasks <= 1 + 1e-9)).all()
    ranks = rank_correlation(results, module)
    assert ranks[1].isnan().all() and ranks[:, 1].isnan().all()  # a rank with no importance correlates with nothing
    assert not ranks[[0, 2, 3]][:, [0, 2, 3]].isnan().any()

    for path in (
        plot_dimension_variance(results["task1"], tmp_path / "figure2.png"),
        plot_correlations(results, [module, "model.layers.1.self_attn.v_proj"], tmp_path / "figure3.png"),
    ):
        with open(path, "rb") as handle:
            assert handle.read(8) == PNG


def test_figures_command_on_a_tiny_adapter(tmp_path):
    """python -m perft_peft.analysis.figures --tiny on a saved LoRA over a tiny base with its tokenizer."""
    import json

    from perft_peft.analysis.figures import main
    from perft_peft.data import tiny_word_tokenizer
    from perft_peft.testing import tiny_moe

    tokenizer = tiny_word_tokenizer()
    base = tiny_moe("qwen2_moe", vocab_size=len(tokenizer), max_position_embeddings=256)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    base.name_or_path = str(tmp_path / "base")
    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p[:, 3] = 0
    lora.save_pretrained(tmp_path / "adapter")
    paths = main(
        [
            "--adapter",
            str(tmp_path / "adapter"),
            "--tiny",
            "--output_dir",
            str(tmp_path / "figures"),
            "--tasks",
            "boolq",
            "piqa",
            "gsm8k",
            "--max_records",
            "4",
        ]
    )
    for path in paths.values():
        with open(path, "rb") as handle:
            assert handle.read(8) == PNG
    summary = json.loads((tmp_path / "figures" / "importance.json").read_text())
    assert sorted(summary["tasks"]) == ["boolq", "gsm8k", "piqa"]
    for per_module in summary["tasks"].values():
        assert len(per_module) == 4 and all(v[3] == 0 and min(v[:3]) > 0 for v in per_module.values())
