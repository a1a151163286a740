"""Faults during a run (issue 14): other runs' checkpoints, interrupted saves, NaN, two runs in one folder,
resume of a finished run, routing statistics across a resume."""

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file

from perft_peft import LoraCoeConfig, PerftConfig
from perft_peft.trainer import PerftTrainer
from perft_peft.trainer.finite import NonFiniteError
from perft_peft.trainer.output_dir import OutputDirBusy, output_dir_lock, publish, recover, staging_dir

from .conftest import base_model
from .test_trainer import _args, _dataset


def _trainer(output_dir, model=None, **kwargs):
    """test_trainer's arguments, saving a checkpoint every 2 of the 4 steps."""
    model = model if model is not None else get_peft_model(base_model(), PerftConfig(variant="R", r=4))
    args = _args(output_dir, **{"save_strategy": "steps", "save_steps": 2, **kwargs})
    return PerftTrainer(model=model, args=args, train_dataset=_dataset())


def _adapter(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


# -- case 1: a checkpoint another run wrote ------------------------------------------------------------------


def test_resume_refuses_checkpoint_of_another_run(tmp_path, capsys):
    _trainer(tmp_path, learning_rate=1e-2, seed=0).train()
    other = _trainer(tmp_path, learning_rate=1e-3, seed=1, max_steps=6)
    with pytest.raises(ValueError, match=r"written by another run.*learning_rate: 0.01 there, 0.001 now"):
        other.train(resume_from_checkpoint=True)
    assert other.state.global_step == 0
    assert json.loads((tmp_path / "checkpoint-4" / "run_fingerprint.json").read_text())["training"]["seed"] == 0
    # the other run, killed after its first checkpoint, resumes its own, not the first run's newer ones
    _trainer(tmp_path, learning_rate=1e-3, seed=1, max_steps=1, save_steps=1).train()
    mine = _trainer(tmp_path, learning_rate=1e-3, seed=1, max_steps=2, save_steps=1)
    mine.train(resume_from_checkpoint=True)
    assert (
        "skipping checkpoint-4 (written by another run), checkpoint-2 (written by another run)"
        in capsys.readouterr().out
    )
    assert mine.state.global_step == 2
    allowed = _trainer(tmp_path, learning_rate=1e-3, seed=1, max_steps=6, resume_from_other_run=True)
    allowed.train(resume_from_checkpoint=True)
    assert allowed.state.global_step == 6


# -- case 5: an adapter of another type or shape -------------------------------------------------------------


def test_resume_refuses_adapter_of_another_type_or_shape(tmp_path):
    loracoe = get_peft_model(base_model(), LoraCoeConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    _trainer(tmp_path / "loracoe", model=loracoe, max_steps=2).train()
    perft = _trainer(tmp_path / "loracoe", max_steps=4, resume_from_other_run=True)
    with pytest.raises(ValueError, match="holds a LORACOE adapter, but the model has a PERFT adapter"):
        perft.train(resume_from_checkpoint=True)
    # the case that used to exit 0 with a fresh adapter: no optimizer state to trip over
    (checkpoint,) = (tmp_path / "loracoe").glob("checkpoint-*")
    for name in ("optimizer.pt", "scheduler.pt"):
        (checkpoint / name).unlink()
    perft = _trainer(tmp_path / "loracoe", max_steps=4, resume_from_other_run=True)
    with pytest.raises(ValueError, match="holds a LORACOE adapter, but the model has a PERFT adapter"):
        perft.train(resume_from_checkpoint=True)
    assert perft.state.global_step == 0

    _trainer(tmp_path / "r4", max_steps=2).train()
    wider = _trainer(
        tmp_path / "r4",
        get_peft_model(base_model(), PerftConfig(variant="R", r=8)),
        max_steps=4,
        resume_from_other_run=True,
    )
    with pytest.raises(ValueError, match=r"does not fit the model .*perft_A is \(4, 4, 32\) there, \(4, 8, 32\)"):
        wider.train(resume_from_checkpoint=True)


# -- case 14: an incomplete checkpoint ------------------------------------------------------------------------


def test_resume_skips_incomplete_checkpoint(tmp_path, capsys):
    _trainer(tmp_path, max_steps=4).train()
    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()
    resumed = _trainer(tmp_path, max_steps=4)
    resumed.train(resume_from_checkpoint=True)
    out = capsys.readouterr().out
    assert "skipping checkpoint-4" in out and "resuming from checkpoint-2, which is intact" in out
    assert resumed.state.global_step == 4 and (tmp_path / "checkpoint-4" / "trainer_state.json").is_file()
    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()
    with pytest.raises(ValueError, match="not an intact checkpoint"):
        _trainer(tmp_path / "x").train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))


