"""PERFT outputs against docs/design.md's equations, computed independently, for every variant x family x expert type.

The reference runs the *unadapted* base model with forward hooks on its experts modules that add the variant's
term, computed with plain loops from the tensors read back from the saved adapter_model.safetensors and the
routing the model itself passed to its experts. The PEFT model's logits must match.
"""

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file

import perft_peft.perft.layer as perft_layer
from perft_peft import PerftConfig, PerftLayer, router_records
from perft_peft.moe import find_experts_modules

from .conftest import FAMILIES, VARIANT_KWARGS, base_model
from .reference import perft_term

VARIANTS = ["R", "E", "D", "S"]


def _randomise_routers(model):
    # The default router init is small; a wider one makes R's top-K choice differ from token to token.
    for layer in model.modules():
        if isinstance(layer, PerftLayer):
            for p in layer.perft_router.values():
                torch.nn.init.normal_(p, std=1.0)


def _adapter_tensors(path):
    tensors = load_file(str(path / "adapter_model.safetensors"))
    by_module = {}
    for key, value in tensors.items():
        module, _, name = key.rpartition(".")
        by_module.setdefault(module.removeprefix("base_model.model."), {})[name] = value
    return by_module


def _reference_logits(family, ids, config, by_module, plain=None):
    """The base model, with the equations added to each experts module's output by forward hooks. ``plain``
    (a list) receives the logits of the same fresh base model before the hooks are added."""
    base = base_model(family)
    if plain is not None:
        with torch.no_grad():
            plain.append(base(ids).logits)

    def hook_for(tensors):
        def hook(module, args, output):
            h = args[0].reshape(-1, args[0].shape[-1])
            routing = (args[1], args[2]) if config.variant == "E" or config.gate_weights == "base" else None
            term = perft_term(
                config.variant,
                h,
                tensors,
                config.lora_alpha / config.r,
                act=config.adapter_act if config.expert_type == "adapter" else None,
                top_k=config.top_k,
                routing=routing,
                norm_topk_prob=config.norm_topk_prob,
                base_gates=config.gate_weights == "base",
            )
            return output + term.reshape(output.shape).to(output.dtype)

        return hook

    names = find_experts_modules(base)
    assert sorted(names) == sorted(by_module), "every experts module must be adapted and saved"
    for name in names:
        base.get_submodule(name).register_forward_hook(hook_for(by_module[name]))
    with torch.no_grad():
        return base(ids).logits


def _force_sparse(model):
    """Always take the grouped-GEMM path (on CPU these shapes would otherwise use the dense one)."""
    for layer in model.modules():
        if isinstance(layer, PerftLayer):
            layer.sparse_min_expert_ratio = 0


def _peft_model(family, variant, expert_type, **kwargs):
    config = PerftConfig(
        variant=variant,
        r=4,
        lora_alpha=8,
        expert_type=expert_type,
        init_weights=False,
        adapter_act="gelu",
        **VARIANT_KWARGS[variant],
        **kwargs,
    )
    model = get_peft_model(base_model(family), config)
    _randomise_routers(model)
    return model, config


@pytest.mark.parametrize("expert_type", ["lora", "adapter"])
@pytest.mark.parametrize("variant", ["R", "E", "D", "S"])
@pytest.mark.parametrize("family", FAMILIES)
def test_output_equals_equations(family, variant, expert_type, input_ids, tmp_path):
    model, config = _peft_model(family, variant, expert_type)
    with torch.no_grad():
        logits = model(input_ids).logits
        with model.disable_adapter():
            disabled = model(input_ids).logits
    model.save_pretrained(tmp_path)
    fresh = []
    expected = _reference_logits(family, input_ids, config, _adapter_tensors(tmp_path), plain=fresh)

    assert not torch.allclose(logits, disabled, atol=1e-4), "the adapter must change the output"
    # Disabled = a freshly built base model, bit for bit (injection must not alter the base weights or its math).
    torch.testing.assert_close(disabled, fresh[0], atol=0, rtol=0)
    torch.testing.assert_close(logits, expected.to(logits.dtype), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("expert_type", ["lora", "adapter"])
@pytest.mark.parametrize("variant", ["R", "E"])
@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "olmoe"])
def test_sparse_path_equals_equations(family, variant, expert_type, input_ids, tmp_path, monkeypatch):
    """The grouped-GEMM path (taken on CUDA or for many experts) against the same equations."""
    calls = []
    sparse = perft_layer._sparse_experts
    monkeypatch.setattr(perft_layer, "_sparse_experts", lambda *a: calls.append(1) or sparse(*a))
    model, config = _peft_model(family, variant, expert_type)
    _force_sparse(model)
    with torch.no_grad():
        logits = model(input_ids).logits
    assert len(calls) == 2, "every adapted layer must have taken the sparse path"
    model.save_pretrained(tmp_path)
    expected = _reference_logits(family, input_ids, config, _adapter_tensors(tmp_path))
    torch.testing.assert_close(logits, expected.to(logits.dtype), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["R", "E", "D", "S"])
