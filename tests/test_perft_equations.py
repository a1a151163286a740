"""PERFT outputs against DESIGN.md's equations, computed independently, for every variant x family x expert type.

The reference runs the *unadapted* base model with forward hooks on its experts modules that add the variant's
term, computed with plain loops from the tensors read back from the saved adapter_model.safetensors and the
routing the model itself passed to its experts. The PEFT model's logits must match.
"""

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file

from perft_peft import PerftConfig, PerftLayer
from perft_peft.moe import find_experts_modules

from .conftest import FAMILIES, VARIANT_KWARGS, base_model
from .reference import perft_term


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


def _reference_logits(family, ids, config, by_module):
    """The base model, with the equations added to each experts module's output by forward hooks."""
    base = base_model(family)

    def hook_for(tensors):
        def hook(module, args, output):
            h = args[0].reshape(-1, args[0].shape[-1])
            routing = (args[1], args[2]) if config.variant == "E" else None
            term = perft_term(config.variant, h, tensors, config.lora_alpha / config.r,
                              act=config.adapter_act if config.expert_type == "adapter" else None,
                              top_k=config.top_k, routing=routing)
            return output + term.reshape(output.shape).to(output.dtype)
        return hook

    names = find_experts_modules(base)
    assert sorted(names) == sorted(by_module), "every experts module must be adapted and saved"
    for name in names:
        base.get_submodule(name).register_forward_hook(hook_for(by_module[name]))
    with torch.no_grad():
        return base(ids).logits


@pytest.mark.parametrize("expert_type", ["lora", "adapter"])
@pytest.mark.parametrize("variant", ["R", "E", "D", "S"])
@pytest.mark.parametrize("family", FAMILIES)
def test_output_equals_equations(family, variant, expert_type, input_ids, tmp_path):
    config = PerftConfig(variant=variant, r=4, lora_alpha=8, expert_type=expert_type, init_weights=False,
                         adapter_act="gelu", **VARIANT_KWARGS[variant])
    model = get_peft_model(base_model(family), config)
    _randomise_routers(model)
    with torch.no_grad():
        logits = model(input_ids).logits
        base_logits = model.get_base_model()(input_ids).logits
        with model.disable_adapter():
            disabled = model(input_ids).logits
    model.save_pretrained(tmp_path)
    expected = _reference_logits(family, input_ids, config, _adapter_tensors(tmp_path))

    assert not torch.allclose(logits, disabled, atol=1e-4), "the adapter must change the output"
    torch.testing.assert_close(logits, base_logits)
    torch.testing.assert_close(logits, expected.to(logits.dtype), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["R", "E", "D", "S"])
@pytest.mark.parametrize("family", FAMILIES)
def test_identity_at_initialisation(family, variant, input_ids):
    base = base_model(family)
    with torch.no_grad():
        expected = base(input_ids).logits
    model = get_peft_model(base, PerftConfig(variant=variant, r=4, **VARIANT_KWARGS[variant]))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, expected, atol=0, rtol=0)


@pytest.mark.parametrize("variant", ["R", "E"])
def test_dense_and_sparse_paths_agree(variant):
    """Both ways of computing routed experts give the same outputs and gradients."""
    kwargs = dict(num_experts=16, top_k=2) if variant == "R" else {}
    results = []
    for ratio in (10**9, 0):  # never sparse, always sparse
        model = get_peft_model(base_model("olmoe", num_experts=16), PerftConfig(
            variant=variant, r=4, init_weights=False, **kwargs))
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


def test_whole_block_target_on_tuple_output(input_ids):
    """R/D/S may wrap a whole MoE block (GPT-OSS's returns a tuple): the term is added to its hidden states."""
    config = PerftConfig(variant="S", r=4, init_weights=False, target_modules=["mlp"])
    model = get_peft_model(base_model("gpt_oss"), config)
    layers = [m for m in model.modules() if isinstance(m, PerftLayer)]
    assert len(layers) == 2 and all(type(m.base_layer).__name__ == "GptOssMLP" for m in layers)
    with torch.no_grad():
        changed = model(input_ids).logits
        with model.disable_adapter():
            base = model(input_ids).logits
    assert torch.isfinite(changed).all() and not torch.allclose(changed, base)


def test_bf16_model_keeps_router_in_float32(input_ids):
    model = get_peft_model(base_model("mixtral").to(torch.bfloat16), PerftConfig(variant="R", r=4,
                                                                                 init_weights=False))
    model.train()
    out = model(input_ids).logits
    assert out.dtype == torch.bfloat16
    records = perft_records(model)
    assert records and all(r.logits.dtype == torch.float32 for r in records)


def perft_records(model):
    from perft_peft import router_records

    return router_records(model)
