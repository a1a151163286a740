"""recipes/loracoe.py's flags over its YAML config: warmup lengths, the no-warmup ablation."""

import runpy
from pathlib import Path

import pytest

from perft_peft import recipe

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "loracoe.py"


@pytest.fixture(scope="module")
def loracoe():
    return runpy.run_path(str(RECIPE), run_name="help")


def parse(loracoe, argv, tmp_path):
    """(script, method, training) arguments of ``recipes/loracoe.py --tiny <argv>``."""
    return loracoe["p"].parse(["--tiny", "--output_dir", str(tmp_path), *argv])


def test_warmup_steps_flag_replaces_the_configs_epochs(loracoe, tmp_path):
    _, _, training = parse(loracoe, ["--max_steps", "8", "--loracoe_warmup_steps", "4"], tmp_path)
    assert (training.loracoe_warmup_steps, training.loracoe_warmup_epochs) == (4, None)
    assert training.loracoe_warmup_steps_for(8) == 4


def test_warmup_epochs_flag_replaces_a_configs_steps(loracoe, tmp_path):
    config = tmp_path / "steps.yaml"
    text = (RECIPE.parent / "configs" / "loracoe.yaml").read_text()
    config.write_text(text.replace("loracoe_warmup_epochs: 2", "loracoe_warmup_steps: 100"))
    _, _, training = parse(loracoe, ["--config", str(config), "--loracoe_warmup_epochs", "1"], tmp_path)
    assert (training.loracoe_warmup_steps, training.loracoe_warmup_epochs) == (None, 1)
    assert training.loracoe_warmup_steps_for(40) == 10  # 1 of the config's 4 epochs


def test_config_default_and_max_steps(loracoe, tmp_path):
    _, _, training = parse(loracoe, [], tmp_path)
    assert (training.loracoe_warmup_steps, training.loracoe_warmup_epochs) == (None, 2)
    _, _, training = parse(loracoe, ["--max_steps", "6"], tmp_path)
    assert (training.loracoe_warmup_steps, training.loracoe_warmup_epochs) == (3, None)


def test_one_step_leaves_no_warmup(loracoe, tmp_path, capsys):
    """Half of one step is no warmup: said before any model loads, not as the trainer's puzzling complaint."""
    with pytest.raises(SystemExit):
        parse(loracoe, ["--max_steps", "1"], tmp_path)
    assert "--max_steps 1 leaves no step for LoRACoE's warmup" in capsys.readouterr().err
    _, _, training = parse(loracoe, ["--max_steps", "1", "--no_warmup"], tmp_path)
    assert not training.uses_loracoe_warmup


def test_no_warmup(loracoe, tmp_path):
    _, _, training = parse(loracoe, ["--no_warmup"], tmp_path)
    assert not training.uses_loracoe_warmup and training.loracoe_warmup_learning_rate is None
    with pytest.raises(SystemExit):
        parse(loracoe, ["--no_warmup", "--loracoe_warmup_steps", "2"], tmp_path)


CONFIGS = RECIPE.parent / "configs"


def test_lora_baseline_config(loracoe, tmp_path):
    from peft import LoraConfig

    script, method, training = parse(loracoe, ["--config", str(CONFIGS / "loracoe_lora.yaml")], tmp_path)
    config = recipe.loracoe_config(method)
    assert isinstance(config, LoraConfig) and (config.r, config.lora_alpha) == (16, 32)
    assert config.target_modules == {"q_proj", "k_proj", "v_proj", "up_proj", "down_proj"}
    assert (training.num_train_epochs, training.learning_rate) == (4, 3e-4) and not training.uses_loracoe_warmup
    assert recipe.mixture_parts(script, method)[1].format == "orca_math"  # the same data as LoRACoE


def test_loramoe_baseline_config(loracoe, tmp_path):
    _, method, training = parse(loracoe, ["--config", str(CONFIGS / "loracoe_loramoe.yaml")], tmp_path)
    config = recipe.loracoe_config(method)
    assert (config.construction, config.num_experts, config.r, config.lora_alpha) == ("partition", 4, 16, 32)
    assert config.target_modules == ["down_proj", "k_proj", "q_proj", "up_proj", "v_proj"]
    assert (training.num_train_epochs, training.learning_rate) == (4, 3e-4) and not training.uses_loracoe_warmup


@pytest.mark.parametrize(
    "flags, expected",
    [(["--num_experts", "8"], ("composition", 8, 16)), (["--r", "32", "--lora_alpha", "64"], ("composition", 2, 32))],
)
def test_ablation_flags(loracoe, tmp_path, flags, expected):
    _, method, _ = parse(loracoe, flags, tmp_path)
    config = recipe.loracoe_config(method)
    assert (config.construction, config.num_experts, config.r) == expected


def test_lora_refuses_loracoe_only_flags(loracoe, tmp_path):
    with pytest.raises(SystemExit):
        parse(loracoe, ["--method", "lora", "--save_without_router"], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, peft_type",
    [
        (["--config", str(CONFIGS / "loracoe_lora.yaml")], "LORA"),
        (["--num_experts", "4", "--save_without_router", "--loracoe_warmup_steps", "1"], "LORACOE"),
    ],
)
def test_tiny_runs_of_baselines_and_ablations(tmp_path, extra, peft_type):
    import json

    from .scripts import run
    from .test_recipes import FAST, _check_adapter_matches_probe

    out = run([RECIPE, "--tiny", "--output_dir", tmp_path, *FAST, *extra])
    assert "Give loracoe_warmup_steps or loracoe_warmup_epochs" not in out
    assert _check_adapter_matches_probe(tmp_path)["peft_type"] == peft_type
    if "--save_without_router" in extra:
        config = json.loads((tmp_path / "without_router" / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(tmp_path / "tiny_base")
        # relaunching the finished run (a cluster's retry) trains nothing and leaves both adapters as they were
        saved = (tmp_path / "without_router" / "adapter_model.safetensors").read_bytes()
        out = run([RECIPE, "--tiny", "--output_dir", tmp_path, *FAST, *extra, "--resume_from_checkpoint", "true"])
        assert "the run is finished, nothing to do" in out
        assert (tmp_path / "without_router" / "adapter_model.safetensors").read_bytes() == saved
