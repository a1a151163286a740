"""The PERFT authors' settings (github liuyilun2000/PERFT): their initialisation (``init_weights="perft"``),
their Mixtral PERFT-R's renormalised top-K gates (``norm_topk_prob``) and their parallel-adapter experts
(SiLU, scale 1), each against the equations computed independently, and saved / loaded with the adapter."""

import json
import math
import runpy

import pytest
import torch
from peft import PeftModel, get_peft_model

import perft_peft.perft.layer as perft_layer
from perft_peft import PerftConfig, PerftLayer, recipe

from .conftest import base_model
from .scripts import RECIPES, run
from .test_perft_equations import _adapter_tensors, _force_sparse, _randomise_routers, _reference_logits


def _layers(model):
    return [m for m in model.modules() if isinstance(m, PerftLayer)]


def _logits_on_path(model, input_ids, sparse, monkeypatch):
    """The model's logits on the dense or the grouped-GEMM (``sparse``) path, checking that path is the one that
    ran, so a ``sparse`` parametrisation cannot silently run dense (or the other way round)."""
    calls = []
    grouped = perft_layer._sparse_experts
    monkeypatch.setattr(perft_layer, "_sparse_experts", lambda *a: calls.append(1) or grouped(*a))
    if sparse:
        _force_sparse(model)
    with torch.no_grad():
        logits = model(input_ids).logits
    assert bool(calls) == sparse, "the parametrised path (dense or grouped GEMM) must be the one that ran"
    return logits


def test_perft_init_statistics():
    """A ~ N(0, 2/r) per element, B ~ 1e-6 N(0, 1) (commonsense/utils.py, lines 30-37); both trainable."""
    r, M = 8, 64
    model = get_peft_model(
        base_model("mixtral", hidden_size=256), PerftConfig(variant="D", num_experts=M, r=r, init_weights="perft")
    )
    A = torch.cat([layer.perft_A["default"].detach().flatten() for layer in _layers(model)])
    B = torch.cat([layer.perft_B["default"].detach().flatten() for layer in _layers(model)])
    assert A.numel() > 100_000 and B.numel() > 100_000
    assert abs(A.std().item() / math.sqrt(2 / r) - 1) < 0.01 and abs(A.mean().item()) < 0.01
    assert abs(B.std().item() / 1e-6 - 1) < 0.01 and abs(B.mean().item()) < 1e-8
    # Normal, not uniform: the kurtosis of a Gaussian is 3 (a uniform's is 1.8).
    assert abs(((A / A.std()) ** 4).mean().item() - 3) < 0.1
    # Not peft's Kaiming-uniform: |A| is unbounded by 1/sqrt(D).
    assert A.abs().max() > 1 / math.sqrt(256)
    assert all(
        p.requires_grad for layer in _layers(model) for p in (layer.perft_A["default"], layer.perft_B["default"])
    )


@pytest.mark.parametrize(
    "variant, expert_type", [("R", "lora"), ("E", "lora"), ("S", "lora"), ("D", "adapter"), ("R", "adapter")]
)
def test_perft_init_statistics_every_variant_and_expert_type(variant, expert_type):
    """The same distributions for every variant and for parallel-adapter experts (w1 = A, w2 = B), "for LoRA and
    adapter experts alike"; tolerances scale with the sample size (5 standard errors)."""
    torch.manual_seed(0)
    r = 8
    kwargs = dict(num_experts=16, top_k=2) if variant == "R" else {}
    model = get_peft_model(
        base_model("mixtral", hidden_size=256),
        PerftConfig(variant=variant, r=r, init_weights="perft", expert_type=expert_type, **kwargs),
    )
    A = torch.cat([layer.perft_A["default"].detach().flatten() for layer in _layers(model)]).double()
    B = torch.cat([layer.perft_B["default"].detach().flatten() for layer in _layers(model)]).double()
    n = A.numel()
    assert n >= 2 * r * 256 and B.numel() == n
    for values, std in ((A, math.sqrt(2 / r)), (B, 1e-6)):
        assert abs(values.std().item() / std - 1) < 5 / math.sqrt(2 * n), (values.std().item(), std)
        assert abs(values.mean().item()) < 5 * std / math.sqrt(n)
        assert abs(((values / values.std()) ** 4).mean().item() - 3) < 5 * math.sqrt(24 / n)  # Gaussian


