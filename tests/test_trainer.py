"""PerftTrainer: router losses, the LoRACoE two-phase schedule, exact resume, telemetry."""

import json

import pytest
import torch
from datasets import Dataset
from peft import get_peft_model
from safetensors.torch import load_file

from perft_peft import LoraCoeConfig, PerftConfig
from perft_peft.testing import tiny_tokenizer
from perft_peft.trainer import PerftTrainer, PerftTrainingArguments

from .conftest import base_model
from .reference import capture_router_inputs, reference_router_losses

LORACOE_TARGETS = ["q_proj", "v_proj"]


def _dataset(rows=16, length=10):
    ids = torch.randint(3, 128, (rows, length), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids, "attention_mask": [[1] * length] * rows})


def _args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        data_seed=0,
        max_steps=4,
        disable_tqdm=True,
    )
    return PerftTrainingArguments(**{**defaults, **kwargs})


def _perft_model(**kwargs):
    return get_peft_model(base_model(), PerftConfig(variant="R", r=4, num_experts=4, top_k=2, **kwargs))


def _loracoe_model():
    return get_peft_model(base_model(), LoraCoeConfig(r=4, lora_alpha=8, num_experts=2, target_modules=LORACOE_TARGETS))


def _params(model, needle):
    return {n: p.detach().clone() for n, p in model.named_parameters() if needle in n}


def test_aux_loss_equals_independent_computation():
    model = _perft_model(init_weights=False).train()
    trainer = PerftTrainer(
        model=model, args=_args("unused", router_aux_loss_coef=0.5, router_z_loss_coef=0.1), train_dataset=_dataset()
    )
    captured = capture_router_inputs(model)
    batch = {k: torch.tensor(v) for k, v in _dataset(2, 7)[:2].items()}
    batch["attention_mask"][1, 5:] = 0
    loss = trainer.compute_loss(model, dict(batch))
    balance, z = reference_router_losses(captured, batch["attention_mask"].reshape(-1).bool(), top_k=2)
    with torch.no_grad():
        model_loss = model(**batch, output_router_logits=True).loss  # LM loss + 0.02 * base aux (Mixtral)
    torch.testing.assert_close(
        loss.detach().double(), model_loss.double() + 0.5 * balance + 0.1 * z, rtol=1e-5, atol=1e-6
    )


def test_aux_losses_average_over_gradient_accumulation():
    model = _perft_model(init_weights=False).train()
    trainer = PerftTrainer(
        model=model,
        args=_args("unused", gradient_accumulation_steps=2, router_aux_loss_coef=0.5),
        train_dataset=_dataset(),
    )
    trainer.current_gradient_accumulation_steps = 2
    captured = capture_router_inputs(model)
    batch = {k: torch.tensor(v) for k, v in _dataset(2, 7)[:2].items()}
    num_items = torch.tensor(2 * 6 * 2)  # both micro-batches' predicted tokens
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    balance, _ = reference_router_losses(captured, torch.ones(14, dtype=torch.bool), top_k=2)
    with torch.no_grad():
        out = model(**batch, output_router_logits=True, num_items_in_batch=num_items)
    lm_loss = out.loss - model.config.router_aux_loss_coef * out.aux_loss
    expected = lm_loss + (model.config.router_aux_loss_coef * out.aux_loss + 0.5 * balance) / 2
    torch.testing.assert_close(loss.detach().double(), expected.double(), rtol=1e-5, atol=1e-6)


def test_aux_coefficient_changes_router_trajectory_and_base_never_changes(tmp_path):
    routers, base_before = [], _params(base_model(), "")
    for coef in (0.0, 5.0):
        model = _perft_model()
        PerftTrainer(
            model=model, args=_args(tmp_path / str(coef), router_aux_loss_coef=coef), train_dataset=_dataset()
        ).train()
        routers.append(_params(model, "perft_router"))
        base_after = {
            n.replace("base_model.model.", "").replace(".base_layer", ""): p
            for n, p in model.named_parameters()
            if "perft_" not in n
        }
        assert base_after.keys() == base_before.keys()
        assert all(torch.equal(base_after[n], base_before[n]) for n in base_before)
    assert any(not torch.allclose(routers[0][n], routers[1][n]) for n in routers[0])


