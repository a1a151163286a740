"""The recipes: --help, every recipe's --tiny run, flag errors, and the 2-process DeepSpeed ZeRO-3 run."""

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM
from safetensors.torch import load_file

from .scripts import RECIPES, run

FAST = [
    "--max_steps",
    "2",
    "--batch_size",
    "4",
    "--per_device_train_batch_size",
    "2",
    "--gradient_checkpointing",
    "false",
    "--probe_logits",
]


def _check_adapter_matches_probe(output_dir: Path):
    """The saved adapter, loaded in this plain process, reproduces the trained model's logits."""
    config = json.loads((output_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(output_dir / "tiny_base")
    model = AutoPeftModelForCausalLM.from_pretrained(output_dir).eval()
    probe = load_file(str(output_dir / "probe_logits.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits
    torch.testing.assert_close(logits, probe["logits"], atol=1e-5, rtol=1e-5)
    return config


@pytest.mark.parametrize("script", ["mixtral_perft_r", "olmoe_perft", "loracoe", "baselines"])
def test_help(script):
    parser = runpy.run_path(str(RECIPES / f"{script}.py"), run_name="help")["p"]
    text = parser.format_help()
    flags = (
        "--config",
        "--model",
        "--data",
        "--output_dir",
        "--max_steps",
        "--tiny",
        "--push_to_hub",
        "--weight_decay",
    )
    for flag in (*flags, "--hub_model_id", "--r", "--router_aux_loss_coef", "--loracoe_warmup_steps"):
        assert flag in text
    # script and method arguments first, then TrainingArguments' ~100 fields in their own group
    groups = ["script arguments:", "(method):", "training arguments ("]
    assert [text.index(g) for g in groups] == sorted(text.index(g) for g in groups)


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, extra, peft_type",
    [
        ("mixtral_perft_r", [], "PERFT"),
        ("olmoe_perft", ["--variant", "E"], "PERFT"),
        ("loracoe", [], "LORACOE"),
        ("baselines", ["--method", "lora_attn"], "LORA"),
        ("baselines", ["--method", "lora_router"], "LORA"),
        ("baselines", ["--method", "lora_experts"], "LORA"),
    ],
)
def test_tiny_run(tmp_path, script, extra, peft_type):
    out = tmp_path / "run"
    run([RECIPES / f"{script}.py", "--tiny", "--output_dir", out, *FAST, *extra])
    config = _check_adapter_matches_probe(out)
    assert config["peft_type"] == peft_type
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tiny", "--output_dir", "x", "--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        (["--tiny", "--output_dir", "x", "--batch_size", "5", "--per_device_train_batch_size", "2"], "not a multiple"),
        (["--tiny", "--output_dir", "x", "--learning_rat", "1e-4"], "unrecognized arguments: --learning_rat"),
        (["--tiny"], "give --output_dir"),
    ],
)
def test_flag_errors(argv, message, capsys):
    parser = runpy.run_path(str(RECIPES / "mixtral_perft_r.py"), run_name="errors")["p"]
    with pytest.raises(SystemExit):
        parser.parse(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "yaml_text, argv, message",
    [
        ("learning_rat: 1.0e-4\n", ["--tiny"], "unknown keys: learning_rat"),
        ("batch_size: 4\nper_device_train_batch_size: 2\n", [], "give --model"),
        ("r: eight\n", ["--tiny"], "bad.yaml: argument --r: invalid int value: 'eight'"),
        ("expert_type: lorra\n", ["--tiny"], "bad.yaml: argument --expert_type/--expert-type: invalid choice: 'lorra'"),
        ("optim: adamw\n", ["--tiny"], "bad.yaml: argument --optim: invalid choice: 'adamw'"),
    ],
)
def test_config_file_errors(tmp_path, capsys, yaml_text, argv, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    parser = runpy.run_path(str(RECIPES / "mixtral_perft_r.py"), run_name="errors")["p"]
    with pytest.raises(SystemExit):
        parser.parse([*argv, "--output_dir", "x", "--config", str(config)])
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_mixtral_perft_r_on_deepspeed_zero3_with_two_processes(tmp_path):
    """The design card's command on 2 CPU processes. It guards the traps: gloo (else both ranks think they are
    rank 0 and rank 1 overwrites the adapter with empty tensors), DeepSpeed's default MoE leaf modules (else
    backward fails), saving gathered weights (else (0,)-shaped tensors), and partitioned parameters everywhere
    (stage3_param_persistence_threshold 0 in the config)."""
    out = tmp_path / "zero3"
    # The paper's lr (2e-5 after 100 warmup steps) would move B (~1e-6 at init_weights="perft") by ~1e-6 in 4 steps:
    # too little to tell a trained adapter from a fresh one, so this run trains at a constant 1e-3.
    command = [
        RECIPES / "mixtral_perft_r.py",
        "--tiny",
        "--max_steps",
        "4",
        "--output_dir",
        out,
        "--probe_logits",
        "--learning_rate",
        "1e-3",
        "--warmup_steps",
        "0",
    ]
    launcher = (
        "timeout",
        "840",
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        RECIPES / "configs" / "accelerate_zero3_cpu.yaml",
        "--num_processes",
        "2",
    )
    log = run(command, timeout=900, launcher=launcher)
    assert "[perft-peft] rank 0/2 ready" in log and "[perft-peft] rank 1/2 ready" in log
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 2
    ds_config = json.loads((RECIPES / "configs" / "ds_zero3_cpu.json").read_text())
    assert ds_config["zero_optimization"]["stage3_param_persistence_threshold"] == 0

    tensors = load_file(str(out / "adapter_model.safetensors"))
    D, M, r = 32, 8, 8
    shapes = {"perft_A": (M, r, D), "perft_B": (M, D, r), "perft_router": (M, D)}
    assert len(tensors) == 2 * 3
    for key, value in tensors.items():
        assert tuple(value.shape) == shapes[key.rsplit(".", 1)[-1]], key
        if key.endswith("perft_B"):  # init ~1e-6 N(0, 1) (max ~4e-6 here); Adam moves it by ~1e-3 per step
            assert value.abs().max() > 1e-4, f"{key} is still at its initialisation: not trained"
    _check_adapter_matches_probe(out)

    # a cluster relaunching the finished job: nothing trained, nothing replaced (issue 14)
    adapter = (out / "adapter_model.safetensors").read_bytes()
    log = run([*command, "--resume_from_checkpoint", "true"], timeout=900, launcher=launcher)
    assert "the run is finished, nothing to do" in log
    assert (out / "adapter_model.safetensors").read_bytes() == adapter
    assert all(int(p.name.split("-")[1]) <= 4 for p in out.glob("checkpoint-*"))
