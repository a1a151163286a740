"""Training runs (the recipes) under faults and bad input (issue 14): each gets a clear error before work is done
or lost, or correct behaviour."""

import json
import math
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from peft import get_peft_model

from perft_peft import LoraCoeConfig, PerftConfig, recipe
from perft_peft.data import RecordError, load_llm_adapters_dataset, tiny_word_tokenizer, tokenize_dataset
from perft_peft.evaluation import cli
from perft_peft.trainer.output_dir import OutputDirBusy

from .conftest import base_model
from .scripts import RECIPES, TINY_RUN

FAST = [
    *TINY_RUN,
    "--max_steps",
    "2",
    "--save_steps",
    "1",
    "--logging_steps",
    "1",
    "--val_set_size",
    "0",
]
ADAPTER_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "run_info.json",
    "accounting.json",
    "routing_stats.json",
)


def _recipe(monkeypatch, argv, script="mixtral_perft_r"):
    """Run a recipe in this process, as `python recipes/<script>.py <argv>` would."""
    path = RECIPES / f"{script}.py"
    monkeypatch.setattr(sys, "argv", [str(path), *map(str, argv)])
    runpy.run_path(str(path), run_name="__main__")


def _snapshot(folder: Path) -> dict:
    return {name: (folder / name).read_bytes() for name in ADAPTER_FILES}


def _parse_error(argv, capsys, script="mixtral_perft_r"):
    parser = runpy.run_path(str(RECIPES / f"{script}.py"), run_name="errors")["p"]
    with pytest.raises(SystemExit):
        parser.parse([*argv, "--output_dir", "x"])
    return capsys.readouterr().err


# -- cases 1, 2, 10: the final adapter and the checkpoints of a used --output_dir ------------------------------


@pytest.mark.slow
def test_used_output_dir(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _recipe(monkeypatch, [*FAST, "--output_dir", out, "--seed", "1", "--learning_rate", "1e-2"])
    first = _snapshot(out)

    # case 10: the same command relaunched with resume: nothing is trained or replaced
    _recipe(
        monkeypatch,
        [*FAST, "--output_dir", out, "--seed", "1", "--learning_rate", "1e-2", "--resume_from_checkpoint", "true"],
    )
    assert "the run is finished, nothing to do" in capsys.readouterr().out
    assert _snapshot(out) == first and not (out / "checkpoint-3").exists()

    # case 1: another run (other lr and seed) resuming from this folder's checkpoints is refused
    with pytest.raises(ValueError, match=r"written by another run.*learning_rate: 0.01 there, 0.001 now"):
        _recipe(
            monkeypatch,
            [*FAST, "--output_dir", out, "--seed", "2", "--learning_rate", "1e-3", "--resume_from_checkpoint", "true"],
        )
    assert _snapshot(out) == first

    # case 2: a run that fails while writing its final folder leaves the previous one whole
    from perft_peft import hub

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hub, "save_accounting", fail)
    with pytest.raises(OSError, match="disk full"):
        _recipe(monkeypatch, [*FAST, "--output_dir", out, "--seed", "2", "--learning_rate", "1e-3"])
    assert _snapshot(out) == first
    monkeypatch.undo()
    _recipe(monkeypatch, [*FAST, "--output_dir", out, "--seed", "2", "--learning_rate", "1e-3"])
    second = _snapshot(out)
    assert all(second[name] != first[name] for name in ("adapter_model.safetensors", "run_info.json"))
    assert json.loads(second["run_info.json"])["seed"] == 2
    assert not list(tmp_path.glob(".run.*"))  # no staging folder, no lock left


# -- case 4: two runs at once -----------------------------------------------------------------------------------


