"""PERFT-R's router statistics, the auxiliary losses built on them, and parameter accounting."""

import pytest
import torch
from peft import get_peft_model

from perft_peft import PerftConfig, PerftLayer, load_balancing_loss, parameter_accounting, router_records, router_z_loss

from .conftest import FAMILIES, VARIANT_KWARGS, base_model
from .reference import capture_router_inputs, reference_router_losses


def _routed_model(family="mixtral", **kwargs):
    model = get_peft_model(
        base_model(family), PerftConfig(variant="R", r=4, num_experts=4, top_k=2, init_weights=False, **kwargs)
    )
    for layer in model.modules():
        if isinstance(layer, PerftLayer):
            torch.nn.init.normal_(layer.perft_router["default"], std=1.0)
    return model.train()


@pytest.mark.parametrize("family", FAMILIES)
def test_aux_losses_equal_independent_computation(family):
    model = _routed_model(family)
    captured = capture_router_inputs(model)
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    model(ids, attention_mask=mask)
    expected_balance, expected_z = reference_router_losses(captured, mask.reshape(-1).bool(), top_k=2)
    torch.testing.assert_close(load_balancing_loss(model, mask).double(), expected_balance, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(router_z_loss(model, mask).double(), expected_z, rtol=1e-5, atol=1e-6)
    unmasked, _ = reference_router_losses(captured, torch.ones(18, dtype=torch.bool), top_k=2)
    torch.testing.assert_close(load_balancing_loss(model).double(), unmasked, rtol=1e-5, atol=1e-6)


def test_balanced_load_gives_k():
    """With a zero router every expert gets probability 1/M; a perfectly even top-K split then gives K."""
    model = _routed_model()
    for layer in model.modules():
        if isinstance(layer, PerftLayer):
            torch.nn.init.zeros_(layer.perft_router["default"])
            layer.router_records.clear()
    model(torch.randint(3, 128, (1, 4)))
    records = router_records(model)
    M = 4
    for record in records:  # make the choice exactly even: token t picks experts (2t, 2t+1) mod M
        t = torch.arange(record.top_k_index.shape[0])
        record.top_k_index.copy_(torch.stack([(2 * t) % M, (2 * t + 1) % M], dim=1))
    torch.testing.assert_close(load_balancing_loss(model), torch.tensor(2.0))


def test_records_only_in_training_and_never_accumulate():
    model = _routed_model()
    for _ in range(3):
        model(torch.randint(3, 128, (2, 5)))
    records = router_records(model)
    assert len(records) == 2 and all(r.logits.shape == (10, 4) and r.top_k_index.shape == (10, 2) for r in records)
    model.eval()
    with torch.no_grad():
        model(torch.randint(3, 128, (2, 5)))
        model.generate(input_ids=torch.randint(3, 128, (1, 3)), max_new_tokens=3, do_sample=False)
    assert router_records(model) == [] and load_balancing_loss(model) is None and router_z_loss(model) is None


def test_embedded_variant_records_model_routing_but_has_no_router_loss():
    model = get_peft_model(base_model(), PerftConfig(variant="E", r=4)).train()
    model(torch.randint(3, 128, (2, 5)))
    records = router_records(model)
    assert len(records) == 2 and records[0].logits is None and records[0].num_experts == 8
    assert load_balancing_loss(model) is None


def test_aux_loss_gradients_with_gradient_checkpointing():
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        model = _routed_model()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        out = model(ids, labels=ids)
        (out.loss + 0.01 * load_balancing_loss(model) + 0.001 * router_z_loss(model)).backward()
        grads.append([p.grad.clone() for n, p in model.named_parameters() if "perft_router" in n])
        assert len(router_records(model)) == 2
    for plain, checkpointed in zip(*grads):
        assert plain.abs().sum() > 0
        torch.testing.assert_close(plain, checkpointed)


def test_base_model_router_logits_still_reach_transformers():
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    base = base_model()
    expected = base(ids, labels=ids, output_router_logits=True)
    model = get_peft_model(base_model(), PerftConfig(variant="R", r=4, num_experts=4, top_k=2, init_weights=True))
    out = model(ids, labels=ids, output_router_logits=True)
    assert len(out.router_logits) == 2 and all(r.shape == (12, 8) for r in out.router_logits)
    torch.testing.assert_close(out.aux_loss, expected.aux_loss)
    torch.testing.assert_close(out.loss, expected.loss)


@pytest.mark.parametrize("variant", ["R", "E", "D", "S"])
@pytest.mark.parametrize("family", FAMILIES)
def test_trainable_counts_follow_formula(family, variant):
    model = get_peft_model(base_model(family), PerftConfig(variant=variant, r=4, **VARIANT_KWARGS[variant]))
    D, N, r, L, K_model = 32, 8, 4, 2, 2
    per_layer = {"R": 4 * 2 * D * r + 4 * D, "E": N * 2 * D * r, "D": 3 * 2 * D * r, "S": 2 * D * r}[variant]
    activated = {"R": 2 * 2 * D * r + 4 * D, "E": K_model * 2 * D * r, "D": 3 * 2 * D * r, "S": 2 * D * r}[variant]
    accounting = parameter_accounting(model)
    assert model.get_nb_trainable_parameters()[0] == accounting.trainable == L * per_layer
    assert accounting.activated_trainable == L * activated

    base = base_model(family)
    experts = [m for n, m in base.named_modules() if n.endswith(".experts")]
    assert len(experts) == L
    skipped = sum(p.numel() for m in experts for p in m.parameters()) * (N - K_model) // N
    assert accounting.base_total == sum(p.numel() for p in base.parameters())
    assert accounting.base_activated == accounting.base_total - skipped
    assert accounting.pct_activated == pytest.approx(100 * L * activated / (accounting.base_total - skipped))
    assert "% Act." in str(accounting)


def test_modules_to_save_count_as_trainable():
    model = get_peft_model(base_model(), PerftConfig(variant="S", r=4, modules_to_save=["lm_head"]))
    accounting = parameter_accounting(model)
    assert accounting.trainable == 2 * 2 * 32 * 4 + 128 * 32 == model.get_nb_trainable_parameters()[0]
    assert accounting.base_total == sum(p.numel() for p in base_model().parameters())


@pytest.mark.parametrize("where", ["lora_attn", "lora_router", "lora_experts"])
def test_peft_lora_accounting(where):
    """peft's LoRA: on modules and on the router every token uses it all; on the experts' [N, ...] parameters
    (target_parameters) it is one LoRA per expert and a token uses K of N."""
    from peft import LoraConfig

    from perft_peft.baselines import lora_config

    model = get_peft_model(base_model(), lora_config(where, r=2))
    base = base_model()
    D, L, N, K, r = base.config.hidden_size, base.config.num_hidden_layers, 8, 2, 2
    attention = base.model.layers[0].self_attn
    experts = base.model.layers[0].mlp.experts
    per_layer = {
        "lora_attn": r * (D + attention.q_proj.out_features) + r * (D + attention.v_proj.out_features),
        "lora_router": r * (D + N),
        "lora_experts": N * r * sum(sum(p.shape[1:]) for p in (experts.gate_up_proj, experts.down_proj)),
    }[where]
    accounting = parameter_accounting(model)
    assert isinstance(model.peft_config["default"], LoraConfig)
    assert accounting.trainable == model.get_nb_trainable_parameters()[0] == L * per_layer
    share = K / N if where == "lora_experts" else 1
    assert accounting.activated_trainable == L * per_layer * share
