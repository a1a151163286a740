"""PerftTrainer: transformers' Trainer plus PERFT's router losses, LoRACoE's two phases and routing telemetry.

The additions live in ``PerftTrainerMixin`` so they compose with other Trainer subclasses:
``class MySFT(PerftTrainerMixin, trl.SFTTrainer)``.
"""

from __future__ import annotations

import contextlib
import os

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback
from transformers.optimization import get_scheduler
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import TrainOutput

from perft_peft import load_balancing_loss, router_z_loss
from perft_peft.loracoe import LoraCoeLayer, set_loracoe_phase

from . import checkpoints
from .arguments import PerftTrainingArguments
from .finite import NonFiniteError, check_finite_tensors, describe_non_finite_loss
from .output_dir import output_dir_lock, publish, recover, staging_dir
from .routing import RoutingStats

# Defaults for the mixin when the Trainer's args are not PerftTrainingArguments (e.g. a plain SFTConfig).
_DEFAULTS = {
    name: PerftTrainingArguments.__dataclass_fields__[name].default
    for name in (
        "router_aux_loss_coef",
        "router_z_loss_coef",
        "keep_base_aux_loss",
        "loracoe_warmup_steps",
        "loracoe_warmup_epochs",
        "loracoe_warmup_learning_rate",
        "resume_from_other_run",
    )
}
# The TrainingArguments that define what a run computes (its length excluded: a run may be resumed to go further).
# The batch enters as its global size, so a run may resume on another number of devices.
IDENTITY_ARGS = (
    "learning_rate",
    "seed",
    "data_seed",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "optim",
    "bf16",
    "fp16",
    *(name for name in _DEFAULTS if name != "resume_from_other_run"),
)


def _two_phase(warmup_steps: int, warmup_ratio: float, joint):
    """LR multiplier: constant ``warmup_ratio`` for the first steps, then the joint schedule restarted at 0.
    A plain function (not a callable object) so LambdaLR's state_dict stays picklable."""

    def lr_lambda(step: int) -> float:
        return warmup_ratio if step < warmup_steps else joint(step - warmup_steps)

    return lr_lambda


