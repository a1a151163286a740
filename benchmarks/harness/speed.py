"""The speed benchmark (``benchmarks/speed.py``): what a training step costs with each adapter, side by side.

Three measurements, all in one process so that every ratio compares like with like:

1. Model: a Mixtral-shaped MoE (hidden 512, 4 layers, 8 experts top-2 by default) trained on 4 x 256 tokens.
   Every method gets the same base weights (shared, not copied) and a training step = forward, backward, AdamW
   step; PERFT-R adds its load-balancing loss as PerftTrainer does. The methods are timed in turn, the order
   rotating each repetition, and each is reported as the median of its per-repetition ratios to peft's LoRA on
   W_q, W_v. Ranks are matched: methods given without ``r=`` get the r whose activated trainable parameters per
   token (# Act.) are closest to the baseline's. Next to each time ratio, its FLOP floor: the ratio of the matrix
   product FLOPs the two steps run, which is what a compute-bound step could at best achieve.
2. Layer: one OLMoE-shaped MoE block (hidden 2048, 64 experts top-8) forward + backward, each adapter against the
   frozen block alone; PERFT-R with many experts both on its dense and its sparse (grouped GEMM) path.
3. LoRACoE's appendix C: the forward of a LoRACoE linear layer with the router fused into A's GEMM or not.
4. LoRACoE against peft's LoRA at equal rank and targets (the paper's q, k, v, up, down) on a dense Llama-shaped
   model, training steps side by side (and LoRACoE in its warmup phase: the same layer without the router).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from perft_peft.accounting import parameter_accounting
from perft_peft.perft.losses import load_balancing_loss

from .measure import count_flops, interleaved_times, paired_ratio, peak_memory
from .methods import Method, parse_method
from .shapes import ModelShape, llama_shaped, mixtral_shaped, olmoe_layer_model

BALANCE_COEF = 0.01  # PERFT-R's load-balancing loss weight (PerftTrainingArguments.router_aux_loss_coef)
MODEL_BASELINE = "lora_attn:r=8"
MODEL_METHODS = ["R:M=8,K=2", "E", "D:M=2", "S", "lora_experts", "loracoe:r=8,E=2"]
LAYER_METHODS = ["R:r=8,M=8,K=2", "R:r=8,M=64,K=8", "E:r=8", "D:r=8,M=2", "S:r=16", "lora_experts:r=2"]
SPEED_GOALS = {"PERFT-R": 1.03, "PERFT-E": 1.03, "LoRACoE (q,v)": 1.03}  # step-time ratio to the baseline
LORACOE_MODULES = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]  # LoRACoE paper, appendix A
LORACOE_TARGET = 1.02  # LoRACoE step time / peft LoRA step time, dense model, equal r and targets
MEMORY_TARGET = 1.05


def shared_copy(model):
    """A second model object over the *same* weight tensors (frozen base weights need not be copied per method)."""
    with torch.device("meta"):
        clone = type(model)(copy.deepcopy(model.config))
    clone.load_state_dict(model.state_dict(), assign=True)
    for name, buffer in model.named_buffers():  # non-persistent buffers (rotary inv_freq) are not in state_dict
        owner, _, leaf = name.rpartition(".")
        clone.get_submodule(owner)._buffers[leaf] = buffer
    return clone.to(next(model.parameters()).device).train(model.training)


def activated(method: Method, base) -> int:
    from peft import get_peft_model

    return parameter_accounting(get_peft_model(shared_copy(base), method.config())).activated_trainable


def matched_method(spec: str, base, target: int) -> Method:
    """``spec`` as given if it names r; else with the r whose # Act. on ``base`` is closest to ``target``
    (# Act. is affine in r, so two probes find it)."""
    first, second = parse_method(spec, 1), parse_method(spec, 2)
    if first == second:  # the spec names its r
        return first
    one, two = activated(first, base), activated(second, base)
    return parse_method(spec, max(1, round((target - one) / (two - one)) + 1))


@dataclass
class Row:
    method: Method | None  # None: the frozen base block (layer benchmark)
    label: str
    activated: int
    times: list[float] = field(default_factory=list)
    flops: int = 0
    memory: int = 0


def _train_step(model, optimizer, batch, routed: bool):
    def step():
        loss = model(**batch).loss
        if routed:
            loss = loss + BALANCE_COEF * load_balancing_loss(model, batch["attention_mask"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def model_benchmark(
    shape: ModelShape,
    methods: list[str],
    baseline: str = MODEL_BASELINE,
    repeats: int = 10,
    warmup: int = 2,
    device=torch.device("cpu"),
    dtype=torch.float32,
    seed: int = 0,
) -> list[Row]:
    """Rows for the baseline then each method: step times (one per repetition), FLOPs and peak memory."""
    from peft import get_peft_model

    probe = mixtral_shaped(shape, num_hidden_layers=1, seed=seed)  # # Act. per layer; the same for every layer
    base_method = parse_method(baseline)
    target = activated(base_method, probe)
    chosen = [base_method] + [matched_method(spec, probe, target) for spec in methods]
    del probe
    base = mixtral_shaped(shape, dtype=dtype, seed=seed).to(device)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, shape.vocab_size, (shape.batch_size, shape.seq_len), generator=generator).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    rows, steps, holders = [], {}, {}
    for method in tqdm(chosen, desc="build the adapted models"):
        model = get_peft_model(shared_copy(base), method.config()).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        row = Row(method, method.label, parameter_accounting(model).activated_trainable)
        steps[row.label] = _train_step(model, optimizer, batch, method.routed)
        holders[row.label] = (model, optimizer)
        rows.append(row)
    _measure(rows, steps, holders, repeats, warmup, device)
    return rows


def _measure(
    rows: list[Row], calls: dict, holders: dict, repeats: int, warmup: int, device, clock=time.perf_counter
) -> None:
    for row in tqdm(rows, desc="warm up, count FLOPs, measure memory"):
        for _ in range(warmup):  # first calls allocate optimizer state and warm caches
            calls[row.label]()
        row.flops = count_flops(calls[row.label])
        row.memory = peak_memory(calls[row.label], device, *holders.get(row.label, ()))
    times = interleaved_times(calls, repeats, device, progress=lambda r: tqdm(r, desc="timed repetitions"), clock=clock)
    for row in rows:
        row.times = times[row.label]


def loracoe_benchmark(
    shape: ModelShape,
    r: int = 16,
    num_experts: int = 2,
    repeats: int = 30,
    warmup: int = 2,
    device=torch.device("cpu"),
    dtype=torch.float32,
    seed: int = 0,
    clock=time.perf_counter,
) -> list[Row]:
    """Training steps of peft LoRA, LoRACoE (joint phase) and LoRACoE in its warmup phase (no router) on a dense
    Llama-shaped model, r and targets equal (LORACOE_MODULES), lora_alpha = 2r. ``clock``: see measure.timed."""
    from peft import LoraConfig, get_peft_model

    from perft_peft import LoraCoeConfig, set_loracoe_phase

    base = llama_shaped(shape, dtype=dtype, seed=seed).to(device)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, shape.vocab_size, (shape.batch_size, shape.seq_len), generator=generator).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    coe = LoraCoeConfig(r=r, lora_alpha=2 * r, num_experts=num_experts, target_modules=LORACOE_MODULES)
    variants = [
        (f"LoRA r={r}", LoraConfig(r=r, lora_alpha=2 * r, target_modules=LORACOE_MODULES), None),
        (f"LoRACoE E={num_experts} r={r}", coe, "joint"),
        (f"LoRACoE r={r}, warmup phase (no router)", copy.deepcopy(coe), "warmup"),
    ]
    rows, steps, holders = [], {}, {}
    for label, config, phase in variants:
        model = get_peft_model(shared_copy(base), config).train()
        if phase is not None:
            set_loracoe_phase(model, phase)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        rows.append(Row(None, label, parameter_accounting(model).activated_trainable))
        steps[label], holders[label] = _train_step(model, optimizer, batch, routed=False), (model, optimizer)
    _measure(rows, steps, holders, repeats, warmup, device, clock)
    return rows


def layer_benchmark(
    methods: list[str] = LAYER_METHODS,
    tokens: int = 512,
    repeats: int = 5,
    warmup: int = 1,
    device=torch.device("cpu"),
    dtype=torch.float32,
    seed: int = 0,
    **olmoe_shape,
) -> list[Row]:
    """The frozen OLMoE-shaped block alone, then with each adapter: forward + backward of one MoE block."""
    from peft import get_peft_model

    base = olmoe_layer_model(dtype=dtype, seed=seed, **olmoe_shape).to(device)
    hidden = base.config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, tokens, hidden, generator=generator).to(device, dtype).requires_grad_()
    grad = torch.randn(1, tokens, hidden, generator=generator).to(device, dtype)

    def block_step(block):
        def step():
            out = block(x)
            (out[0] if isinstance(out, tuple) else out).backward(grad)
            x.grad = None
            for p in block.parameters():
                p.grad = None

        return step

    base_block = base.model.layers[0].mlp.requires_grad_(False)
    rows = [Row(None, "frozen block alone", 0)]
    calls, holders = {rows[0].label: block_step(base_block)}, {rows[0].label: (base_block,)}
    for spec in methods:
        method = parse_method(spec)
        paths = ["dense", "sparse"] if method.kind == "R" and method.M > method.K else [None]
        for path in paths:
            model = get_peft_model(shared_copy(base), method.config()).train()
            block = model.get_base_model().model.layers[0].mlp
            if path is not None:  # force the path (PerftLayer.sparse_min_expert_ratio: sparse when M > ratio*K)
                block.experts.sparse_min_expert_ratio = method.M if path == "dense" else 0
            label = method.label + (f", {path} path" if path else "")
            rows.append(Row(method, label, parameter_accounting(model).activated_trainable))
            calls[label], holders[label] = block_step(block), (block,)
    _measure(rows, calls, holders, repeats, warmup, device)
    return rows


