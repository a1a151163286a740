"""LoRACoE against docs/design.md's formula, computed independently; its phases, warm start and bad input (the
peft contract runs in test_contract.py's matrix).

The reference runs the *unadapted* base model with forward hooks on the targeted Linear modules that add
s * B (c(x) * (A x)) — or, for partition mode, Eq. 5's sum over rank groups — in float64 from the tensors read back
from the saved adapter_model.safetensors. The PEFT model's logits must match.
"""

import shutil

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from perft_peft import LoraCoeConfig, rank_importance, set_loracoe_phase
from perft_peft.analysis import plot_rank_importance
from perft_peft.loracoe import LoraCoeLayer, loracoe_parameter_count
from perft_peft.testing import tiny_moe

TARGETS = ["down_proj", "k_proj", "q_proj", "up_proj", "v_proj"]  # the paper's
MODES = [("composition", "rank"), ("composition", "none"), ("partition", "rank"), ("partition", "none")]


def tiny_llama(seed=0):
    """A dense model whose Linear shapes all differ (q 32->32, k/v 32->16, up 32->48, down 48->32)."""
    return tiny_moe("llama", seed, intermediate_size=48, max_position_embeddings=64)


def coe_config(construction="composition", composition_scale="rank", **kwargs):
    kwargs = {
        "r": 6 if construction == "partition" else 4,
        "lora_alpha": 8,
        "num_experts": 3,
        "target_modules": TARGETS,
        **kwargs,
    }
    return LoraCoeConfig(construction=construction, composition_scale=composition_scale, **kwargs)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: a second thread only adds synchronisation, which is slow on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ids():
    return torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(1))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def layers(model):
    return [m for m in model.modules() if isinstance(m, LoraCoeLayer)]


def randomise_routers(model, std=1.0):
    for layer in layers(model):
        for p in layer.loracoe_router.values():
            torch.nn.init.normal_(p, std=std)


def capture_io(model):
    """Forward hooks record each LoRACoE layer's input and output: {layer: (x, y)} of the last forward."""
    captured = {}

    def hook(module, args, output):
        captured[module] = (args[0].detach(), output.detach())

    for layer in layers(model):
        layer.register_forward_hook(hook)
    return captured


def switch_changes(model, ids):
    """Per LoRACoE layer: ||joint term - warmup term|| / ||warmup term|| on its inputs in the warmup phase (the
    change at the warmup -> joint switch relative to the LoRA update s B A x), largest over tokens."""
    set_loracoe_phase(model, "warmup")
    inputs = {}

    def record(module, args):
        inputs[module] = args[0].detach()

    handles = [layer.register_forward_pre_hook(record) for layer in layers(model)]
    logits(model, ids)
    for handle in handles:
        handle.remove()
    changes = []
    for layer in layers(model):
        x = inputs[layer]
        warmup = adapter_term(layer, x)
        set_loracoe_phase(model, "joint")
        joint = adapter_term(layer, x)
        set_loracoe_phase(model, "warmup")
        changes.append(((joint - warmup).norm(dim=-1) / warmup.norm(dim=-1)).max().item())
    set_loracoe_phase(model, "joint")
    return changes


def assert_close_to_warmup(model, ids, bound):
    """The switch changes every layer, by less than ``bound`` relative to the LoRA update."""
    changes = switch_changes(model, ids)
    assert len(changes) == len(layers(model)) > 0
    assert 0 < min(changes) and max(changes) < bound, changes


def adapter_term(layer, x):
    """What the layer adds to its base Linear on input x: output minus base output."""
    with torch.no_grad():
        return layer(x) - layer.base_layer(x)


def adapter_tensors(path):
    by_module = {}
    for key, value in load_file(str(path / "adapter_model.safetensors")).items():
        module, _, name = key.rpartition(".")
        by_module.setdefault(module.removeprefix("base_model.model."), {})[name] = value
    return by_module