def test_dropout_only_in_training(variant, input_ids, tmp_path):
    """lora_dropout acts in train() only: two training forwards differ, eval() follows the equations exactly."""
    model, config = _peft_model("mixtral", variant, "lora", lora_dropout=0.5)
    model.train()
    with torch.no_grad():
        first, second = model(input_ids).logits, model(input_ids).logits
        with model.disable_adapter():  # the base model itself is deterministic in train() mode
            torch.testing.assert_close(model(input_ids).logits, model(input_ids).logits, atol=0, rtol=0)
    assert not torch.allclose(first, second, atol=1e-4), "dropout must act in train() mode"
    model.eval()
    with torch.no_grad():
        logits = model(input_ids).logits
    model.save_pretrained(tmp_path)
    expected = _reference_logits("mixtral", input_ids, config, _adapter_tensors(tmp_path))
    torch.testing.assert_close(logits, expected.to(logits.dtype), atol=2e-5, rtol=1e-4)


# LoRA experts on every family; parallel-adapter experts (B = 0 as well) on one.
@pytest.mark.parametrize(
    "family, variant, expert_type",
    [(f, v, "lora") for f in FAMILIES for v in VARIANTS] + [("mixtral", v, "adapter") for v in VARIANTS],
)
def test_identity_at_initialisation(family, variant, expert_type, input_ids):
    base = base_model(family)
    with torch.no_grad():
        expected = base(input_ids).logits
    model = get_peft_model(
        base,
        PerftConfig(
            variant=variant,
            r=4,
            expert_type=expert_type,
            adapter_act="gelu",
            init_weights=True,
            **VARIANT_KWARGS[variant],
        ),
    )
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, expected, atol=0, rtol=0)