def test_second_recipe_run_into_a_busy_output_dir_fails_before_any_work(tmp_path, monkeypatch):
    hold = (
        "import sys, time\nfrom perft_peft.trainer.output_dir import output_dir_lock\n"
        "with output_dir_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirBusy, match="being written by another run"):
            _recipe(monkeypatch, [*FAST, "--output_dir", tmp_path / "run"])
        assert not (tmp_path / "run" / "tiny_base").exists()
    finally:
        holder.kill()
        holder.wait()


# -- case 6: masking that leaves no label; cutoff_len beyond the model ---------------------------------------------


def _records(n, instruction_words):
    from datasets import Dataset

    words = " ".join(["what"] * instruction_words)
    return Dataset.from_list([{"instruction": words, "input": "", "output": "the correct answer is true"}] * n)


def test_masking_that_leaves_no_label():
    tokenizer = tiny_word_tokenizer()
    with pytest.raises(ValueError, match=r"data.json: none of the 3 examples has a token left to learn"):
        tokenize_dataset(_records(3, 40), tokenizer, cutoff_len=16, train_on_inputs=False, source="data.json")
    mixed = _records(2, 40).to_list() + _records(1, 1).to_list()
    from datasets import Dataset

    with pytest.warns(UserWarning, match=r"2 of 3 examples have no token left to learn"):
        tokenize_dataset(Dataset.from_list(mixed), tokenizer, cutoff_len=40, train_on_inputs=False)
    tokenize_dataset(_records(3, 40), tokenizer, cutoff_len=16, train_on_inputs=True)  # the prompt is learnt


def test_cutoff_len_beyond_the_model(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"--cutoff_len 512 is longer than the 256 positions"):
        _recipe(monkeypatch, [*FAST, "--output_dir", tmp_path / "run", "--cutoff_len", "512"])


# -- case 7: --tiny with --data; a tiny base of another family ------------------------------------------------------


def test_tiny_refuses_data(capsys):
    assert "cannot use --data" in _parse_error(["--tiny", "--data", "mine.json"], capsys)


def test_tiny_base_of_another_family_is_refused(tmp_path):
    (tmp_path / "tiny_base").mkdir()
    (tmp_path / "tiny_base" / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    with pytest.raises(ValueError, match="holds a tiny mixtral model, but this run asks for --family olmoe"):
        recipe.build_tiny_base(str(tmp_path), "olmoe")


# -- cases 8, 15: numbers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch_size", "-4"], "--batch_size must be > 0, got -4"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be > 0, got 0"),
        (["--learning_rate", "nan"], "--learning_rate must be a finite number"),
        (["--cutoff_len", "0"], "--cutoff_len must be > 0"),
        (["--max_steps", "0"], "--max_steps must be a positive number of steps"),
        (["--warmup_steps", "-1"], "--warmup_steps must be >= 0"),
    ],
)
def test_numeric_flags(argv, message, capsys):
    assert message in _parse_error(["--tiny", *argv], capsys)


@pytest.mark.parametrize("config", [PerftConfig, LoraCoeConfig])
@pytest.mark.parametrize("alpha", [math.nan, math.inf])
def test_lora_alpha_must_be_finite(config, alpha):
    with pytest.raises(ValueError, match="lora_alpha must be a positive number"):
        config(lora_alpha=alpha)


@pytest.mark.parametrize("name", ["router_aux_loss_coef", "router_z_loss_coef", "loracoe_warmup_learning_rate"])
def test_training_arguments_must_be_finite(tmp_path, name):
    from perft_peft.trainer import PerftTrainingArguments

    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        PerftTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **{name: math.nan})


@pytest.mark.parametrize(
    "config",
    [
        PerftConfig(variant="S", layers_to_transform=[1, 5]),
        LoraCoeConfig(target_modules=["q_proj"], layers_to_transform=[1, 5]),
    ],
    ids=["perft", "loracoe"],
)
def test_layers_to_transform_beyond_the_model(config):
    model = base_model()
    with pytest.raises(ValueError, match=r"layers_to_transform=\[1, 5\]: MixtralForCausalLM has 2 layers"):
        get_peft_model(model, config)
    assert not any(prefix in n for n, _ in model.named_parameters() for prefix in ("perft_", "loracoe_"))


# -- case 12: PERFT on a module that is no MoE experts module -------------------------------------------------------


def test_perft_target_that_is_no_experts_module():
    model = base_model()
    with pytest.raises(
        ValueError,
        match=r"model.layers.0.self_attn.k_proj \(Linear\) is neither an MoE experts "
        "module nor a block holding one",
    ):
        get_peft_model(model, PerftConfig(variant="R", target_modules=["k_proj"]))
    assert not any("perft" in n for n, _ in model.named_parameters())


# -- case 13: broken data files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("empty.json", "", "the file is empty"),
        ("list.json", "[]", "holds an empty list"),
        ("cut.json", '[{"instruction": "a", "input": "", "output": "b"}, {"instr', "not valid JSON"),
        ("strings.json", '["hello"]', "record 0 is a str"),
        ("mixed.jsonl", '{"instruction": "a", "input": "", "output": "b"}\n"x"\n', "record 1 is a str"),
    ],
)
def test_broken_data_files(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(RecordError, match=rf"{name}: {message}"):
        load_llm_adapters_dataset(tmp_path / name, cache_dir=str(tmp_path / "cache"))


# -- case 16: the evaluation CLI checks the records before loading a model -------------------------------------------


def test_evaluation_cli_checks_records_before_loading(tmp_path, capsys):
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "test.json").write_text(json.dumps([{"instruction": "q", "input": "", "output": "o"}]))
    with pytest.raises(SystemExit):
        cli.parse(
            cli.parser(""),
            [
                "--adapter",
                "nonexistent",
                "--data_dir",
                str(tmp_path),
                "--benchmarks",
                "boolq",
                "--output_dir",
                str(tmp_path / "eval"),
            ],
        )
    assert "boolq/test.json: record 0 has no 'answer' field" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse(cli.parser(""), ["--adapter", "a", "--data_dir", str(tmp_path / "none"), "--output_dir", "o"])
    assert "docs/evaluation.md, section 'Getting the test sets'" in capsys.readouterr().err
