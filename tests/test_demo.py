"""Smoke test of `make demo` (python -m perft_peft.demo) with a handful of steps: it runs end to end, writes the
adapter, and the reloaded adapter evaluates exactly like the in-memory one. No accuracy claim with so few steps."""

import json

import pytest
import torch

from perft_peft import demo


def test_demo_end_to_end(tmp_path):
    threads = torch.get_num_threads()
    metrics = demo.main(["--output_dir", str(tmp_path), "--pretrain_steps", "4", "--steps", "4", "--seed", "1"])

    adapter = tmp_path / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (tmp_path / "base" / "config.json").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "PERFT" and config["variant"] == "R"

    assert metrics["reloaded"] == metrics["after"]  # exact, not approximate
    assert metrics["before"] == metrics["base"]  # B = 0: the fresh adapter leaves the base model unchanged
    for result in (metrics["before"], metrics["after"]):
        assert set(result) == {"loss", "accuracy"} and 0.0 <= result["accuracy"] <= 1.0
    assert 0 < metrics["activated_trainable"] < metrics["trainable"]
    assert torch.get_num_threads() == threads  # main() restores the caller's thread setting


def test_demo_help(capsys):
    with pytest.raises(SystemExit) as exit:
        demo.main(["--help"])
    assert exit.value.code == 0
    assert "--output_dir" in capsys.readouterr().out