def test_default_init_is_the_authors(input_ids):
    """The default (chosen by benchmarks/perft_init.py) is "perft": B ~ 1e-6, so the model is close to the base model
    (here within 1e-2 of its logits) but not equal to it."""
    assert PerftConfig(variant="S").init_weights == "perft"
    base = base_model("mixtral")
    with torch.no_grad():
        expected = base(input_ids).logits
        model = get_peft_model(base, PerftConfig(variant="S", r=4))
        logits = model(input_ids).logits
    assert not torch.equal(logits, expected)
    torch.testing.assert_close(logits, expected, atol=1e-2, rtol=0)


def test_peft_lora_init_is_identity_and_bounded():
    model = get_peft_model(base_model("mixtral"), PerftConfig(variant="S", r=4, init_weights=True))
    for layer in _layers(model):
        assert torch.count_nonzero(layer.perft_B["default"]) == 0
        assert layer.perft_A["default"].abs().max() <= 1 / math.sqrt(layer.hidden_size)


@pytest.mark.parametrize("value", [1, 0, "kaiming", "gaussian", None])
def test_bad_init_weights_rejected(value):
    with pytest.raises(ValueError, match="init_weights"):
        PerftConfig(variant="S", init_weights=value)


@pytest.mark.parametrize("variant", ["E", "D", "S"])
def test_norm_topk_prob_only_for_r(variant):
    with pytest.raises(ValueError, match="norm_topk_prob"):
        PerftConfig(variant=variant, norm_topk_prob=True)
    with pytest.raises(ValueError, match="norm_topk_prob"):
        PerftConfig(variant="R", norm_topk_prob="yes")


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("expert_type", ["lora", "adapter"])
@pytest.mark.parametrize("family", ["mixtral", "olmoe"])
def test_renormalised_topk_equals_equations(family, expert_type, sparse, input_ids, tmp_path, monkeypatch):
    """G~ = TopK(softmax(W~ h)) / sum of the K kept weights, with the authors' experts: for 'adapter', SiLU and
    scale 1 (lora_alpha = r), w2(silu(w1 x)); dense and grouped-GEMM paths; the config round-trips."""
    config = PerftConfig(
        variant="R",
        num_experts=4,
        top_k=2,
        r=4,
        lora_alpha=4,
        expert_type=expert_type,
        adapter_act="silu",
        init_weights="perft",
        norm_topk_prob=True,
    )
    assert config.scaling == 1.0
    model = get_peft_model(base_model(family), config)
    _randomise_routers(model)
    for layer in _layers(model):  # the official B (1e-6) would hide every difference below the tolerance
        torch.nn.init.normal_(layer.perft_B["default"], std=0.5)
    logits = _logits_on_path(model, input_ids, sparse, monkeypatch)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["norm_topk_prob"] is True and saved["init_weights"] == "perft"

    tensors = _adapter_tensors(tmp_path)
    expected = _reference_logits(family, input_ids, config, tensors)
    torch.testing.assert_close(logits, expected.to(logits.dtype), atol=2e-5, rtol=1e-4)
    # Eq. 7 (not renormalised) is a different model: the switch must matter.
    literal = PerftConfig(**{**config.to_dict(), "norm_topk_prob": False, "peft_type": None})
    unnormalised = _reference_logits(family, input_ids, literal, tensors)
    assert not torch.allclose(logits, unnormalised.to(logits.dtype), atol=1e-3)

    loaded = PeftModel.from_pretrained(base_model(family), tmp_path)
    assert loaded.peft_config["default"].norm_topk_prob is True
    assert loaded.peft_config["default"].init_weights == "perft"
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, logits, atol=1e-6, rtol=1e-5)


