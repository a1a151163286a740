"""Pre-training a tiny base model from scratch, so that the demo and the paper sweep fine-tune adapters on a base
that knows something: every weight trained, next-token loss plus the model's own router balancing loss."""

from __future__ import annotations

import torch


def pretrain(model, batches, optimizer, schedule, desc: str, progress: bool = True) -> float:
    """Train every weight of a tiny base on ``batches`` (a sized iterable of token-id tensors): next-token loss
    plus the model's own router balancing loss, gradients clipped at 1. Returns the last loss; the model is left
    in eval mode. The demo and the paper sweep pre-train their bases with it."""
    from tqdm.auto import tqdm

    model.train()
    for ids in (bar := tqdm(batches, desc=desc, disable=not progress)):
        loss = model(input_ids=ids, labels=ids, output_router_logits=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return loss.item()
