"""The recipes' parser (perft_peft.recipe_args): a --config YAML that may set any field of the three dataclasses,
flags over it, errors naming the key before any model is loaded, and TrainingArguments flags reaching the Trainer."""

import runpy
import sys

import pytest

from perft_peft import recipe
from perft_peft.recipe_args import PerftArguments, RecipeParser, ScriptArguments
from perft_peft.trainer import PerftTrainingArguments

from .scripts import RECIPES, TINY_RUN

CONFIGS = RECIPES / "configs"


def _parser(script="olmoe_perft"):
    return runpy.run_path(str(RECIPES / f"{script}.py"), run_name="args")["p"]


def test_three_dataclasses_from_the_recipes_config():
    script, method, training = _parser().parse(["--output_dir", "o"])
    assert isinstance(script, ScriptArguments) and isinstance(method, PerftArguments)
    assert isinstance(training, PerftTrainingArguments)
    assert (script.model, script.batch_size, script.val_set_size) == ("allenai/OLMoE-1B-7B-0924", 16, 120)
    assert (method.variant, method.r, method.lora_alpha, method.init_weights) == ("R", 32, None, "perft")
    # global batch 16 = 4 per device x 4 accumulation steps on one process
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (4, 4)
    assert (training.learning_rate, training.router_aux_loss_coef, training.save_total_limit) == (1e-5, 0.01, 2)
    assert training.remove_unused_columns is False and training.output_dir == "o"


def test_any_training_field_from_the_config_file_and_flags_over_it(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(
        "tiny: true\nfamily: olmoe\ntiny_data: commonsense_tiny\nvariant: E\nr: 4\n"
        "weight_decay: 0.1\noptim: adafactor\nmax_grad_norm: 0.5\nlr_scheduler_kwargs: {power: 2.0}\n"
        "adam_beta2: 0.99\nper_device_train_batch_size: 2\nlearning_rate: 1.0e-3\n"
    )
    argv = ["--config", str(config), "--output_dir", "o", "--weight_decay", "0.2", "--r", "8"]
    script, method, training = _parser().parse(argv)
    assert script.tiny and (method.variant, method.r) == ("E", 8)  # flags override the file
    assert (training.weight_decay, training.optim, training.max_grad_norm) == (0.2, "adafactor", 0.5)
    assert training.lr_scheduler_kwargs == {"power": 2.0} and training.adam_beta2 == 0.99
    # a file replaces the recipe's own: what it leaves out has the dataclasses' defaults
    assert (training.learning_rate, training.gradient_accumulation_steps, script.batch_size) == (1e-3, 1, None)
    assert (training.num_train_epochs, method.top_k) == (3, None)


def test_config_values_do_not_leak_into_the_next_parse(tmp_path):
    parser = _parser("loracoe")
    _, method, _ = parser.parse(["--tiny", "--output_dir", "o", "--config", str(CONFIGS / "loracoe_loramoe.yaml")])
    assert method.no_warmup and method.construction == "partition"
    script, method, training = parser.parse(["--tiny", "--output_dir", "o"])
    assert not method.no_warmup and method.construction == "composition" and training.loracoe_warmup_epochs == 2


def test_gradient_accumulation_flag_replaces_the_configs_batch_size():
    _, _, training = _parser().parse(["--tiny", "--output_dir", "o", "--gradient_accumulation_steps", "2"])
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (4, 2)
    with pytest.raises(SystemExit):
        _parser().parse(["--tiny", "--output_dir", "o", "--gradient_accumulation_steps", "2", "--batch_size", "8"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--weight_decay", "heavy"], "argument --weight_decay/--weight-decay: invalid float value: 'heavy'"),
        (["--optim", "adamw"], "argument --optim: invalid choice: 'adamw'"),
        (["--learning-rat", "1"], "unrecognized arguments: --learning-rat"),
        (["--logging_steps", "1.5"], "--logging_steps must be an integer if bigger than 1"),  # TrainingArguments'
        (["--eval_strategy", "steps", "--val_set_size", "0"], "--eval_strategy needs a validation split"),
    ],
)
def test_bad_flags_stop_before_any_model(tmp_path, monkeypatch, capsys, argv, message):
    """Run as `python recipes/olmoe_perft.py --tiny ...`: the error is an argument error, and neither the tiny base
    nor any model is built."""
    from transformers import AutoModelForCausalLM

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_model)
    monkeypatch.setattr(AutoModelForCausalLM, "from_config", no_model)
    path = RECIPES / "olmoe_perft.py"
    monkeypatch.setattr(sys, "argv", [str(path), "--tiny", "--output_dir", str(tmp_path / "run"), *argv])
    with pytest.raises(SystemExit):
        runpy.run_path(str(path), run_name="__main__")
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_help_shows_the_configs_values(capsys):
    with pytest.raises(SystemExit):
        _parser("mixtral_perft_r").parse(["--help"])
    text = capsys.readouterr().out
    assert "    python recipes/mixtral_perft_r.py --tiny --output_dir /tmp/run" in text  # the docstring as written
    words = " ".join(text.split())
    assert "--model MODEL Base model: a Hub id or a local directory. (default: mistralai/Mixtral-8x7B-v0.1)" in words
    assert "The initial learning rate for the optimizer. (default: 2e-05)" in words


def test_training_flags_reach_the_trainer(tmp_path):
    """--weight_decay, --max_grad_norm, --adam_beta2 (no recipe declares them) are in the Trainer's arguments and
    its optimizer."""
    main = runpy.run_path(str(RECIPES / "loracoe.py"), run_name="test")["main"]
    trainer = main(
        [
            *TINY_RUN,
            "--output_dir",
            str(tmp_path / "run"),
            "--max_steps",
            "2",
            "--weight_decay",
            "0.25",
            "--max_grad_norm",
            "0.5",
            "--adam_beta2",
            "0.99",
            "--save_strategy",
            "no",
        ]
    )
    assert (trainer.args.weight_decay, trainer.args.max_grad_norm, trainer.args.adam_beta2) == (0.25, 0.5, 0.99)
    groups = trainer.optimizer.param_groups
    assert {g["weight_decay"] for g in groups} == {0.0, 0.25} and {g["betas"] for g in groups} == {(0.9, 0.99)}
    assert not list((tmp_path / "run").glob("checkpoint-*"))  # --save_strategy no


def test_method_arguments_take_the_configs_help():
    help_r = {f.name: f.metadata["help"] for f in PerftArguments.__dataclass_fields__.values()}
    from perft_peft import PerftConfig

    assert help_r["variant"] == PerftConfig.__dataclass_fields__["variant"].metadata["help"]
    assert isinstance(_parser(), RecipeParser) and callable(recipe.perft_config)
