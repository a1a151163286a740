"""FSDP2 (torch's ``fully_shard``) on 2 CPU ranks (gloo): tiny PERFT-R and LoRACoE models train sharded, are saved
from a full state dict gathered to rank 0 through the path Trainer.save_model takes under FSDP
(``get_model_state_dict(full_state_dict=True, cpu_offload=True)`` -> ``PeftModel.save_pretrained(state_dict=...)``),
and reload onto a fresh base with the sharded model's logits. accelerate itself runs FSDP on GPUs only; on CPU the
recipes refuse an FSDP config instead of silently training with DDP.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # torchrun with 2 processes, and accelerate launch with 2 processes
ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
METHODS = ("perft", "loracoe")
PROBE = [[1, 5, 9, 13, 17, 21, 25, 29], [3, 4, 5, 6, 7, 8, 9, 10]]


def _config(method):
    from perft_peft import LoraCoeConfig, PerftConfig

    if method == "perft":
        return PerftConfig(variant="R", r=4, num_experts=4, top_k=2)
    return LoraCoeConfig(r=4, num_experts=2, target_modules=["q_proj", "v_proj", "up_proj"])


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out


@pytest.mark.parametrize("method", METHODS)
def test_sharded_training_saves_a_full_adapter_that_reloads_exactly(trained, method):
    from peft import PeftModel
    from safetensors.torch import load_file

    from perft_peft.testing import tiny_moe

    report = json.loads((trained / f"{method}.json").read_text())
    # Sharded for real: every adapter tensor was a DTensor split over both ranks, so peft's own state dict (without
    # the gathering) would have saved DTensors...
    assert report["sharded"] and report["ungathered_is_dtensor"]
    assert report["losses"][-1] < report["losses"][0]
    saved = load_file(str(trained / method / "adapter_model.safetensors"))
    # ...and the saved tensors are the full ones, trained: B starts at zero (LoRACoE) or at ~1e-6 (PERFT's default
    # init_weights="perft"); four AdamW steps at lr 1e-2 move it by ~1e-2.
    assert {k: list(v.shape) for k, v in saved.items()} == report["full_shapes"]
    B = [v for k, v in saved.items() if k.endswith(("perft_B", "loracoe_B"))]
    assert B and all(v.abs().max() > 1e-3 for v in B)
    model = PeftModel.from_pretrained(tiny_moe("mixtral"), trained / method).eval()
    with torch.no_grad():
        logits = model(torch.tensor(PROBE)).logits
        base = tiny_moe("mixtral")(torch.tensor(PROBE)).logits
    sharded = load_file(str(trained / f"{method}_probe.safetensors"))["logits"]
    torch.testing.assert_close(logits, sharded, atol=1e-6, rtol=0)
    assert (logits - base).abs().max() > 1e-3, "the reloaded adapter changes the output"


def test_recipe_with_fsdp_config_on_cpu_stops_before_training(tmp_path):
    """The shipped FSDP2 config on this CPU machine: accelerate would train with DDP (distributed_type stays
    MULTI_CPU); the recipe stops on every rank with the reason, before loading the model."""
    out = tmp_path / "run"
    cmd = [
        "timeout",
        "280",
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        RECIPES / "configs" / "accelerate_fsdp2.yaml",
        "--num_processes",
        "2",
        RECIPES / "mixtral_perft_r.py",
        "--tiny",
        "--max_steps",
        "1",
        "--output_dir",
        out,
    ]
    result = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    message = (
        "launched with an FSDP accelerate config, but it runs on CPU processes (accelerate: distributed_type=MULTI_CPU)"
    )
    assert log.count(message) == 2, log[-4000:]
    assert "ready" not in log and not (out / "adapter_model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------- worker
# Run by torchrun on each rank.


def worker(out: Path) -> None:
    import torch.distributed as dist
    from peft import get_peft_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from perft_peft.testing import tiny_moe

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    torch.set_num_threads(1)
    for method in METHODS:
        model = get_peft_model(tiny_moe("mixtral"), _config(method))
        # As accelerate's TRANSFORMER_BASED_WRAP does: one unit per decoder layer (_no_split_modules), then the root.
        for layer in model.base_model.model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        adapter = {n: p for n, p in model.named_parameters() if p.requires_grad}
        sharded = all(isinstance(p, DTensor) and p.to_local().numel() < p.numel() for p in adapter.values())
        full_shapes = {n.replace(".default", ""): list(p.shape) for n, p in adapter.items()}
        optimizer = torch.optim.AdamW(adapter.values(), lr=1e-2)
        ids = torch.randint(3, 128, (4, 12), generator=torch.Generator().manual_seed(100 + rank))  # per rank
        model.train()
        losses = []
        for _ in range(4):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            probe = model(torch.tensor(PROBE)).logits
        ungathered = get_peft_model_state_dict(model)
        state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:  # what Trainer.save_model does under FSDP with FULL_STATE_DICT (Trainer._save)
            model.save_pretrained(out / method, state_dict=state_dict)
            save_file({"logits": probe.contiguous()}, out / f"{method}_probe.safetensors")
            report = {
                "sharded": sharded,
                "losses": losses,
                "full_shapes": full_shapes,
                "ungathered_is_dtensor": all(isinstance(v, DTensor) for v in ungathered.values()),
            }
            (out / f"{method}.json").write_text(json.dumps(report))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