def test_logs_plots_and_routing_stats(tmp_path):
    model = _perft_model()
    trainer = PerftTrainer(model=model, args=_args(tmp_path, router_z_loss_coef=0.001), train_dataset=_dataset())
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    for key in (
        "aux_loss/perft_balance",
        "aux_loss/perft_z",
        "aux_loss/base",
        "routing/load_cv",
        "routing/load_entropy",
        "routing/layers.0.mlp.experts/default/load_cv",
        "routing/layers.1.mlp.experts/default/load_entropy",
    ):
        assert all(key in h for h in logs), key
    stats = json.loads((tmp_path / "routing_stats.json").read_text())["perft"]
    assert "loracoe" not in json.loads((tmp_path / "routing_stats.json").read_text())
    layer = stats["layers.0.mlp.experts/default"]
    assert len(layer["load"]) == 4 and layer["tokens"] == 4 * 4 * 10 * 2  # steps x batch x length x top-k
    assert abs(sum(layer["load"]) - 1) < 1e-6
    assert (tmp_path / "expert_load_default.png").read_bytes()[:4] == b"\x89PNG"


def test_keep_base_aux_loss_off_trains_without_router_logits(tmp_path):
    trainer = PerftTrainer(
        model=_perft_model(), args=_args(tmp_path, keep_base_aux_loss=False, max_steps=1), train_dataset=_dataset()
    )
    trainer.train()
    assert "aux_loss/base" not in trainer.state.log_history[0]


def test_gradient_checkpointing(tmp_path):
    trainer = PerftTrainer(
        model=_perft_model(),
        args=_args(
            tmp_path, max_steps=2, gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        ),
        train_dataset=_dataset(),
    )
    trainer.train()
    assert trainer.state.log_history[0]["aux_loss/perft_balance"] > 0


class _RecordRouter:
    """Snapshots LoRACoE routers, their requires_grad and the LR at every step end."""

    def __init__(self):
        self.steps = []

    def __call__(self, trainer):
        from transformers import TrainerCallback

        recorder = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
                routers = [p for n, p in trainer.model.named_parameters() if "loracoe_router" in n]
                recorder.steps.append(
                    (
                        state.global_step,
                        [p.detach().clone() for p in routers],
                        routers[0].requires_grad,
                        optimizer.param_groups[0]["lr"],
                    )
                )

        return Callback()


def _base_params(model, adapter_prefix):
    """The base model's parameters inside a peft model, under the base model's own names."""
    return {
        n.replace("base_model.model.", "").replace(".base_layer", ""): p.detach()
        for n, p in model.named_parameters()
        if adapter_prefix not in n
    }


