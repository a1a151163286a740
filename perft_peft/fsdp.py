"""FSDP launches that would not shard: refused before anything is loaded.

``accelerate launch`` with a ``distributed_type: FSDP`` config sets ``ACCELERATE_USE_FSDP=true`` for every
process, but accelerate 1.15 turns that into FSDP only for multi-accelerator runs (several GPUs, NPUs, XPUs...).
On CPU processes it keeps ``MULTI_CPU`` and trains with DDP — every rank holding the whole model — without a
word; with a single process it simply does not shard. The recipes stop instead, saying so.
"""

from __future__ import annotations

import os

from accelerate.utils import DistributedType


def check_fsdp_launch(training_args) -> None:
    """Raise ``SystemExit`` with the reason when FSDP was asked for (``ACCELERATE_USE_FSDP``) but these processes
    will not run it (their accelerate state is not FSDP-capable)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    state = training_args.distributed_state
    if state.distributed_type not in (DistributedType.NO, DistributedType.MULTI_CPU):
        return
    where = "CPU processes" if state.distributed_type == DistributedType.MULTI_CPU else "a single process"
    raise SystemExit(
        f"[perft-peft] This run was launched with an FSDP accelerate config, but it runs on {where} "
        f"(accelerate: distributed_type={state.distributed_type.value}), where accelerate does not shard: it would "
        "silently train without FSDP (DDP on CPU, every rank holding the whole model). Stopped before loading "
        "the model. Launch on several GPUs (recipes/configs/accelerate_fsdp2.yaml), or use a config without FSDP "
        "(recipes/configs/accelerate_zero3_cpu.yaml for a multi-process CPU run)."
    )
