"""peft's own conventions: ``autocast_adapter_dtype`` decides the adapters' storage dtype (router math stays
float32 whatever it is), and ``LoraCoeConfig`` selects layers with ``layers_to_transform`` / ``layers_pattern``
exactly as peft's LoRA does."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from perft_peft import LoraCoeConfig, PerftConfig
from perft_peft.loracoe import LoraCoeLayer
from perft_peft.loracoe import layer as loracoe_layer
from perft_peft.perft import PerftLayer
from perft_peft.testing import tiny_moe

CONFIGS = {
    "perft": lambda: PerftConfig(variant="R", r=4, num_experts=4, top_k=2, init_weights=False),
    "loracoe": lambda: LoraCoeConfig(r=4, num_experts=2, target_modules=["q_proj", "v_proj"], init_weights=False),
}
PREFIXES = ("perft_", "loracoe_")


def bf16_base():
    return tiny_moe("mixtral").to(torch.bfloat16)


def adapter_dtypes(model, adapter="default"):
    """{parameter name: dtype} of every tensor of ``adapter`` (A, B and the router of each layer)."""
    found = {
        name: p.dtype
        for name, p in model.named_parameters()
        if any(f"{prefix}" in name for prefix in PREFIXES) and name.endswith(f".{adapter}")
    }
    routers = [name for name in found if "router" in name]
    assert found and routers, "the adapter has tensors, routers included"
    return found


@pytest.mark.parametrize("method", CONFIGS)
def test_get_peft_model_and_add_adapter(method):
    """Default: float16/bfloat16 adapters are upcast to float32 (peft's default). autocast_adapter_dtype=False:
    every tensor, routers included, stays in the base dtype."""
    model = get_peft_model(bf16_base(), CONFIGS[method]())
    assert set(adapter_dtypes(model).values()) == {torch.float32}
    kept = get_peft_model(bf16_base(), CONFIGS[method](), autocast_adapter_dtype=False)
    assert set(adapter_dtypes(kept).values()) == {torch.bfloat16}
    kept.add_adapter("other", CONFIGS[method](), autocast_adapter_dtype=False)
    model.add_adapter("other", CONFIGS[method]())
    assert set(adapter_dtypes(kept, "other").values()) == {torch.bfloat16}
    assert set(adapter_dtypes(model, "other").values()) == {torch.float32}


@pytest.mark.parametrize("method", CONFIGS)
def test_loading_honours_autocast_adapter_dtype_and_stays_frozen(method, tmp_path):
    get_peft_model(tiny_moe("mixtral"), CONFIGS[method]()).save_pretrained(tmp_path)
    kept = PeftModel.from_pretrained(bf16_base(), tmp_path, autocast_adapter_dtype=False)
    assert set(adapter_dtypes(kept).values()) == {torch.bfloat16}
    kept.load_adapter(tmp_path, adapter_name="other", autocast_adapter_dtype=False)
    assert set(adapter_dtypes(kept, "other").values()) == {torch.bfloat16}
    upcast = PeftModel.from_pretrained(bf16_base(), tmp_path)
    upcast.load_adapter(tmp_path, adapter_name="other")
    for adapter in ("default", "other"):
        assert set(adapter_dtypes(upcast, adapter).values()) == {torch.float32}
    # peft upcasts by storing new tensors, which ParameterDict wraps as trainable Parameters: an adapter loaded for
    # inference must stay frozen all the same.
    for model in (kept, upcast):
        assert not any(p.requires_grad for p in model.parameters())
    trainable = PeftModel.from_pretrained(bf16_base(), tmp_path, is_trainable=True)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == set(adapter_dtypes(trainable))


@pytest.mark.parametrize("method", CONFIGS)
def test_transformers_load_adapter_stores_like_lora(method, tmp_path):
    """transformers' load_adapter has no autocast step: our adapters get the base dtype there, as peft's LoRA."""
    get_peft_model(tiny_moe("mixtral"), CONFIGS[method]()).save_pretrained(tmp_path / "ours")
    get_peft_model(tiny_moe("mixtral"), LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "lora")
    ours, lora = bf16_base(), bf16_base()
    ours.load_adapter(str(tmp_path / "ours"))
    lora.load_adapter(str(tmp_path / "lora"))
    lora_dtypes = {p.dtype for n, p in lora.named_parameters() if "lora_" in n}
    assert lora_dtypes == {torch.bfloat16} == set(adapter_dtypes(ours).values())


def test_perft_router_math_stays_float32_in_bf16_storage():
    model = get_peft_model(bf16_base(), CONFIGS["perft"](), autocast_adapter_dtype=False)
    inputs = {}
    for layer in model.modules():
        if isinstance(layer, PerftLayer):
            torch.nn.init.normal_(layer.perft_router["default"], std=4.0)  # logits ~20: bf16 rounding shows
            layer.register_forward_pre_hook(lambda module, args: inputs.__setitem__(module, args[0].detach()))
    model.train()
    with torch.no_grad():
        model(torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(1)))
    assert len(inputs) == 2
    for layer, h in inputs.items():
        record, W = layer.router_records["default"], layer.perft_router["default"]
        assert W.dtype == torch.bfloat16 and record.logits.dtype == torch.float32
        torch.testing.assert_close(
            record.logits, h.reshape(-1, h.shape[-1]).float() @ W.float().T, atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("storage,autocast", [(torch.bfloat16, False), (torch.float32, True)])
@pytest.mark.parametrize("construction", ["composition", "partition"])
def test_loracoe_router_math_stays_float32(storage, autocast, construction, monkeypatch):
    """Router logits are x.float() @ R.float().T for bf16 storage and under bf16 autocast alike (a bf16 GEMM, the
    fused [A; R] one under autocast included, is ~0.1 off for logits of ~20)."""
    config = LoraCoeConfig(r=4, num_experts=2, target_modules=["q_proj"], construction=construction, init_weights=False)
    base = bf16_base() if storage == torch.bfloat16 else tiny_moe("mixtral")
    model = get_peft_model(base, config, autocast_adapter_dtype=False)
    seen = []
    original = loracoe_layer.rank_weights
    monkeypatch.setattr(
        loracoe_layer, "rank_weights", lambda logits, *args: seen.append(logits) or original(logits, *args)
    )
    inputs = {}
    for layer in model.modules():
        if isinstance(layer, LoraCoeLayer):
            assert layer.loracoe_router["default"].dtype == storage
            torch.nn.init.normal_(layer.loracoe_router["default"], std=4.0)
            layer.register_forward_pre_hook(lambda module, args: inputs.__setitem__(module, args[0].detach()))
    ids = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(ids)
    assert len(seen) == len(inputs) == 2
    for logits, (layer, x) in zip(seen, inputs.items()):
        R = layer.loracoe_router["default"]
        expected = x.reshape(-1, x.shape[-1]).float() @ R.float().T
        assert expected.abs().max() > 5, "logits large enough for bf16 rounding to show"
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits.reshape(expected.shape), expected, atol=1e-4, rtol=1e-5)


# -- layers_to_transform / layers_pattern ---------------------------------------------------------------------------


def adapted(model, cls):
    return sorted(n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, cls))


@pytest.mark.parametrize(
    "selection",
    [
        dict(layers_to_transform=1),
        dict(layers_to_transform=[0]),
        dict(layers_to_transform=[1], layers_pattern="layers"),
    ],
)
def test_loracoe_layers_to_transform_selects_like_lora(selection, tmp_path):
    targets = ["q_proj", "v_proj"]
    model = get_peft_model(tiny_moe("mixtral"), LoraCoeConfig(r=4, target_modules=targets, **selection))
    lora = get_peft_model(tiny_moe("mixtral"), LoraConfig(r=4, target_modules=targets, **selection))
    names = adapted(model, LoraCoeLayer)
    assert names == adapted(lora, BaseTunerLayer)
    layer = selection["layers_to_transform"]
    assert len(names) == 2 and all(f".layers.{layer if isinstance(layer, int) else layer[0]}." in n for n in names)
    model.save_pretrained(tmp_path)
    assert adapted(PeftModel.from_pretrained(tiny_moe("mixtral"), tmp_path), LoraCoeLayer) == names


def test_loracoe_layers_pattern_names_the_layer_list():
    with pytest.raises(ValueError, match="matched no module"):
        get_peft_model(
            tiny_moe("mixtral"),
            LoraCoeConfig(target_modules=["q_proj"], layers_to_transform=[0], layers_pattern="blocks"),
        )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(target_modules=r".*q_proj", layers_to_transform=[0]), "layers_to_transform cannot be used"),
        (dict(target_modules=r".*q_proj", layers_pattern="layers"), "layers_pattern cannot be used"),
        (dict(target_modules=["q_proj"], layers_pattern="layers"), "only makes sense together"),
    ],
)
def test_loracoe_layer_selection_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoraCoeConfig(**kwargs)
