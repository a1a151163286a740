"""What the speed benchmark measures: wall time of a call (CUDA events on GPU), peak tensor memory (the CUDA
allocator's peak on GPU; on CPU, live tensor storages counted by a dispatch mode) and FLOPs (torch's
FlopCounterMode, taught grouped GEMMs). Ratios are medians of per-repetition ratios taken side by side.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def timed(fn: Callable[[], object], device: torch.device, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds one call of ``fn`` takes: CUDA events around it on GPU, ``clock`` on CPU (wall time by default;
    ``time.process_time`` counts only this process's CPU time, which other processes on a shared machine disturb
    far less)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    begin = clock()
    fn()
    return clock() - begin


def interleaved_times(
    calls: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    progress: Callable[[Iterable], Iterable] = iter,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Time every call once per repetition, in an order rotated each repetition, so drift in the machine's speed
    (thermals, other processes) falls on all of them alike instead of on whichever ran last."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in progress(range(repeats)):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            times[name].append(timed(calls[name], device, clock))
    return times


def paired_ratio(times: list[float], baseline: list[float]) -> tuple[float, float, float]:
    """Median, 25th and 75th percentile of the per-repetition ratios times[i] / baseline[i]."""
    ratios = sorted(t / b for t, b in zip(times, baseline, strict=True))
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, q1, q3


class _LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storages allocated under the mode and still alive; records the peak. A storage is
    counted once however many views share it, and leaves the count when it is freed (checked before each op)."""

    def __init__(self) -> None:
        super().__init__()
        from torch.multiprocessing.reductions import StorageWeakRef

        self._weak_ref = StorageWeakRef
        self.live: dict[int, tuple[object, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                ref = self._weak_ref(storage)
                if ref.cdata not in self.live:
                    self.live[ref.cdata] = (ref, storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def resident_bytes(*holders) -> int:
    """Bytes of the distinct storages of the modules' parameters and buffers and the optimizers' state."""
    tensors = []
    for holder in holders:
        if isinstance(holder, torch.nn.Module):
            tensors += [*holder.parameters(), *holder.buffers()]
            tensors += [p.grad for p in holder.parameters() if p.grad is not None]
        elif isinstance(holder, torch.optim.Optimizer):
            tensors += [v for state in holder.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def peak_memory(fn: Callable[[], object], device: torch.device, *holders) -> int:
    """Peak bytes of tensor memory during one call of ``fn``: what was resident before (``holders``: model,
    optimizer) plus the peak of what the call allocated. On GPU, the CUDA allocator's own peak."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    before = resident_bytes(*holders)
    with _LiveTensorBytes() as tracker:
        fn()
    return before + tracker.peak


def _grouped_mm_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """2 * (rows) * (inner) * (cols) of a grouped GEMM, whichever of its 2-D / 3-D forms it is."""
    if len(a_shape) == 2 and len(b_shape) == 3:  # [S, k] x [G, k, n] -> [S, n]
        return 2 * a_shape[0] * a_shape[1] * b_shape[2]
    if len(a_shape) == 3 and len(b_shape) == 2:  # [G, m, k] x [k, S] -> [m, S]
        return 2 * a_shape[1] * a_shape[2] * b_shape[1]
    if len(a_shape) == 2 and len(b_shape) == 2:  # [m, S] x [S, n] -> [G, m, n] (weight gradients)
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]  # [G, m, k] x [G, k, n]


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products (forward and backward) one call of ``fn`` runs."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    for name in ("_grouped_mm", "grouped_mm"):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            mapping[op] = _grouped_mm_flop
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()
