"""recipes/loracoe.py's flags over its YAML config: warmup lengths, the no-warmup ablation."""

import runpy
from pathlib import Path

import pytest

from perft_peft import recipe

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "loracoe.py"


@pytest.fixture(scope="module")
def loracoe():
    return runpy.run_path(str(RECIPE), run_name="help")


def training_args(loracoe, argv, tmp_path):
    args = loracoe["parse"](["--tiny", "--output_dir", str(tmp_path), *argv])
    return args, recipe.training_arguments(args, loracoe_warmup_epochs=args.loracoe_warmup_epochs,
                                           loracoe_warmup_steps=args.loracoe_warmup_steps,
                                           loracoe_warmup_learning_rate=args.loracoe_warmup_learning_rate)


def test_warmup_steps_flag_replaces_the_configs_epochs(loracoe, tmp_path):
    args, training = training_args(loracoe, ["--max_steps", "8", "--loracoe_warmup_steps", "4"], tmp_path)
    assert (args.loracoe_warmup_steps, args.loracoe_warmup_epochs) == (4, None)
    assert training.loracoe_warmup_steps_for(8) == 4


def test_warmup_epochs_flag_replaces_a_configs_steps(loracoe, tmp_path):
    config = tmp_path / "steps.yaml"
    text = (RECIPE.parent / "configs" / "loracoe.yaml").read_text()
    config.write_text(text.replace("loracoe_warmup_epochs: 2", "loracoe_warmup_steps: 100"))
    args, training = training_args(loracoe, ["--config", str(config), "--loracoe_warmup_epochs", "1"], tmp_path)
    assert (args.loracoe_warmup_steps, args.loracoe_warmup_epochs) == (None, 1)
    assert training.loracoe_warmup_steps_for(40) == 10  # 1 of the config's 4 epochs


def test_config_default_and_max_steps(loracoe, tmp_path):
    args, training = training_args(loracoe, [], tmp_path)
    assert (args.loracoe_warmup_steps, args.loracoe_warmup_epochs) == (None, 2)
    args, training = training_args(loracoe, ["--max_steps", "6"], tmp_path)
    assert (args.loracoe_warmup_steps, args.loracoe_warmup_epochs) == (3, None)


def test_no_warmup(loracoe, tmp_path):
    args, training = training_args(loracoe, ["--no_warmup"], tmp_path)
    assert not training.uses_loracoe_warmup and training.loracoe_warmup_learning_rate is None
    with pytest.raises(SystemExit):
        loracoe["parse"](["--tiny", "--output_dir", str(tmp_path), "--no_warmup", "--loracoe_warmup_steps", "2"])
