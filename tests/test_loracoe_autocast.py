"""LoRACoE under bf16/fp16 autocast: router logits (and so the composition weights c) in float32, still from one
fused GEMM (as PERFT's router: tests/test_perft_equations.py::test_bf16_model_keeps_router_in_float32)."""

import pytest
import torch
from peft import inject_adapter_in_model
from torch.utils._python_dispatch import TorchDispatchMode

from perft_peft import LoraCoeConfig


class CountGemms(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
            self.dtypes.append(args[-1].dtype)
        return func(*args, **(kwargs or {}))


def reference_c(x, R, construction, r, E):
    logits = x.double() @ R.double().T
    if construction == "composition":
        return r * logits.unflatten(-1, (E, r)).softmax(-1).mean(-2)
    return E * logits.softmax(-1).repeat_interleave(r // E, dim=-1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("construction", ["composition", "partition"])
def test_autocast_keeps_router_logits_float32_in_one_gemm(dtype, construction):
    torch.manual_seed(0)
    holder = torch.nn.Module()
    holder.proj = torch.nn.Linear(64, 64, bias=False)
    r, E = 8, 2
    config = LoraCoeConfig(
        r=r, lora_alpha=16, num_experts=E, target_modules=["proj"], construction=construction, init_weights=False
    )
    layer = inject_adapter_in_model(config, holder).proj.train()
    R = layer.loracoe_router["default"]
    with torch.no_grad():
        R.normal_(std=1.5)  # logits of ~10: a bf16/fp16 GEMM would move c by ~1e-2
    x = torch.randn(1, 64)  # one token: rank_usage is then exactly its c
    assert (x @ R.T).abs().max() > 8
    counter = CountGemms()
    with torch.autocast("cpu", dtype=dtype), counter:
        y = layer(x)
    assert y.dtype == dtype
    # base W0, the fused [A; R] (float32), B: three GEMMs, the fused one in float32.
    assert counter.dtypes == [dtype, torch.float32, dtype]
    expected = reference_c(x, R.detach(), construction, r, E)[0]
    torch.testing.assert_close(layer.rank_usage["default"].double(), expected, atol=2e-6, rtol=1e-5)
    y.float().sum().backward()
    assert R.grad is not None and R.grad.dtype == torch.float32 and R.grad.abs().sum() > 0


def test_bf16_training_through_perft_trainer_keeps_logits_float32(tmp_path, monkeypatch):
    """As PERFT's router is tested (tests/test_trainer.py): PerftTrainer with bf16=True autocasts the forward."""
    import perft_peft.loracoe.layer as layer_module
    from perft_peft.trainer import PerftTrainer

    from .test_trainer import _args, _dataset, _loracoe_model

    seen = []
    rank_weights = layer_module.rank_weights

    def recording(logits, *args):
        seen.append((logits.dtype, torch.is_autocast_enabled("cpu")))
        return rank_weights(logits, *args)

    monkeypatch.setattr(layer_module, "rank_weights", recording)
    trainer = PerftTrainer(
        model=_loracoe_model(), args=_args(tmp_path, bf16=True, max_steps=2), train_dataset=_dataset()
    )
    trainer.train()
    assert seen and all(dtype == torch.float32 for dtype, _ in seen)
    assert any(autocast for _, autocast in seen), "the forward ran under autocast"