def reference_term(x, tensors, config):
    """docs/design.md's formula (composition) or the paper's Eq. 4-5 (partition), float64, written out per expert."""
    A, B, R = (tensors[k].double() for k in ("loracoe_A", "loracoe_B", "loracoe_router"))
    x = x.double().reshape(-1, x.shape[-1])
    r, E, s = config.r, config.num_experts, config.lora_alpha / config.r
    if config.construction == "composition":
        kappa = r if config.composition_scale == "rank" else 1
        c = kappa * sum(torch.softmax(x @ R[e * r : (e + 1) * r].T, dim=-1) for e in range(E)) / E
        return s * (c * (x @ A.T)) @ B.T
    kappa, k = (E if config.composition_scale == "rank" else 1), r // E
    gate = torch.softmax(x @ R.T, dim=-1)  # [T, E]
    return (
        s
        * kappa
        * sum(gate[:, e : e + 1] * (x @ A[e * k : (e + 1) * k].T) @ B[:, e * k : (e + 1) * k].T for e in range(E))
    )


def reference_logits(base, ids, config, by_module):
    def hook_for(tensors):
        def hook(module, args, output):
            return output + reference_term(args[0], tensors, config).reshape(output.shape).to(output.dtype)

        return hook

    for name in by_module:
        base.get_submodule(name).register_forward_hook(hook_for(by_module[name]))
    return logits(base, ids)