@pytest.mark.parametrize("expert_type", ["lora", "adapter"])
@pytest.mark.parametrize("variant", ["R", "E"])
def test_dense_and_sparse_paths_agree(variant, expert_type):
    """Both ways of computing routed experts give the same outputs and gradients."""
    kwargs = dict(num_experts=16, top_k=2) if variant == "R" else {}
    results = []
    for ratio in (10**9, 0):  # never sparse, always sparse
        model = get_peft_model(
            base_model("olmoe", num_experts=16),
            PerftConfig(
                variant=variant, r=4, init_weights=False, expert_type=expert_type, adapter_act="gelu", **kwargs
            ),
        )
        _randomise_routers(model)
        for layer in model.modules():
            if isinstance(layer, PerftLayer):
                layer.sparse_min_expert_ratio = ratio
        ids = torch.randint(3, 128, (3, 9), generator=torch.Generator().manual_seed(0))
        loss = model(ids, labels=ids).loss
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((loss.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    for dense, sparse in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(dense, sparse, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("variant", ["R", "S"])
def test_whole_block_target_on_tuple_output(variant, input_ids, tmp_path):
    """R/D/S may wrap a whole MoE block (GPT-OSS's returns a tuple): the term, computed from the block's input
    hidden states, is added to the hidden states it returns."""
    config = PerftConfig(
        variant=variant, r=4, lora_alpha=8, init_weights=False, target_modules=["mlp"], **VARIANT_KWARGS[variant]
    )
    model = get_peft_model(base_model("gpt_oss"), config)
    _randomise_routers(model)
    layers = [m for m in model.modules() if isinstance(m, PerftLayer)]
    assert len(layers) == 2 and all(type(m.base_layer).__name__ == "GptOssMLP" for m in layers)
    with torch.no_grad():
        changed = model(input_ids).logits
        with model.disable_adapter():
            disabled = model(input_ids).logits
    assert torch.isfinite(changed).all() and not torch.allclose(changed, disabled, atol=1e-4)

    model.save_pretrained(tmp_path)
    by_module = _adapter_tensors(tmp_path)
    base = base_model("gpt_oss")
    assert sorted(by_module) == [f"model.layers.{i}.mlp" for i in (0, 1)]

    def hook_for(tensors):
        def hook(module, args, output):
            h = args[0].reshape(-1, args[0].shape[-1])
            term = perft_term(variant, h, tensors, config.scaling, top_k=config.top_k)
            return (output[0] + term.reshape(output[0].shape).to(output[0].dtype), *output[1:])

        return hook

    for name, tensors in by_module.items():
        base.get_submodule(name).register_forward_hook(hook_for(tensors))
    with torch.no_grad():
        expected = base(input_ids).logits
    torch.testing.assert_close(changed, expected.to(changed.dtype), atol=2e-5, rtol=1e-4)


def test_bf16_model_keeps_router_in_float32(input_ids):
    """PERFT-R's router logits are h.float() @ W.float().T even in a bf16 model (a bf16 GEMM is ~1e-2 off)."""
    model = get_peft_model(base_model("mixtral").to(torch.bfloat16), PerftConfig(variant="R", r=4, init_weights=False))
    _randomise_routers(model)
    inputs = []
    for layer in model.modules():
        if isinstance(layer, PerftLayer):
            layer.register_forward_pre_hook(lambda module, args: inputs.append((module, args[0].detach())))
    model.train()
    with torch.no_grad():
        out = model(input_ids).logits
    assert out.dtype == torch.bfloat16
    records = router_records(model)
    assert len(records) == len(inputs) == 2
    for record, (layer, h) in zip(records, inputs):
        assert record is layer.router_records["default"]
        assert h.dtype == torch.bfloat16 and record.logits.dtype == torch.float32
        W = layer.perft_router["default"]
        assert W.dtype == torch.float32
        expected = h.reshape(-1, h.shape[-1]).float() @ W.float().T
        assert expected.abs().max() > 1, "logits large enough for bf16 rounding to show"
        torch.testing.assert_close(record.logits, expected, atol=1e-5, rtol=1e-5)


def _trained_logits(variant, r, init_weights, input_ids, **kwargs):
    """Logits after three Adam steps on one batch, from seed 0 (every random draw the same)."""
    torch.manual_seed(0)
    config = PerftConfig(variant=variant, r=r, lora_alpha=2 * r, init_weights=init_weights, **kwargs)
    model = get_peft_model(base_model(), config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(input_ids, labels=input_ids).loss.backward()
        optimizer.step()
    with torch.no_grad():
        return model(input_ids).logits


def test_dense_lora_experts_are_one_single_expert_of_their_summed_rank(input_ids):
    """Eq. 9 with M LoRA experts of rank r is Eq. 10 with one of rank M·r (Σ_j B_j A_j = [B_1 … B_M][A_1; …; A_M]);
    with peft's initialisation (A's bound depends on D, not r; B = 0) and lora_alpha = 2r both start and train
    alike, so the sweep's D(2) r=7 and S r=14 are one model (docs/benchmarks.md). The authors' initialisation, whose
    A scale depends on r, tells them apart."""
    dense = _trained_logits("D", 3, True, input_ids, num_experts=2)
    single = _trained_logits("S", 6, True, input_ids)
    torch.testing.assert_close(dense, single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dense, _trained_logits("S", 3, True, input_ids), atol=1e-3)  # rank matters
    official_dense = _trained_logits("D", 3, "perft", input_ids, num_experts=2)
    assert not torch.allclose(official_dense, _trained_logits("S", 6, "perft", input_ids), atol=1e-3)
