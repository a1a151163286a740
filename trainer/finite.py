"""Non-finite values: training stops at the first non-finite loss, naming the step and where the values come from,
and an adapter with a non-finite tensor is never saved."""

from __future__ import annotations

import torch
from torch import nn

from perft_peft.data.tokenization import IGNORE_INDEX


class NonFiniteError(FloatingPointError):
    """A loss or an adapter tensor that is NaN or infinite."""


def non_finite_parameters(model: nn.Module, limit: int = 5) -> list[str]:
    """Names of (at most ``limit``) parameters holding a NaN or an infinity, with how many values."""
    found = []
    for name, parameter in model.named_parameters():
        if parameter.is_floating_point() and parameter.numel():
            bad = int((~torch.isfinite(parameter.detach())).sum())
            if bad:
                found.append(f"{name} ({bad} of {parameter.numel()} values)")
                if len(found) == limit:
                    break
    return found


@torch.no_grad()
def first_non_finite_module(model: nn.Module, inputs: dict) -> str | None:
    """Run ``inputs`` through ``model`` again and return the first module (in call order) whose output is
    non-finite: where the NaN is born."""
    first: list[str] = []

    def hook(name):
        def check(module, args, output):
            tensors = output if isinstance(output, (tuple, list)) else (getattr(output, "logits", output),)
            if not first and any(
                torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all() for t in tensors
            ):
                first.append(f"{name} ({type(module).__name__})")

        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return first[0] if first else None


def describe_non_finite_loss(
    model: nn.Module, inputs: dict, loss: torch.Tensor, step: int, trace_forward: bool = True
) -> str:
    """Why the loss is non-finite: a batch without labels, non-finite parameters, and (``trace_forward``, not
    under ZeRO-3 where one rank cannot run a forward alone) the first module whose output is non-finite."""
    message = f"The training loss is {float(loss)} at step {step}: training stopped, nothing more is saved."
    labels = inputs.get("labels")
    if torch.is_tensor(labels) and not (labels != IGNORE_INDEX).any():
        return message + (
            f" No token of this batch has a label (every label is {IGNORE_INDEX}), so the loss is "
            "0/0: drop the examples that masking leaves without a label (tokenize_dataset warns with "
            "their count), or raise cutoff_len."
        )
    parameters = non_finite_parameters(model)
    if parameters:
        message += f" Non-finite parameters: {', '.join(parameters)}."
    module = first_non_finite_module(model, inputs) if trace_forward else None
    if module:
        message += f" The first module with a non-finite output is {module}."
    if not parameters:
        message += (
            " No parameter is non-finite, so the values overflowed in the forward or backward pass: lower "
            "the learning rate, or train in float32/bf16 instead of fp16."
        )
    return message


def check_finite_tensors(tensors: dict, where: str) -> None:
    """Raise before anything is written if a tensor to save holds a NaN or an infinity."""
    bad = [
        key
        for key, value in tensors.items()
        if torch.is_tensor(value) and value.is_floating_point() and value.numel() and not torch.isfinite(value).all()
    ]
    if bad:
        raise NonFiniteError(
            f"Refusing to save the adapter to {where}: {len(bad)} tensors hold NaN or infinite "
            f"values ({', '.join(bad[:5])}). The previous save there is left as it was."
        )
