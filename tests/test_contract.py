"""The peft contract every adapter of this package keeps, run for every case of one matrix (as peft runs each of its
tuners through ``PeftCommonTester``): PERFT's four variants x its two expert types and LoRACoE's two constructions.

Each case is a small factory: the base model it adapts (a tiny Mixtral; save/load also runs PERFT-lora on every other
tiny family) and the config (with overrides) it adapts it with; each check below runs on every case. What a method
computes is tested against its equations elsewhere (test_perft_equations.py, test_loracoe.py); here only that peft's
and transformers' entry points keep it intact.
"""

from dataclasses import dataclass, field, replace
from typing import Callable

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from perft_peft import LoraCoeConfig, PerftConfig, set_loracoe_phase
from perft_peft.testing import tiny_moe

from .conftest import FAMILIES, VARIANT_KWARGS


@dataclass
class Case:
    name: str
    config_cls: type
    kwargs: dict
    prefix: str
    merge_error: tuple[type, str]  # what merging the adapter as created raises
    bad_configs: list = field(default_factory=list)  # (overrides, message) each config must refuse
    bad_target: tuple[str, str] = ("nonexistent", "")  # a target_modules entry get_peft_model must refuse, message
    mergeable: Callable | None = None  # puts the model in a state that merges, where the method has one
    check_saved: Callable | None = None  # (tensors, config, model) -> None: the method's on-disk shapes
    family: str = "mixtral"  # of the tiny base model

    def config(self, **overrides):
        return self.config_cls(**{**self.kwargs, **overrides})

    def base(self):
        return tiny_moe(self.family)


def _perft_saved(tensors, config, model):
    D, N, r = 32, 8, config.r
    M = {"R": config.num_experts, "E": N, "D": config.num_experts, "S": 1}[config.variant]
    shapes = {"perft_A": (M, r, D), "perft_B": (M, D, r), "perft_router": (M, D)}
    assert tensors and all(k.split(".")[-2] == "experts" for k in tensors)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {k: shapes[k.rsplit(".", 1)[-1]] for k in tensors}
    assert sum(k.endswith("perft_router") for k in tensors) == (2 if config.variant == "R" else 0)
    assert (config.base_hidden_size, config.base_num_experts) == (D, N)


def _loracoe_saved(tensors, config, model):
    r, E = config.r, config.num_experts
    assert len(tensors) == 3 * 2 * len(config.target_modules)
    for key, value in tensors.items():
        module, _, name = key.rpartition(".")
        linear = model.get_submodule(module.removeprefix("base_model.model."))
        d_in, d_out = linear.in_features, linear.out_features
        router = E * r if config.construction == "composition" else E
        assert (
            tuple(value.shape)
            == {"loracoe_A": (r, d_in), "loracoe_B": (d_out, r), "loracoe_router": (router, d_in)}[name]
        ), key


PERFT_BAD = [
    (dict(variant="X"), "Unknown PERFT variant 'X'"),
    (dict(r=0), "r must be a positive integer"),
    (dict(r=-4), "r must be a positive integer"),
    (dict(r=2.5), "r must be a positive integer"),
    (dict(lora_alpha=0), "lora_alpha must be a positive number"),
    (dict(expert_type="prefix"), "expert_type must be one of"),
    (dict(expert_type="adapter", adapter_act="nope"), "Unknown adapter_act 'nope'"),
    (dict(lora_dropout=1.0), r"lora_dropout must be in \[0, 1\)"),
]
PERFT_VARIANT_BAD = {
    "R": [
        (dict(num_experts=2, top_k=3), "top_k=3 is larger than num_experts=2"),
        (dict(num_experts=0), "num_experts must be a positive integer"),
    ],
    "E": [
        (dict(num_experts=4), "PERFT-E does not take `num_experts`"),
        (dict(top_k=1), "PERFT-E does not take `top_k`"),
    ],
    "D": [(dict(top_k=2), "PERFT-D activates all its experts")],
    "S": [
        (dict(num_experts=2), "PERFT-S does not take `num_experts`"),
        (dict(top_k=1), "PERFT-S does not take `top_k`"),
    ],
}
LORACOE_BAD = [
    (dict(composition_scale="sqrt"), "composition_scale"),
    (dict(construction="moe"), "construction"),
    (dict(r=0), "r must be"),
    (dict(num_experts=0), "num_experts"),
    (dict(lora_dropout=1.0), "lora_dropout"),
    (dict(lora_alpha=-1), "lora_alpha"),
]


def _warmup(model):
    set_loracoe_phase(model, "warmup")