# -- the recipes train as the authors' finetune.py ----------------------------------------------------------------


def _recipe_args(script, argv=()):
    """(script, method, training) arguments of ``recipes/<script>.py --model m --output_dir o <argv>``."""
    parser = runpy.run_path(str(RECIPES / f"{script}.py"), run_name="args")["p"]
    return parser.parse(["--model", "m", "--output_dir", "o", *argv])


@pytest.mark.parametrize("script, lr, norm", [("olmoe_perft", 1e-5, False), ("mixtral_perft_r", 2e-5, True)])
def test_recipe_configs_are_the_authors_training(script, lr, norm):
    args, method, training = _recipe_args(script)
    assert (training.learning_rate, method.init_weights, method.norm_topk_prob) == (lr, "perft", norm)
    assert (args.val_set_size, training.eval_steps, training.save_steps, training.load_best_model_at_end) == (
        120,
        80,
        80,
        True,
    )
    config = recipe.perft_config(method)
    assert config.init_weights == "perft" and config.norm_topk_prob == norm
    assert config.lora_alpha == 2 * method.r  # LoRA experts: the paper's alpha = 2r
    adapter = recipe.perft_config(_recipe_args(script, ["--expert_type", "adapter"])[1])
    assert adapter.adapter_act == "silu" and adapter.lora_alpha == adapter.r  # scale 1
    assert recipe.perft_config(_recipe_args(script, ["--lora_alpha", "3"])[1]).lora_alpha == 3
    if script == "olmoe_perft":
        assert config.gate_weights == "router"
    assert (training.eval_strategy, training.per_device_eval_batch_size) == (
        "steps",
        training.per_device_train_batch_size,
    )
    assert training.metric_for_best_model == "eval_loss"
    off = _recipe_args(script, ["--val_set_size", "0"])[2]
    assert off.eval_strategy == "no" and not off.load_best_model_at_end


def test_validation_split():
    from datasets import Dataset

    data = Dataset.from_list([{"i": i} for i in range(500)])
    train, validation = recipe.split_validation(data, 120, seed=42)
    held_out, kept = list(validation["i"]), list(train["i"])
    assert len(held_out) == 120 and len(kept) == 380
    assert sorted(kept + held_out) == list(range(500))
    assert held_out != list(range(380, 500)) and held_out != list(range(120))  # shuffled
    assert list(recipe.split_validation(data, 120, seed=42)[1]["i"]) == held_out  # the seed fixes it
    assert recipe.split_validation(data, 0, seed=42) == (data, None)
    with pytest.raises(ValueError, match="leaves no training examples"):
        recipe.split_validation(data, 500, seed=42)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--val_set_size", "-1"], "must be 0 or more"),
        (["--save_steps", "100"], "multiple of --eval_steps (80)"),
    ],
)
def test_validation_flag_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        _recipe_args("olmoe_perft", argv)
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_recipe_run_validates_and_keeps_the_best(tmp_path):
    """olmoe_perft --tiny with adapter experts: the saved config is the authors' (perft init, SiLU, scale 1), the
    validation loss is logged every --eval_steps on the held-out split, and the best checkpoint is tracked."""
    out = tmp_path / "run"
    run(
        [
            RECIPES / "olmoe_perft.py",
            "--tiny",
            "--output_dir",
            out,
            "--max_steps",
            "4",
            "--batch_size",
            "4",
            "--per_device_train_batch_size",
            "2",
            "--eval_steps",
            "2",
            "--save_steps",
            "2",
            "--expert_type",
            "adapter",
        ]
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["init_weights"], config["adapter_act"], config["norm_topk_prob"]) == ("perft", "silu", False)
    assert config["lora_alpha"] == config["r"]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [2, 4]
    assert state["best_model_checkpoint"] is not None


