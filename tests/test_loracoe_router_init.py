"""LoRACoE's random router initialisation (perft_peft/loracoe/router_init.py): the E composite experts start
different and stay different, E matters after training, the warmup -> joint switch moves each layer by < 1e-2 of
the LoRA update, and adapters saved with a zero router load as they were."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from perft_peft import LoraCoeConfig, set_loracoe_phase

from .test_loracoe import (  # noqa: F401  (one_thread: the module-wide autouse fixture)
    TARGETS,
    adapter_term,
    assert_close_to_warmup,
    layers,
    logits,
    one_thread,
    switch_changes,
    tiny_llama,
)


@pytest.fixture
def ids():
    return torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(1))


def coe(num_experts=2, construction="composition", seed=0, **kwargs):
    torch.manual_seed(seed)
    config = LoraCoeConfig(
        r=4,
        lora_alpha=8,
        num_experts=num_experts,
        target_modules=TARGETS,
        construction=construction,
        init_weights=False,
        **kwargs,
    )
    return get_peft_model(tiny_llama(), config)


def train(model, ids, steps=30):
    """AdamW in the joint phase (router trainable), the same batch every step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def expert_gaps(model, r=4):
    """Per layer: max |R_1 - R_0| between the two composite experts' router blocks."""
    return [
        (layer.loracoe_router["default"][r:] - layer.loracoe_router["default"][:r]).abs().max().item()
        for layer in layers(model)
    ]


def test_experts_differ_at_init_and_stay_different_after_joint_training(ids):
    model = coe(num_experts=2)
    before = expert_gaps(model)
    assert min(before) > 0
    routers = [layer.loracoe_router["default"].detach().clone() for layer in layers(model)]
    train(model, ids)
    assert all(not torch.equal(layer.loracoe_router["default"], old) for layer, old in zip(layers(model), routers))
    after = expert_gaps(model)
    # A zero router gives both experts the same gradient at every step: the gap would stay exactly 0.
    assert all(a > 0.5 * b for a, b in zip(after, before)), (before, after)


def test_num_experts_changes_the_trained_model(ids):
    """E = 2 starts as E = 1 plus a second expert (same A, B, first expert's router) and trains on the same data;
    with a zero router both would train alike (any E behaves as E = 1)."""
    one, two = coe(num_experts=1), coe(num_experts=2)
    with torch.no_grad():
        for a, b in zip(layers(one), layers(two)):
            for name in ("loracoe_A", "loracoe_B"):
                getattr(b, name)["default"].copy_(getattr(a, name)["default"])
            b.loracoe_router["default"][:4].copy_(a.loracoe_router["default"])
    base = logits(tiny_llama(), ids)
    train(one, ids)
    train(two, ids)
    effect = (logits(one, ids) - base).abs().max()
    assert (logits(two, ids) - logits(one, ids)).abs().max() > 0.05 * effect


@pytest.mark.parametrize("construction", ["composition", "partition"])
def test_switch_to_joint_moves_each_layer_by_less_than_one_percent(construction, ids):
    model = coe(num_experts=2, construction=construction)
    assert all(
        layer.loracoe_setting["default"].kappa == (4 if construction == "composition" else 2) for layer in layers(model)
    ), "default composition_scale='rank'"
    assert_close_to_warmup(model, ids, bound=1e-2)


@pytest.mark.parametrize(
    "construction, E, predicted", [("composition", 2, (15 / 16 / 2) ** 0.5), ("partition", 4, (3 / 4) ** 0.5)]
)
def test_switch_change_matches_the_documented_scale(construction, E, predicted):
    """router_init.py's first-order estimate: the change is ROUTER_INIT_SCALE * rms(x) * sqrt((1 - 1/r) / E)
    (composition) or ROUTER_INIT_SCALE * rms(x) * sqrt(1 - 1/E) (partition) of the LoRA update; inputs with
    rms(x) = 5 still stay below 1e-2."""
    from perft_peft.loracoe.router_init import ROUTER_INIT_SCALE

    holder = torch.nn.Module()
    holder.proj = torch.nn.Linear(512, 512, bias=False)
    torch.manual_seed(0)
    config = LoraCoeConfig(
        r=16, lora_alpha=32, num_experts=E, target_modules=["proj"], construction=construction, init_weights=False
    )
    from peft import inject_adapter_in_model

    layer = inject_adapter_in_model(config, holder).proj
    for rms in (1.0, 5.0):
        x = torch.randn(256, 512) * rms
        layer.set_phase("default", "warmup")
        warmup = adapter_term(layer, x)
        layer.set_phase("default", "joint")
        change = ((adapter_term(layer, x) - warmup).norm() / warmup.norm()).item()
        assert 0.7 < change / (ROUTER_INIT_SCALE * rms * predicted) < 1.3, change
        assert change < 1e-2


def test_zero_router_saved_by_old_versions_loads_and_behaves_as_before(ids, tmp_path):
    model = coe(num_experts=2)
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(str(path))
    routers = [key for key in tensors if key.endswith("loracoe_router")]
    assert len(routers) == len(layers(model)) and all(tensors[key].abs().max() > 0 for key in routers)
    save_file({k: torch.zeros_like(v) if k in routers else v for k, v in tensors.items()}, str(path))

    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)  # its fresh router is random: loading replaces it
    assert all(not layer.loracoe_router["default"].any() for layer in layers(loaded))
    joint = logits(loaded, ids)
    set_loracoe_phase(loaded, "warmup")
    torch.testing.assert_close(joint, logits(loaded, ids))  # zero router: c = 1, the LoRA, as before
    x = torch.randn(5, 32)
    layer = loaded.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    set_loracoe_phase(loaded, "joint")
    assert adapter_term(layer, x).abs().max() > 0