CASES = [
    Case(
        f"perft-{variant}-{expert_type}",
        PerftConfig,
        dict(variant=variant, r=4, expert_type=expert_type, adapter_act="gelu", **VARIANT_KWARGS[variant]),
        "perft_",
        (TypeError, "cannot be folded"),
        PERFT_BAD + PERFT_VARIANT_BAD[variant],
        ("nonexistent", "matched no module"),
        check_saved=_perft_saved,
    )
    for variant in "REDS"
    for expert_type in ("lora", "adapter")
]
CASES += [
    Case(
        f"loracoe-{construction}",
        LoraCoeConfig,
        dict(construction=construction, r=4, lora_alpha=8, num_experts=2, target_modules=["q_proj", "v_proj"]),
        "loracoe_",
        (ValueError, "joint phase"),
        LORACOE_BAD + ([(dict(r=6, num_experts=4), "divisible")] if construction == "partition" else []),
        ("post_attention_layernorm", "nn.Linear modules only"),
        mergeable=_warmup,
        check_saved=_loracoe_saved,
    )
    for construction in ("composition", "partition")
]
cases = pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
FAMILY_CASES = [
    replace(case, name=f"{case.name}-{family}", family=family)
    for case in CASES
    if case.name.startswith("perft-") and case.name.endswith("-lora")
    for family in FAMILIES
    if family != "mixtral"
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models are tiny: a second thread only adds synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def trained_like(model, prefix, seed=3):
    """Random values in every adapter tensor, as after training (B starts at zero, routers may too)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if prefix in name:
                p.normal_(std=0.3)
    return model


def adapted(case, seed=3):
    return trained_like(get_peft_model(case.base(), case.config()), case.prefix, seed)


def tuner_layers(model):
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def without_auto_mapping(config):
    return {k: v for k, v in config.to_dict().items() if k not in ("auto_mapping", "inference_mode")}


# -- save / load ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES + FAMILY_CASES, ids=[case.name for case in CASES + FAMILY_CASES])
def test_save_pretrained_and_from_pretrained(case, input_ids, tmp_path):
    model = adapted(case)
    expected = logits(model, input_ids)
    assert not torch.allclose(expected, logits(case.base(), input_ids), atol=1e-4), "the adapter must act"
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]  # safetensors only
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert all(case.prefix in key for key in tensors)
    config = PeftConfig.from_pretrained(tmp_path)
    assert type(config) is case.config_cls
    assert without_auto_mapping(config) == without_auto_mapping(model.peft_config["default"])
    case.check_saved(tensors, config, model.base_model.model)

    for kwargs in ({}, {"low_cpu_mem_usage": True}, {"is_trainable": True}):
        loaded = PeftModel.from_pretrained(case.base(), tmp_path, **kwargs)
        torch.testing.assert_close(logits(loaded, input_ids), expected, atol=0, rtol=0)
        trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
        assert trainable == (
            {n for n, _ in loaded.named_parameters() if case.prefix in n} if kwargs.get("is_trainable") else set()
        ), kwargs


@cases
def test_auto_peft_model_and_transformers_load_adapter(case, input_ids, tmp_path):
    case.base().save_pretrained(tmp_path / "base")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), case.config())
    expected = logits(trained_like(model, case.prefix), input_ids)
    model.save_pretrained(tmp_path / "adapter")
    assert PeftConfig.from_pretrained(tmp_path / "adapter").base_model_name_or_path == str(tmp_path / "base")

    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")
    torch.testing.assert_close(logits(auto.eval(), input_ids), expected, atol=0, rtol=0)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    plain.load_adapter(str(tmp_path / "adapter"), adapter_name="mine")
    torch.testing.assert_close(logits(plain.eval(), input_ids), expected, atol=0, rtol=0)


# -- several adapters ------------------------------------------------------------------------------------------------


def partner(case):
    """Another case of the same method (next in the matrix): a second adapter of a different kind."""
    same = [c for c in CASES if c.config_cls is case.config_cls]
    return same[(same.index(case) + 1) % len(same)]


@cases
def test_two_adapters_switch_save_reload_delete(case, input_ids, tmp_path):
    model = adapted(case)
    first = logits(model, input_ids)
    model.add_adapter("second", partner(case).config())
    trained_like(model, ".second", seed=5)  # the second adapter only
    torch.testing.assert_close(logits(model, input_ids), first, atol=0, rtol=0)  # adding does not activate
    model.set_adapter("second")
    second = logits(model, input_ids)
    assert not torch.allclose(first, second, atol=1e-4)
    ours = [(n, p) for n, p in model.named_parameters() if case.prefix in n]
    assert all(p.requires_grad == n.endswith(".second") for n, p in ours)

    model.save_pretrained(tmp_path)  # every adapter, each in its own folder
    reloaded = PeftModel.from_pretrained(case.base(), tmp_path)
    reloaded.load_adapter(tmp_path / "second", adapter_name="second")
    torch.testing.assert_close(logits(reloaded, input_ids), first, atol=0, rtol=0)
    reloaded.set_adapter("second")
    torch.testing.assert_close(logits(reloaded, input_ids), second, atol=0, rtol=0)

    model.set_adapter("default")
    model.delete_adapter("second")
    assert list(model.peft_config) == ["default"] and model.active_adapter == "default"
    assert all("second" not in n for n, _ in model.named_parameters())
    torch.testing.assert_close(logits(model, input_ids), first, atol=0, rtol=0)


# -- disable, generate, unload, merge -------------------------------------------------------------------------------


@cases
def test_disable_generate_unload(case, input_ids):
    base = case.base()
    base_logits = logits(base, input_ids)
    base_tokens = base.generate(input_ids, max_new_tokens=5, do_sample=False)
    types = {name: type(m) for name, m in case.base().named_modules()}
    model = get_peft_model(base, case.config())
    trained_like(model, case.prefix)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, input_ids), base_logits, atol=0, rtol=0)
        assert torch.equal(model.generate(input_ids=input_ids, max_new_tokens=5, do_sample=False), base_tokens)

    tokens = model.generate(input_ids=input_ids, max_new_tokens=5, do_sample=False)
    by_hand = input_ids  # greedy decoding with the adapter's full forward, no cache
    for _ in range(5):
        by_hand = torch.cat([by_hand, logits(model, by_hand)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(tokens, by_hand)
    assert not torch.equal(tokens, base_tokens), "the trained adapter must change what is generated"

    unloaded = model.unload()
    assert {name: type(m) for name, m in unloaded.named_modules()} == types
    torch.testing.assert_close(logits(unloaded, input_ids), base_logits, atol=0, rtol=0)


@cases
def test_merge(case, input_ids):
    """Merging raises a clear error where the method cannot fold into the base weights (and leaves the model as it
    was); where it can (LoRACoE's warmup phase), merged equals unmerged."""
    model = adapted(case)
    before = logits(model, input_ids)
    weights = {name: p.clone() for name, p in model.named_parameters()}
    count = len(tuner_layers(model))
    exception, message = case.merge_error
    for merge in (model.merge_and_unload, model.merge_adapter):
        with pytest.raises(exception, match=message):
            merge()
    assert len(tuner_layers(model)) == count > 0 and not any(layer.merged for layer in tuner_layers(model))
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
    torch.testing.assert_close(logits(model, input_ids), before, atol=0, rtol=0)
    if case.mergeable is None:
        return

    case.mergeable(model)
    unmerged = logits(model, input_ids)
    model.merge_adapter()
    assert any(not torch.equal(p, weights[name]) for name, p in model.named_parameters())
    torch.testing.assert_close(logits(model, input_ids), unmerged, atol=1e-5, rtol=1e-4)
    model.unmerge_adapter()
    assert all(torch.allclose(p, weights[name], atol=1e-6) for name, p in model.named_parameters())
    merged = model.merge_and_unload(safe_merge=True)
    assert not tuner_layers(merged)
    torch.testing.assert_close(logits(merged, input_ids), unmerged, atol=1e-5, rtol=1e-4)


# -- adapter names and bad input: a clear error, the model left as it was -------------------------------------------


def untouched(model):
    return not tuner_layers(model) and not hasattr(model, "peft_config")


@cases
@pytest.mark.parametrize("name", ["<prefix>A", "keys", "update", "base_layer", "weight", "a.b", "1st", ""])
@pytest.mark.filterwarnings("ignore:Adapter name '' should not be contained in the prefix")
def test_adapter_names_peft_forbids(case, name, input_ids):
    """Names that would clash with the layers' attributes or state-dict keys (check_adapter_name)."""
    name = name.replace("<prefix>", case.prefix)
    base = case.base()
    with pytest.raises(ValueError, match="Invalid adapter name|clashes with an attribute"):
        get_peft_model(base, case.config(), adapter_name=name)
    assert untouched(base)

    model = adapted(case)
    before = logits(model, input_ids)
    with pytest.raises(ValueError, match="Invalid adapter name|clashes with an attribute"):
        model.add_adapter(name, case.config())
    assert list(model.peft_config) == ["default"]
    assert all(n.endswith(".default") for n, _ in model.named_parameters() if case.prefix in n)
    torch.testing.assert_close(logits(model, input_ids), before, atol=0, rtol=0)


@pytest.mark.parametrize(
    "case, overrides, message",
    [(case, overrides, message) for case in CASES for overrides, message in case.bad_configs],
    ids=[
        f"{case.name}-{'-'.join(f'{k}={v}' for k, v in overrides.items())}"
        for case in CASES
        for overrides, _ in case.bad_configs
    ],
)
def test_bad_config(case, overrides, message):
    with pytest.raises(ValueError, match=message):
        case.config(**overrides)


@cases
def test_bad_target_leaves_the_model(case, input_ids):
    target, message = case.bad_target
    base = case.base()
    with pytest.raises(ValueError, match=message):
        get_peft_model(base, case.config(target_modules=[target]))
    assert untouched(base)

    model = adapted(case)
    before = logits(model, input_ids)
    with pytest.raises(ValueError, match=message):
        model.add_adapter("second", case.config(target_modules=[target]))
    assert list(model.peft_config) == ["default"]
    assert all(n.endswith(".default") for n, _ in model.named_parameters() if case.prefix in n)
    torch.testing.assert_close(logits(model, input_ids), before, atol=0, rtol=0)