def fusion_benchmark(
    in_features: int = 2048,
    out_features: int = 2048,
    tokens: int = 2048,
    r: int = 16,
    num_experts: int = 2,
    repeats: int = 20,
    device=torch.device("cpu"),
    dtype=torch.float32,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Forward time of one LoRACoE linear layer (joint phase), router fused into A's GEMM and not."""
    from peft import inject_adapter_in_model

    from perft_peft import LoraCoeConfig

    torch.manual_seed(seed)
    holder = torch.nn.Module()
    holder.proj = torch.nn.Linear(in_features, out_features, bias=False, device=device, dtype=dtype)
    config = LoraCoeConfig(r=r, lora_alpha=2 * r, num_experts=num_experts, target_modules=["proj"])
    layer = inject_adapter_in_model(config, holder).proj.eval()
    x = torch.randn(tokens, in_features, device=device, dtype=dtype)

    def forward(fused: bool):
        def call():
            layer.fuse_router = fused
            with torch.no_grad():
                layer(x)

        return call

    calls = {"fused": forward(True), "unfused": forward(False)}
    for call in calls.values():
        call()
    return interleaved_times(calls, repeats, device)


# -- the report ------------------------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def _ratio(median: float, q1: float, q3: float) -> str:
    return f"{median:.3f} [{q1:.3f}, {q3:.3f}]"


def _target_cell(row: Row, time_ratio: float, memory_ratio: float) -> str:
    target = SPEED_GOALS.get(row.method.group) if row.method is not None else None
    if target is None:
        return "-"
    met = time_ratio <= target and memory_ratio <= MEMORY_TARGET
    return f"time <= {target}, memory <= {MEMORY_TARGET}: **{'met' if met else 'missed'}**"


def _measured_cells(row: Row, base: Row, tokens: int) -> tuple[list[str], tuple[float, float, float]]:
    """The cells every step table shares (label, # Act., median time, tokens/s, time / base, FLOP floor, peak
    memory), and the paired time ratio to ``base`` (median, q1, q3)."""
    ratio = paired_ratio(row.times, base.times)
    median = sorted(row.times)[len(row.times) // 2]
    cells = [
        row.label,
        f"{row.activated:,}",
        _ms(median),
        f"{tokens / median:,.0f}",
        _ratio(*ratio),
        f"{row.flops / base.flops:.3f}",
        f"{row.memory / 2**20:,.0f}",
    ]
    return cells, ratio


def model_table(rows: list[Row], tokens: int) -> str:
    from .report import markdown_table

    base = rows[0]
    body = []
    for row in rows:
        cells, time_ratio = _measured_cells(row, base, tokens)
        memory_ratio = row.memory / base.memory
        body.append([*cells, f"{memory_ratio:.3f}", _target_cell(row, time_ratio[0], memory_ratio)])
    header = [
        "method",
        "# Act.",
        "step (ms, median)",
        "tokens/s",
        f"time / {base.label} (median [IQR])",
        "FLOP floor",
        "peak memory (MiB)",
        "memory ratio",
        "target",
    ]
    return markdown_table(header, body)


def layer_table(rows: list[Row], tokens: int) -> str:
    from .report import markdown_table

    base = rows[0]
    body = [_measured_cells(row, base, tokens)[0] for row in rows]
    header = [
        "block",
        "# Act.",
        "fwd+bwd (ms, median)",
        "tokens/s",
        "time / frozen block (median [IQR])",
        "FLOP floor",
        "peak memory (MiB)",
    ]
    return markdown_table(header, body)


def fusion_table(times: dict[str, list[float]]) -> str:
    from .report import markdown_table

    rows = [
        [name, _ms(sorted(t)[len(t) // 2]), _ratio(*paired_ratio(t, times["unfused"]))] for name, t in times.items()
    ]
    return markdown_table(["LoRACoE forward", "time (ms, median)", "time / unfused (median [IQR])"], rows)


def loracoe_table(rows: list[Row], tokens: int) -> str:
    """The LoRACoE rows against the first (peft LoRA), with the LORACOE_TARGET for the joint phase."""
    from .report import markdown_table

    base = rows[0]
    body = []
    for index, row in enumerate(rows):
        cells, ratio = _measured_cells(row, base, tokens)
        met = "met" if ratio[0] <= LORACOE_TARGET else "missed"
        body.append([*cells, f"time <= {LORACOE_TARGET}: **{met}**" if index == 1 else "-"])
    header = [
        "method",
        "# Act.",
        "step (ms, median)",
        "tokens/s",
        f"time / {base.label} (median [IQR])",
        "FLOP floor",
        "peak memory (MiB)",
        "target",
    ]
    return markdown_table(header, body)