# -- the formula ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("construction,scale", MODES)
def test_output_equals_formula(construction, scale, ids, tmp_path):
    config = coe_config(construction, scale, init_weights=False)
    model = get_peft_model(tiny_llama(), config)
    randomise_routers(model)
    out = logits(model, ids)
    with model.disable_adapter():
        base_out = logits(model, ids)
    model.save_pretrained(tmp_path)
    by_module = adapter_tensors(tmp_path)
    assert len(by_module) == 2 * len(TARGETS)
    assert all(t["loracoe_router"].abs().sum() > 0 and t["loracoe_B"].abs().sum() > 0 for t in by_module.values())
    expected = reference_logits(tiny_llama(), ids, config, by_module)
    assert not torch.allclose(out, base_out, atol=1e-4), "the adapter must change the output"
    torch.testing.assert_close(out, expected.to(out.dtype), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("construction", ["composition", "partition"])
def test_dropout_only_in_training(construction, ids, tmp_path):
    """lora_dropout acts in train() only: two training forwards differ, eval() follows the formula exactly."""
    config = coe_config(construction, init_weights=False, lora_dropout=0.5)
    model = get_peft_model(tiny_llama(), config)
    randomise_routers(model)
    model.train()
    first, second = logits(model, ids), logits(model, ids)
    with model.disable_adapter():  # the base model itself is deterministic in train() mode
        torch.testing.assert_close(logits(model, ids), logits(model, ids), atol=0, rtol=0)
    assert not torch.allclose(first, second, atol=1e-4), "dropout must act in train() mode"
    model.eval()
    out = logits(model, ids)
    model.save_pretrained(tmp_path)
    expected = reference_logits(tiny_llama(), ids, config, adapter_tensors(tmp_path))
    torch.testing.assert_close(out, expected.to(out.dtype), atol=2e-5, rtol=1e-4)


def test_output_equals_formula_on_moe_attention(ids, tmp_path):
    config = coe_config(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_weights=False)
    model = get_peft_model(tiny_moe("mixtral"), config)
    randomise_routers(model)
    out = logits(model, ids)
    model.save_pretrained(tmp_path)
    expected = reference_logits(tiny_moe("mixtral"), ids, config, adapter_tensors(tmp_path))
    torch.testing.assert_close(out, expected.to(out.dtype), atol=2e-5, rtol=1e-4)


def test_one_fused_gemm_equals_separate_matmuls():
    """x [A; R]^T is one GEMM (3 in all: W0, [A; R], B) and gives the outputs and gradients of separate matmuls."""
    model = get_peft_model(tiny_llama(), coe_config(init_weights=False))
    randomise_routers(model)
    layer = model.get_submodule("base_model.model.model.layers.0.mlp.up_proj")
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))

    class CountGemms(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountGemms.count += func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm)
            return func(*args, **(kwargs or {}))

    with CountGemms():
        fused = layer(x)
    assert CountGemms.count == 3

    A, B, R = layer.loracoe_A["default"], layer.loracoe_B["default"], layer.loracoe_router["default"]
    c = 4 * F.linear(x, R).unflatten(-1, (3, 4)).softmax(-1).mean(-2)
    separate = layer.base_layer(x) + 2.0 * F.linear(c * F.linear(x, A), B)
    torch.testing.assert_close(fused, separate)
    fused_grads = torch.autograd.grad(fused.square().sum(), (A, B, R))
    separate_grads = torch.autograd.grad(separate.square().sum(), (A, B, R))
    for a, b in zip(fused_grads, separate_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

    layer.fuse_router = False  # the benchmarks' unfused comparison: 4 GEMMs, same numbers
    CountGemms.count = 0
    with CountGemms():
        unfused = layer(x)
    assert CountGemms.count == 4
    torch.testing.assert_close(unfused, separate)


# -- phases ----------------------------------------------------------------------------------------------------------


def copy_lora_into(coe, lora):
    for name, module in lora.named_modules():
        if isinstance(module, LoraLinear):
            layer = coe.get_submodule(name)
            with torch.no_grad():
                layer.loracoe_A["default"].copy_(module.lora_A["default"].weight)
                layer.loracoe_B["default"].copy_(module.lora_B["default"].weight)


@pytest.mark.parametrize("construction", ["composition", "partition"])
def test_warmup_equals_plain_lora(construction, ids):
    config = coe_config(construction)
    lora = get_peft_model(
        tiny_llama(), LoraConfig(r=config.r, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    )
    coe = get_peft_model(tiny_llama(), config)
    copy_lora_into(coe, lora)
    randomise_routers(coe)
    joint = logits(coe, ids)
    set_loracoe_phase(coe, "warmup")
    torch.testing.assert_close(logits(coe, ids), logits(lora, ids))
    assert not torch.allclose(joint, logits(lora, ids), atol=1e-4), "in the joint phase the router must matter"
    for layer in layers(coe):
        assert layer.loracoe_A["default"].requires_grad and layer.loracoe_B["default"].requires_grad
        assert not layer.loracoe_router["default"].requires_grad
    coe.set_adapter("default")  # peft re-enables grads here; the warmup router must stay frozen
    assert not any(layer.loracoe_router["default"].requires_grad for layer in layers(coe))
    set_loracoe_phase(coe, "joint")
    assert all(layer.loracoe_router["default"].requires_grad for layer in layers(coe))
    torch.testing.assert_close(logits(coe, ids), joint)


@pytest.mark.parametrize("construction", ["composition", "partition"])
def test_switch_to_joint_with_zero_router_changes_nothing(construction, ids):
    model = get_peft_model(tiny_llama(), coe_config(construction, init_weights=False))
    assert all(layer.loracoe_phase["default"] == "joint" for layer in layers(model)), "default phase is joint"
    randomise_routers(model, std=0.0)  # a zero router (as adapters saved before the random initialisation have)
    set_loracoe_phase(model, "warmup")
    warmup = logits(model, ids)
    set_loracoe_phase(model, "joint")
    torch.testing.assert_close(logits(model, ids), warmup)

    # kappa = 1 (the paper's literal formula) with a zero router: c = 1/r (composition) or 1/E (partition), so
    # at every adapted Linear the term is the warmed-up LoRA's divided by r or E.
    config = coe_config(construction, "none", init_weights=False)
    literal = get_peft_model(tiny_llama(), config)
    randomise_routers(literal, std=0.0)
    with torch.no_grad():
        for mine, theirs in zip(layers(model), layers(literal)):
            theirs.loracoe_A["default"].copy_(mine.loracoe_A["default"])
            theirs.loracoe_B["default"].copy_(mine.loracoe_B["default"])
    captured = capture_io(literal)
    logits(literal, ids)
    set_loracoe_phase(model, "warmup")
    divisor = config.r if construction == "composition" else config.num_experts
    assert len(captured) == len(layers(model)) == 2 * len(TARGETS)
    for mine, theirs in zip(layers(model), layers(literal)):
        x, y = captured[theirs]
        with torch.no_grad():
            literal_term = y - theirs.base_layer(x)
        warmup_term = adapter_term(mine, x)
        assert warmup_term.abs().max() > 1e-2
        # Only float32 rounding of y = base + term separates the two (|y| < 1 here: ulp <= 6e-8).
        torch.testing.assert_close(literal_term, warmup_term / divisor, atol=1e-6, rtol=1e-6)


# -- warm start from a saved LoRA -------------------------------------------------------------------------------------


def save_lora(path, r=4, lora_alpha=8, target_modules=TARGETS, **kwargs):
    lora = get_peft_model(
        tiny_llama(),
        LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=target_modules, init_lora_weights=False, **kwargs),
    )
    lora.save_pretrained(path)
    return lora


def test_init_from_lora_reproduces_the_lora(ids, tmp_path):
    lora = save_lora(tmp_path / "lora")
    config = LoraCoeConfig(r=4, lora_alpha=8, num_experts=2, init_from_lora=str(tmp_path / "lora"))
    coe = get_peft_model(tiny_llama(), config)
    # Joint phase: the small random router keeps every layer within 1e-2 of the LoRA (test_loracoe_router_init.py).
    assert_close_to_warmup(coe, ids, bound=1e-2)
    set_loracoe_phase(coe, "warmup")
    torch.testing.assert_close(logits(coe, ids), logits(lora, ids), atol=0, rtol=0)
    set_loracoe_phase(coe, "joint")
    assert config.target_modules == TARGETS and config.init_from_lora is None
    assert config.warm_started_from == str(tmp_path / "lora")
    saved = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    assert len(saved) == 2 * len(layers(coe))
    for key, tensor in saved.items():
        module, factor = key.removesuffix(".weight").rsplit(".lora_", 1)
        layer = coe.get_submodule(module)
        assert torch.equal(getattr(layer, "loracoe_" + factor)["default"], tensor)

    coe.save_pretrained(tmp_path / "coe")
    shutil.rmtree(tmp_path / "lora")  # the saved LoRACoE must not need the LoRA any more
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "coe")
    torch.testing.assert_close(logits(loaded, ids), logits(coe, ids))