# -- case 10: resuming a finished run ------------------------------------------------------------------------


def test_resuming_a_finished_run_trains_nothing(tmp_path):
    first = _trainer(tmp_path, max_steps=5)  # past an epoch's end (4 steps): transformers would train a 6th step
    first.train()
    final = {n: p.detach().clone() for n, p in first.model.named_parameters() if "perft_" in n}
    again = _trainer(tmp_path, max_steps=5)
    again.train(resume_from_checkpoint=True)
    assert again.state.global_step == 5
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]
    for name, parameter in again.model.named_parameters():
        if "perft_" in name:
            torch.testing.assert_close(parameter, final[name], atol=0, rtol=0)


# -- case 9: routing statistics over the whole run -----------------------------------------------------------


def test_routing_stats_cover_the_whole_run_after_resume(tmp_path):
    constant = dict(lr_scheduler_type="constant")  # so that the 2-step run is the first half of the 4-step one
    _trainer(tmp_path / "full", **constant).train()
    full = json.loads((tmp_path / "full" / "routing_stats.json").read_text())["perft"]
    _trainer(tmp_path / "cut", max_steps=2, **constant).train()
    (tmp_path / "cut" / "routing_stats.json").unlink()
    _trainer(tmp_path / "cut", **constant).train(resume_from_checkpoint=True)
    resumed = json.loads((tmp_path / "cut" / "routing_stats.json").read_text())["perft"]
    assert resumed.keys() == full.keys()
    for key in full:
        assert resumed[key]["tokens"] == full[key]["tokens"] == 4 * 4 * 10 * 2
        assert resumed[key]["load"] == pytest.approx(full[key]["load"], abs=1e-6)


# -- case 3: NaN ----------------------------------------------------------------------------------------------


def test_nan_in_base_router_stops_training_at_first_step(tmp_path):
    model = get_peft_model(base_model(), PerftConfig(variant="R", r=4))
    gate = model.base_model.model.model.layers[1].mlp.gate
    with torch.no_grad():
        gate.weight[0, 0] = float("nan")
    trainer = _trainer(tmp_path, model, save_steps=1)
    with pytest.raises(NonFiniteError, match=r"loss is nan at step 1.*layers\.1\.mlp\.gate\.weight \(1 of"):
        trainer.train()
    assert not list(tmp_path.glob("checkpoint-*")) and not (tmp_path / "adapter_model.safetensors").exists()


def test_nan_in_perft_router_stops_training_at_first_step(tmp_path):
    """Case 3 names "PERFT's or the base model's" router: one NaN in PERFT-R's own router weight."""
    model = get_peft_model(base_model(), PerftConfig(variant="R", r=4))
    router = model.base_model.model.model.layers[0].mlp.experts.perft_router["default"]
    with torch.no_grad():
        router[1, 2] = float("nan")
    trainer = _trainer(tmp_path, model, save_steps=1)
    with pytest.raises(
        NonFiniteError,
        match=r"loss is nan at step 1.*layers\.0\.mlp\.experts\.perft_router\.default "
        r"\(1 of \d+ values\)",
    ):
        trainer.train()
    assert trainer.state.global_step == 0
    assert not list(tmp_path.glob("checkpoint-*")) and not (tmp_path / "adapter_model.safetensors").exists()


def test_batch_without_labels_is_named_as_the_cause(tmp_path):
    trainer = _trainer(tmp_path, save_strategy="no")
    trainer.train_dataset = trainer.train_dataset.map(lambda row: {"labels": [-100] * len(row["labels"])})
    with pytest.raises(NonFiniteError, match=r"at step 1.*No token of this batch has a label"):
        trainer.train()