def test_loracoe_two_phases(tmp_path):
    model = _loracoe_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a nonzero router, so that "untouched" and "reset to zero" can be told apart
        for name, p in model.named_parameters():
            if "loracoe_router" in name:
                p.normal_(std=0.5, generator=generator)
    routers_before = list(_params(model, "loracoe_router").values())  # the order the callback records them in
    base_before = _params(base_model(), "")
    record = _RecordRouter()
    trainer = PerftTrainer(
        model=model,
        args=_args(
            tmp_path,
            max_steps=5,
            loracoe_warmup_steps=2,
            loracoe_warmup_learning_rate=3e-2,
            learning_rate=1e-2,
            lr_scheduler_type="linear",
            weight_decay=0.1,
        ),
        train_dataset=_dataset(),
    )
    trainer.add_callback(record(trainer))
    trainer.train()
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "loss" in h]
    assert lrs[:2] == [3e-2, 3e-2]  # constant warmup LR
    assert lrs[2:] == pytest.approx([1e-2, 1e-2 * 2 / 3, 1e-2 / 3])  # linear over the 3 joint steps
    phases = [h["loracoe/joint_phase"] for h in trainer.state.log_history if "loss" in h]
    assert phases == [0, 0, 1, 1, 1]
    step1, step2 = record.steps[0], record.steps[1]
    assert len(routers_before) == len(step2[1]) == 4
    assert not step1[2] and not step2[2], "the router is frozen during warmup"
    assert all(torch.equal(p, q) for p, q in zip(step2[1], routers_before)), "warmup leaves the router untouched"
    assert record.steps[-1][2], "the router is trainable in the joint phase"
    assert all(not torch.allclose(p, q) for p, q in zip(record.steps[-1][1], routers_before)), "joint trains it"
    base_after = _base_params(model, "loracoe_")
    assert base_after.keys() == base_before.keys()
    assert all(torch.equal(base_after[n], base_before[n]) for n in base_before), "the base model never changes"
    usage = json.loads((tmp_path / "routing_stats.json").read_text())["loracoe"]
    assert sorted(usage) == sorted(f"layers.{i}.self_attn.{t}/default" for i in (0, 1) for t in LORACOE_TARGETS)
    for entry in usage.values():  # kappa = r: c averages to 1 over the ranks; only joint steps are counted
        assert len(entry["rank_usage"]) == 4 and entry["batches"] == 3
        assert sum(entry["rank_usage"]) / 4 == pytest.approx(1.0, abs=1e-5)
    assert (tmp_path / "rank_usage_default.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("resume_at", [2, 4])  # in warmup, in joint training
def test_exact_resume(tmp_path, resume_at):
    def run(output_dir, resume=None):
        model = _loracoe_model()
        args = _args(
            output_dir,
            max_steps=6,
            loracoe_warmup_steps=3,
            loracoe_warmup_learning_rate=3e-2,
            save_strategy="steps",
            save_steps=2,
        )
        trainer = PerftTrainer(model=model, args=args, train_dataset=_dataset())
        trainer.train(resume_from_checkpoint=resume)
        return _params(model, "loracoe_")

    full = run(tmp_path / "full")
    resumed = run(tmp_path / "full", resume=str(tmp_path / "full" / f"checkpoint-{resume_at}"))
    assert full.keys() == resumed.keys() and any("router" in n for n in full)
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], atol=1e-5, rtol=0)
    saved = load_file(str(tmp_path / "full" / "checkpoint-6" / "adapter_model.safetensors"))
    assert any(k.endswith("loracoe_router") for k in saved)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loracoe_warmup_steps=2, loracoe_warmup_epochs=1.0), "not both"),
        (dict(loracoe_warmup_epochs=1.0), "needs epoch-based training"),
        (dict(max_steps=-1, num_train_epochs=2, loracoe_warmup_epochs=2.0), "leaves no joint training"),
        (dict(router_aux_loss_coef=-1.0), "router_aux_loss_coef must be >= 0"),
        (dict(loracoe_warmup_learning_rate=0.0), "must be > 0"),
    ],
)
def test_argument_validation(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _args(tmp_path, **kwargs)


def test_warmup_without_loracoe_adapter(tmp_path):
    with pytest.raises(ValueError, match="the model has no LoRACoE adapter"):
        PerftTrainer(model=_perft_model(), args=_args(tmp_path, loracoe_warmup_steps=2), train_dataset=_dataset())


def test_mixin_with_trl_sft_trainer(tmp_path):
    trl = pytest.importorskip("trl")
    from perft_peft.trainer import PerftTrainerMixin

    class PerftSFTTrainer(PerftTrainerMixin, trl.SFTTrainer):
        pass

    config = trl.SFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        per_device_train_batch_size=2,
    )
    trainer = PerftSFTTrainer(
        model=_perft_model(), args=config, train_dataset=_dataset(), processing_class=tiny_tokenizer()
    )
    trainer.train()
    assert "aux_loss/perft_balance" in trainer.state.log_history[0]


def test_bf16_autocast_keeps_router_math_in_float32(tmp_path):
    from perft_peft import router_records

    model = _perft_model()
    trainer = PerftTrainer(model=model, args=_args(tmp_path, bf16=True, max_steps=2), train_dataset=_dataset())
    trainer.train()
    assert trainer.state.log_history[0]["aux_loss/perft_balance"] > 0
    records = router_records(model)
    assert records and all(r.logits.dtype == torch.float32 for r in records)