# -- the authors' OLMoE PERFT-R gates: the model router's weights ------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("expert_type, top_k", [("lora", 2), ("adapter", 2), ("lora", 1)])  # 1: below the model's 2
@pytest.mark.parametrize("family", ["olmoe", "mixtral"])
def test_base_gate_weights_equal_equations(family, expert_type, top_k, sparse, input_ids, tmp_path, monkeypatch):
    """gate_weights='base' (modeling_olmoe.py line 882): the PEFT router picks K experts; the k-th pick is weighted
    by the model router's k-th top-k weight for the token. Saved and loaded with the adapter."""
    config = PerftConfig(
        variant="R",
        num_experts=4,
        top_k=top_k,
        r=4,
        lora_alpha=8,
        init_weights=False,
        gate_weights="base",
        expert_type=expert_type,
        adapter_act="silu",
    )
    model = get_peft_model(base_model(family), config)
    _randomise_routers(model)
    logits = _logits_on_path(model, input_ids, sparse, monkeypatch)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["gate_weights"] == "base"
    tensors = _adapter_tensors(tmp_path)
    expected = _reference_logits(family, input_ids, config, tensors)
    torch.testing.assert_close(logits, expected.to(logits.dtype), atol=2e-5, rtol=1e-4)
    own = PerftConfig(**{**config.to_dict(), "gate_weights": "router", "peft_type": None})
    assert not torch.allclose(logits, _reference_logits(family, input_ids, own, tensors).to(logits.dtype), atol=1e-3), (
        "the switch must matter"
    )
    loaded = PeftModel.from_pretrained(base_model(family), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, logits, atol=1e-6, rtol=1e-5)


def test_base_gate_weights_bad_input():
    for kwargs in (dict(variant="D"), dict(variant="R", norm_topk_prob=True), dict(variant="R", gate_weights="x")):
        with pytest.raises(ValueError, match="gate_weights"):
            PerftConfig(**{"gate_weights": "base", **kwargs})
    with pytest.raises(ValueError, match="top_k=3 exceeds the model's 2"):  # tiny models route top-2
        get_peft_model(base_model("olmoe"), PerftConfig(variant="R", num_experts=4, top_k=3, gate_weights="base"))
    with pytest.raises(ValueError, match="does not receive routing"):
        get_peft_model(base_model("gpt_oss"), PerftConfig(variant="R", target_modules=["mlp"], gate_weights="base"))


def test_base_gate_weights_are_the_models_kth_largest_for_an_unsorted_router(input_ids, tmp_path, monkeypatch):
    """The authors' OLMoE code gives the k-th PEFT choice the k-th of the model's top-k weights *in descending
    order* (torch.topk sorts there); on a family whose router does not sort, the same must hold."""
    from . import test_perft_equations as equations

    family = "deepseek_v3"
    config = PerftConfig(
        variant="R", num_experts=4, top_k=2, r=4, lora_alpha=8, init_weights=False, gate_weights="base"
    )
    model = get_peft_model(base_model(family), config)
    _randomise_routers(model)
    with torch.no_grad():
        logits = model(input_ids).logits
    model.save_pretrained(tmp_path)
    tensors = _adapter_tensors(tmp_path)
    positional = _reference_logits(family, input_ids, config, tensors)  # the model's weights taken by position
    perft_term = equations.perft_term

    def sorted_routing(*args, routing=None, **kwargs):
        if routing is not None:
            routing = (routing[0], routing[1].sort(dim=-1, descending=True).values)
        return perft_term(*args, routing=routing, **kwargs)

    monkeypatch.setattr(equations, "perft_term", sorted_routing)
    expected = _reference_logits(family, input_ids, config, tensors)
    assert not torch.allclose(expected, positional, atol=1e-4), "this router's weights must come unsorted"
    torch.testing.assert_close(logits, expected.to(logits.dtype), atol=2e-5, rtol=1e-4)