def test_nan_adapter_is_never_saved(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    good = _adapter(tmp_path / "final")
    perft_a = next(p for n, p in trainer.model.named_parameters() if n.endswith("perft_A.default"))
    with torch.no_grad():
        perft_a[0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="Refusing to save the adapter.*perft_A"):
        trainer.save_model(str(tmp_path / "final"))
    kept = _adapter(tmp_path / "final")
    assert all(torch.equal(kept[k], good[k]) for k in good)


# -- case 4: two runs in one folder --------------------------------------------------------------------------

HOLD = """
import sys, time
from perft_peft.trainer.output_dir import output_dir_lock
with output_dir_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_run_into_a_busy_output_dir_fails_fast(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        trainer = _trainer(tmp_path / "run")
        with pytest.raises(OutputDirBusy, match=f"being written by another run \\(PID {holder.pid}"):
            trainer.train()
        assert trainer.state.global_step == 0
        holder.kill()  # kill -9: the OS drops the lock, the lock file stays behind
        holder.wait()
        assert (tmp_path / ".run.lock").read_text() == str(holder.pid)
        trainer.train()
        assert trainer.state.global_step == 4 and not (tmp_path / ".run.lock").exists()
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_reentrant_in_one_process(tmp_path):
    with output_dir_lock(tmp_path / "a"):
        with output_dir_lock(tmp_path / "a"):
            pass
        assert (tmp_path / ".a.lock").exists()
    assert not (tmp_path / ".a.lock").exists()


# -- case 2: the final folder replaced as a whole ------------------------------------------------------------


def _folder(path, version, extra=()):
    path.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "run_info.json", *extra):
        (path / name).write_text(f"{name} v{version}")


def _versions(path):
    return {p.name: p.read_text() for p in path.iterdir() if p.is_file() and not p.name.startswith(".")}


def test_publish_swaps_the_whole_folder_and_keeps_checkpoints(tmp_path):
    out = tmp_path / "out"
    _folder(out, 1, extra=("accounting.json",))
    (out / "checkpoint-2").mkdir()
    staging = staging_dir(out)
    _folder(type(out)(staging), 2)
    publish(staging, out)
    assert _versions(out) == {
        n: f"{n} v2" for n in ("adapter_config.json", "adapter_model.safetensors", "run_info.json")
    } | {"accounting.json": "accounting.json v1"}
    assert (out / "checkpoint-2").is_dir() and not os.path.exists(staging)


def test_publish_through_a_symlinked_output_dir(tmp_path):
    (tmp_path / "scratch").mkdir()
    real = tmp_path / "scratch" / "out"
    _folder(real, 1)
    link = tmp_path / "out"
    link.symlink_to(real)
    staging = staging_dir(link)
    _folder(type(link)(staging), 2)
    publish(staging, link)
    assert link.is_symlink() and _versions(real)["adapter_config.json"] == "adapter_config.json v2"


def test_publish_interrupted_then_recovered(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _folder(out, 1)
    for step in (2, 4):
        (out / f"checkpoint-{step}").mkdir()
    staging = staging_dir(out)
    _folder(type(out)(staging), 2)
    real_rename, calls = os.rename, []

    def killed_after_one(a, b):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(a)
        real_rename(a, b)

    monkeypatch.setattr(os, "rename", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        publish(staging, out)
    monkeypatch.setattr(os, "rename", real_rename)
    assert _versions(out) == {
        n: f"{n} v1" for n in ("adapter_config.json", "adapter_model.safetensors", "run_info.json")
    }  # a reader still sees the old result
    recover(out)
    assert _versions(out) == {
        n: f"{n} v2" for n in ("adapter_config.json", "adapter_model.safetensors", "run_info.json")
    }
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir() and not os.path.exists(staging)


def test_recover_drops_a_half_written_staging_folder(tmp_path):
    out = tmp_path / "out"
    _folder(out, 1)
    staging = type(out)(staging_dir(out))
    staging.mkdir()
    (staging / "adapter_model.safetensors").write_text("half")
    recover(out)
    assert not staging.exists() and _versions(out)["adapter_model.safetensors"] == "adapter_model.safetensors v1"


def test_final_save_interrupted_between_weights_and_config_keeps_the_old_adapter(tmp_path, monkeypatch):
    """peft writes adapter_model.safetensors, then adapter_config.json: a kill in between used to leave new
    weights beside the old config, a folder that loads and matches neither run."""
    from peft.config import PeftConfigMixin

    trainer = _trainer(tmp_path / "run", max_steps=1)
    trainer.train()
    out = tmp_path / "final"
    trainer.save_model(str(out))
    before = {name: (out / name).read_bytes() for name in ("adapter_config.json", "adapter_model.safetensors")}
    trainer.train()  # other weights
    trainer.model.peft_config["default"].lora_alpha = 7  # and another config
    saved = _adapter(out)
    assert any(
        not torch.equal(p.detach(), saved[n.replace(".default", "")])
        for n, p in trainer.model.named_parameters()
        if n.replace(".default", "") in saved
    ), "new weights to save"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(PeftConfigMixin, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_model(str(out))
    assert {name: (out / name).read_bytes() for name in before} == before
    monkeypatch.undo()
    trainer.save_model(str(out))
    assert json.loads((out / "adapter_config.json").read_text())["lora_alpha"] == 7
    assert not (tmp_path / ".final.staging").exists()