class PerftTrainerMixin:
    """Adds to a transformers Trainer: loss = model loss (+ base aux) + coefficients x PERFT router losses;
    the LoRACoE warmup -> joint schedule driven by the global step; routing telemetry, plots and stats; and the
    guards of a run, so that nothing is lost or silently wrong: a lock on output_dir, a run fingerprint in
    every checkpoint checked on resume, a stop at the first non-finite loss, no non-finite adapter saved.

    ``run_identity``: what else defines the run (data, base model, ...), added to the fingerprint.
    """

    def __init__(self, *args, run_identity: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_identity = dict(run_identity or {})
        self.routing_stats_on_train_end = True  # a caller publishing its own final folder turns this off
        model = self.model
        self.loracoe_layers = [m for m in model.modules() if isinstance(m, LoraCoeLayer)]
        if self._arg("loracoe_warmup_steps") or self._arg("loracoe_warmup_epochs"):
            if not self.loracoe_layers:
                raise ValueError(
                    "loracoe_warmup_steps/epochs is set, but the model has no LoRACoE adapter. "
                    "Remove the warmup arguments or wrap the model with a LoraCoeConfig."
                )
        elif self._arg("loracoe_warmup_learning_rate") is not None:
            raise ValueError("loracoe_warmup_learning_rate is set without loracoe_warmup_steps/epochs.")
        if not any(isinstance(m, BaseTunerLayer) for m in model.modules()):
            raise ValueError("PerftTrainer trains PEFT adapters: wrap the model with get_peft_model first.")
        self._keep_moe_blocks_out_of_zero3_leaves()
        self.routing = RoutingStats(model)
        self.loracoe_warmup_steps = 0  # resolved when the scheduler is created
        self._loss_sums: dict[str, list] = {}
        self.add_callback(_PerftCallback(self))

    def _keep_moe_blocks_out_of_zero3_leaves(self) -> None:
        """DeepSpeed ZeRO-3 treats the Mixtral / Qwen2-MoE / Qwen3-MoE blocks as "leaf" modules by default (it
        gathers their parameters on entry and skips hooks inside). Parameters that an adapter adds inside such a
        block then come back empty in backward (deepspeed 0.19). transformers 5 keeps all experts of a block in one
        module, so the leaf buys little: unless the user configured leaf modules, turn the default off."""
        plugin = getattr(getattr(self, "accelerator", None), "state", None)
        plugin = getattr(plugin, "deepspeed_plugin", None)
        if plugin is None:
            return
        zero = plugin.deepspeed_config.setdefault("zero_optimization", {})
        if zero.get("stage") == 3 and "leaf_module" not in zero:
            zero["leaf_module"] = {"classes": [], "names": [], "name_suffixes": []}

    def _arg(self, name: str):
        # None means unset: trl's SFTConfig has its own `router_aux_loss_coef` (the base model's), default None.
        value = getattr(self.args, name, None)
        return _DEFAULTS[name] if value is None else value

    # -- run guards ----------------------------------------------------------------------------------------

    def run_fingerprint(self) -> dict:
        """What defines this run: the adapter configs, the training settings that change the result, and
        ``run_identity``. Written to output_dir and to every checkpoint; a resume must match it."""
        model = self.accelerator.unwrap_model(self.model)
        peft = {name: config.to_dict() for name, config in getattr(model, "peft_config", {}).items()}
        training = {name: getattr(self.args, name, None) for name in IDENTITY_ARGS}
        training["global_batch_size"] = (
            self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        )
        return checkpoints.normalise({"peft": peft, "training": training, "run": self.run_identity})

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        zero = self.is_world_process_zero()
        with output_dir_lock(self.args.output_dir) if zero else contextlib.nullcontext():
            if zero:
                checkpoints.write_fingerprint(self.args.output_dir, self.run_fingerprint())
            if resume_from_checkpoint:
                resume_from_checkpoint = self._checked_checkpoint(resume_from_checkpoint)
                if checkpoints.ends_run(resume_from_checkpoint, self.args.max_steps, self.args.num_train_epochs):
                    return self._finished(resume_from_checkpoint)
            return super().train(resume_from_checkpoint, *args, **kwargs)

    def _checked_checkpoint(self, checkpoint) -> str:
        """The checkpoint to resume from (for True: the latest intact one this run wrote), once it is known to be
        this run's and to fit the model; its routing statistics are restored."""
        identity, allow_other_run = self.run_fingerprint(), bool(self._arg("resume_from_other_run"))
        path = (
            checkpoints.latest_intact(self.args.output_dir, identity, allow_other_run)
            if checkpoint is True
            else str(checkpoint)
        )
        if not os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
            raise ValueError(
                f"{path} is not an intact checkpoint (no {TRAINER_STATE_NAME}: its save was "
                f"interrupted). Resume from an earlier checkpoint, or pass True for the latest intact."
            )
        checkpoints.check_same_run(path, identity, allow_other_run)
        checkpoints.check_adapter_fits(path, self.accelerator.unwrap_model(self.model))
        self.routing.load(path)
        return path

    def _finished(self, checkpoint: str):
        """Resuming a checkpoint that ends the run trains nothing: the model gets its weights, as the finished
        run left them."""
        if self.is_deepspeed_enabled:
            raise ValueError(
                f"{checkpoint} already ends this run: there is nothing left to train. Its adapter is the run's result."
            )
        print(
            f"[perft-peft] {checkpoint} already ends this run: nothing left to train; loading its weights", flush=True
        )
        self._load_from_checkpoint(checkpoint)
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        return TrainOutput(self.state.global_step, float("nan"), {})

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        # One host sync per micro-batch, as transformers' own logging_nan_inf_filter (which would hide this) does.
        if not torch.isfinite(loss).all():
            raise NonFiniteError(
                describe_non_finite_loss(
                    self.accelerator.unwrap_model(model),
                    self._prepare_inputs(inputs),
                    loss,
                    self.state.global_step + 1,
                    trace_forward=not self.is_deepspeed_enabled,
                )
            )
        return loss

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False, *, extra=None) -> None:
        """A checkpoint (``_internal_call``) is stamped with the run fingerprint and the routing totals. A final
        save is written to a staging folder beside ``output_dir`` and swapped in as a whole (output_dir.publish):
        a reader sees the previous adapter or the new one, never a mix. ``extra(folder)``, run on the main
        process before the swap, adds files that belong with the adapter (run_info.json, ...)."""
        output_dir = output_dir or self.args.output_dir
        if _internal_call:
            super().save_model(output_dir, _internal_call)
            if self.is_world_process_zero():
                checkpoints.write_fingerprint(output_dir, self.run_fingerprint())
                self.routing.save_state(output_dir)
            return
        zero = self.is_world_process_zero()
        with output_dir_lock(output_dir) if zero else contextlib.nullcontext():
            staging = staging_dir(output_dir)
            if zero:
                recover(output_dir)  # also drops a staging folder a failed save left
            super().save_model(staging)  # every rank: ZeRO-3 gathers the shards; the main process writes
            if zero:
                if extra is not None:
                    extra(staging)
                publish(staging, output_dir)
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.args.should_save:
            from peft.utils import get_peft_model_state_dict

            model = self.accelerator.unwrap_model(self.model)
            tensors = (
                state_dict
                if state_dict is not None
                else (get_peft_model_state_dict(model) if hasattr(model, "peft_config") else model.state_dict())
            )
            check_finite_tensors(tensors, output_dir or self.args.output_dir)
        super()._save(output_dir, state_dict)

    # -- loss ------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training
        keep_base = self._arg("keep_base_aux_loss")
        base_coef = getattr(self._model_config(), "router_aux_loss_coef", None)
        if base_coef is not None and "output_router_logits" not in inputs:
            inputs = {**inputs, "output_router_logits": bool(keep_base and training)}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if training:
            loss = self._add_aux_losses(loss, outputs, inputs, num_items_in_batch, base_coef)
            self.routing.update()
        return (loss, outputs) if return_outputs else loss

    def _add_aux_losses(self, loss, outputs, inputs, num_items_in_batch, base_coef):
        # When the model loss is normalised over the whole accumulated batch (num_items_in_batch), the Trainer
        # does not divide by the accumulation steps, so per-micro-batch terms are divided here: every term ends
        # up as its mean over the micro-batches of one optimizer step.
        # Same rule as Trainer.training_step, including a subclass's own `loss_is_scaled_for_ga`.
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None or self.compute_loss_func is not None
            )
        per_step = 1.0 / self.current_gradient_accumulation_steps if scaled else 1.0
        mask = inputs.get("attention_mask")
        terms = [
            ("aux_loss/perft_balance", self._arg("router_aux_loss_coef"), load_balancing_loss),
            ("aux_loss/perft_z", self._arg("router_z_loss_coef"), router_z_loss),
        ]
        for key, coef, fn in terms:
            if coef:
                value = fn(self.model, mask)
                if value is not None:
                    loss = loss + coef * per_step * value.to(loss.device)
                    self._track(key, value)
        base_aux = getattr(outputs, "aux_loss", None)
        if base_aux is not None:
            self._track("aux_loss/base", base_aux)
            if inputs.get("labels") is not None and per_step != 1.0:
                # transformers adds coef * aux_loss to the LM loss once per micro-batch: average it too.
                loss = loss - base_coef * (1.0 - per_step) * base_aux.to(loss.device)
        return loss

    def _model_config(self):
        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        return getattr(model, "config", None)

    def _track(self, key: str, value: torch.Tensor) -> None:
        total = self._loss_sums.setdefault(key, [0.0, 0])
        total[0] = total[0] + value.detach().float()
        total[1] += 1

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # a training log: add what accumulated since the last one
            for key, (total, count) in self._loss_sums.items():
                logs[key] = float(total) / count
            self._loss_sums = {}
            logs.update(self.routing.log_window())
            if self.loracoe_layers:
                # the phase of the optimizer step just taken (global_step already counts it)
                logs["loracoe/joint_phase"] = float(self.state.global_step > self.loracoe_warmup_steps)
        super().log(logs, *args, **kwargs)

    # -- LoRACoE schedule -----------------------------------------------------------------------------------

    def create_optimizer(self, *args, **kwargs):
        if self.loracoe_layers:
            set_loracoe_phase(self.model, "joint")  # routers must be in the optimizer for the joint phase
        return super().create_optimizer(*args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        warmup = (
            self.args.loracoe_warmup_steps_for(num_training_steps)
            if self.loracoe_layers and isinstance(self.args, PerftTrainingArguments)
            else 0
        )
        self.loracoe_warmup_steps = warmup
        if not warmup or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = optimizer if optimizer is not None else self.optimizer
        joint_steps = num_training_steps - warmup
        joint = get_scheduler(
            self.args.lr_scheduler_type,
            optimizer=optimizer,
            num_warmup_steps=self.args.get_warmup_steps(joint_steps),
            num_training_steps=joint_steps,
            scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
        )
        if not isinstance(joint, LambdaLR):
            raise ValueError(
                f"lr_scheduler_type={self.args.lr_scheduler_type!r} cannot follow a LoRACoE warmup; "
                "use a step-based schedule such as 'linear', 'cosine' or 'constant'."
            )
        ratio = (self._arg("loracoe_warmup_learning_rate") or self.args.learning_rate) / self.args.learning_rate
        self.lr_scheduler = LambdaLR(optimizer, [_two_phase(warmup, ratio, f) for f in joint.lr_lambdas])
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def loracoe_phase_at(self, global_step: int) -> str:
        return "warmup" if global_step < self.loracoe_warmup_steps else "joint"

    def create_model_card(self, *args, **kwargs):
        """Trainer's card (its training summary), then our block for a PERFT / LoRACoE adapter, naming the repo
        ``push_to_hub`` uploads it to (``perft_peft.hub``; peft's card hook alone cannot know the repo)."""
        from perft_peft import hub

        super().create_model_card(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        if self.is_world_process_zero() and hub.is_our_adapter(model):
            hub.write_model_card(model, self.args.output_dir, repo_id=self.hub_model_id)


class _PerftCallback(TrainerCallback):
    """Sets the LoRACoE phase from the global step (so a resumed run is in the right phase) and saves the
    routing statistics and plots when training ends."""

    def __init__(self, trainer: PerftTrainerMixin):
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        if self.trainer.loracoe_layers:
            set_loracoe_phase(self.trainer.model, self.trainer.loracoe_phase_at(state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        if self.trainer.loracoe_layers:
            set_loracoe_phase(self.trainer.model, "joint")
        if state.is_world_process_zero and self.trainer.routing_stats_on_train_end:
            self.trainer.routing.save(args.output_dir)


class PerftTrainer(PerftTrainerMixin, Trainer):
    """transformers.Trainer for PERFT and LoRACoE adapters (see PerftTrainerMixin)."""