def test_init_from_lora_hub_id_goes_through_huggingface_hub(ids, tmp_path, monkeypatch):
    import huggingface_hub

    lora = save_lora(tmp_path / "lora")
    requested = []

    def fake_download(repo_id, filename, **kwargs):
        requested.append((repo_id, filename))
        return str(tmp_path / "lora" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    coe = get_peft_model(tiny_llama(), LoraCoeConfig(r=4, lora_alpha=8, init_from_lora="someone/a-lora"))
    assert requested == [("someone/a-lora", "adapter_config.json"), ("someone/a-lora", "adapter_model.safetensors")]
    set_loracoe_phase(coe, "warmup")
    torch.testing.assert_close(logits(coe, ids), logits(lora, ids), atol=0, rtol=0)


# -- bad inputs raise clear errors and leave the model as it was ------------------------------------------------------


def assert_untouched(base, before, ids):
    assert not any(isinstance(m, BaseTunerLayer) for m in base.modules())
    torch.testing.assert_close(logits(base, ids), before, atol=0, rtol=0)


@pytest.mark.parametrize("case", ["missing", "empty_dir", "rank", "alpha", "targets", "not_lora"])
def test_bad_init_from_lora(case, ids, tmp_path):
    source = tmp_path / "lora"
    config = dict(r=4, lora_alpha=8, target_modules=TARGETS)
    if case == "empty_dir":
        source.mkdir()
    elif case == "rank":
        save_lora(source, r=8, lora_alpha=16)
    elif case == "alpha":
        save_lora(source, lora_alpha=16)
    elif case == "targets":
        save_lora(source, target_modules=["q_proj", "v_proj"])
    elif case == "not_lora":
        get_peft_model(tiny_llama(), coe_config()).save_pretrained(source)
    message = {
        "missing": "not a local directory",
        "empty_dir": "has no adapter_config.json",
        "rank": "r=4",
        "alpha": "lora_alpha=16",
        "targets": "same modules",
        "not_lora": "not a peft LoRA",
    }[case]
    base = tiny_llama()
    before = logits(base, ids)
    with pytest.raises(ValueError, match=message):
        get_peft_model(base, LoraCoeConfig(init_from_lora=str(source), **config))
    assert_untouched(base, before, ids)


@pytest.mark.parametrize("family,target", [("llama", "input_layernorm"), ("mixtral", "experts")])
def test_non_linear_target(family, target, ids):
    base = tiny_llama() if family == "llama" else tiny_moe("mixtral")
    before = logits(base, ids)
    with pytest.raises(ValueError, match="nn.Linear modules only"):
        get_peft_model(base, LoraCoeConfig(target_modules=[target]))
    assert_untouched(base, before, ids)


def test_unknown_phase_or_adapter(ids):
    model = get_peft_model(tiny_llama(), coe_config(init_weights=False))
    set_loracoe_phase(model, "warmup")
    with pytest.raises(ValueError, match="Unknown LoRACoE phase"):
        set_loracoe_phase(model, "cooldown")
    with pytest.raises(ValueError, match="No LoRACoE adapter named"):
        set_loracoe_phase(model, "joint", adapter_names="other")
    with pytest.raises(ValueError, match="no LoRACoE layer"):
        set_loracoe_phase(tiny_llama(), "joint")
    assert all(layer.loracoe_phase["default"] == "warmup" for layer in layers(model))


# -- merging ---------------------------------------------------------------------------------------------------------


def test_no_phase_switch_while_merged(ids):
    """Merging (warmup only; test_contract.py checks merged equals unmerged) pins the phase until unmerged."""
    model = get_peft_model(tiny_llama(), coe_config(init_weights=False))
    set_loracoe_phase(model, "warmup")
    model.merge_adapter()
    with pytest.raises(ValueError, match="merged"):
        set_loracoe_phase(model, "joint")
    model.unmerge_adapter()
    set_loracoe_phase(model, "joint")
    assert all(layer.loracoe_phase["default"] == "joint" for layer in layers(model))


# -- peft / transformers integration ---------------------------------------------------------------------------------

# Save/load, Auto classes, load_adapter, several adapters, disable, unload: test_contract.py's matrix. Here only what
# is LoRACoE's own: the phase is not saved, and modules_to_save travels with the adapter.


@pytest.mark.parametrize("construction", ["composition", "partition"])
def test_save_and_load_with_modules_to_save(construction, ids, tmp_path):
    config = coe_config(construction, init_weights=False, modules_to_save=["lm_head"])
    model = get_peft_model(tiny_llama(), config)
    randomise_routers(model)
    with torch.no_grad():
        model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    set_loracoe_phase(model, "warmup")  # not saved: loading starts in the joint phase
    set_loracoe_phase(model, "joint")
    expected = logits(model, ids)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    torch.testing.assert_close(logits(loaded, ids), expected)
    assert all(layer.loracoe_phase["default"] == "joint" for layer in layers(loaded))
    trainable = PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    assert {n.rpartition(".loracoe_")[2] for n, p in trainable.named_parameters() if p.requires_grad} == {
        "A.default",
        "B.default",
        "router.default",
        "base_model.model.lm_head.modules_to_save.default.weight",
    }


def test_phase_per_adapter(ids):
    model = get_peft_model(tiny_llama(), coe_config(init_weights=False))
    model.add_adapter("other", coe_config("partition", init_weights=False))
    set_loracoe_phase(model, "warmup", adapter_names="other")
    assert all(layer.loracoe_phase == {"default": "joint", "other": "warmup"} for layer in layers(model))
    set_loracoe_phase(model, "joint", adapter_names="other")
    model.delete_adapter("other")
    assert all(list(layer.loracoe_router) == list(layer.loracoe_phase) == ["default"] for layer in layers(model))


@pytest.mark.parametrize("construction", ["composition", "partition"])
def test_bf16_model_computes_the_term_in_float32(construction, ids):
    """In a bf16 model the adapter (A, B, router: float32) computes its term in float32 from the bf16 input: the
    only error allowed is bf16 rounding of the layer's output (of the term, then of base + term)."""
    config = coe_config(construction, init_weights=False)
    model = get_peft_model(tiny_llama().to(torch.bfloat16), config)
    randomise_routers(model, std=4.0)  # logits of ~20: bf16 rounding of them would move the softmax by ~1e-2
    captured = capture_io(model)
    out = logits(model, ids)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert len(captured) == 2 * len(TARGETS)
    for layer, (x, y) in captured.items():
        tensors = {k: getattr(layer, k)["default"].detach() for k in ("loracoe_A", "loracoe_B", "loracoe_router")}
        assert x.dtype == y.dtype == torch.bfloat16 and all(t.dtype == torch.float32 for t in tensors.values())
        expected = reference_term(x, tensors, config).reshape(y.shape)  # float64
        with torch.no_grad():
            term = y.double() - layer.base_layer(x).double()  # exact: a difference of two bf16 numbers
        # bf16's unit roundoff is u = 2^-8: |fl(base + fl(t)) - base - t| <= u (|t| + |y|). 5% slack, and 1e-6 for
        # the float32 term's own error. A bf16 [A; R] GEMM exceeds this by ~1e-2 (its logits are ~0.1 off).
        tolerance = 1.05 * 2.0**-8 * (expected.abs() + y.double().abs()) + 1e-6
        assert expected.abs().max() > 0.1
        excess = (term - expected).abs() - tolerance
        assert (excess <= 0).all(), f"{excess.max():.3g} above bf16 output rounding"


# -- parameter accounting -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("construction", ["composition", "partition"])
def test_parameter_counts(construction):
    config = coe_config(construction)
    model = get_peft_model(tiny_llama(), config)
    r, E = config.r, config.num_experts
    counts = loracoe_parameter_count(model)
    assert len(counts.per_module) == 2 * len(TARGETS)
    routers = 0
    for name, count in counts.per_module.items():
        d_in, d_out = model.get_submodule(name).in_features, model.get_submodule(name).out_features
        router = E * r * d_in if construction == "composition" else E * d_in
        assert count == r * (d_in + d_out) + router
        routers += router
    assert model.get_nb_trainable_parameters()[0] == counts.total
    set_loracoe_phase(model, "warmup")
    assert model.get_nb_trainable_parameters()[0] == counts.total - routers


# -- rank importance (paper Eq. 3) -------------------------------------------------------------------------------------


def batches():
    gen = torch.Generator().manual_seed(2)
    return [{"input_ids": (x := torch.randint(3, 128, (2, 6), generator=gen)), "labels": x} for _ in range(2)]


def test_rank_importance_and_plot(tmp_path):
    model = get_peft_model(tiny_llama(), coe_config(init_weights=False))
    randomise_routers(model)
    model.train()
    result = rank_importance(model, batches(), progress=False)
    assert result.num_batches == 2 and len(result.per_rank) == 2 * len(TARGETS)
    assert all(v.shape == (4,) and (v >= 0).all() and v.sum() > 0 for v in result.per_rank.values())
    assert model.training and all(p.grad is None for p in model.parameters())

    # Eq. 3 by hand for one module: |dL/dA * A| with L the mean loss over the batches.
    A = model.get_submodule("base_model.model.model.layers.1.self_attn.v_proj").loracoe_A["default"]
    model.eval()
    loss = sum(model(**b).loss for b in batches()) / 2
    expected = (torch.autograd.grad(loss, A)[0] * A).abs()
    torch.testing.assert_close(result.A["model.layers.1.self_attn.v_proj"], expected.detach())

    path = plot_rank_importance(result, tmp_path / "importance.png")
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rank_importance_of_peft_lora():
    lora = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    result = rank_importance(lora, batches(), progress=False, max_batches=1)
    assert result.num_batches == 1
    assert sorted(result.per_module) == [
        f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")
    ]
    assert all(v.shape == (4,) and (v >= 0).all() for v in result.per_rank.values())


def test_shared_parameter_accounting_counts_loracoe_as_adapter():
    from peft import get_peft_model

    from perft_peft import LoraCoeConfig, parameter_accounting
    from perft_peft.loracoe import loracoe_parameter_count
    from perft_peft.testing import tiny_moe

    model = get_peft_model(tiny_moe(), LoraCoeConfig(r=4, num_experts=2, target_modules=["q_proj", "v_proj"]))
    accounting = parameter_accounting(model)
    assert accounting.trainable == accounting.activated_trainable == loracoe_parameter_count(model).total
    assert accounting.base_total == sum(p.numel() for p in tiny_moe().parameters())
