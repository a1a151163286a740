"""Training-step speed and memory of PERFT and LoRACoE next to peft's LoRA, side by side in one process.

    python benchmarks/speed.py                          # the numbers in docs/benchmarks.md: ~15 min on 2 CPU cores
    python benchmarks/speed.py --device cuda --dtype bfloat16 --output benchmarks/results/speed_gpu.md
    python benchmarks/speed.py --sections loracoe --output /tmp/loracoe.md   # one section only

What is measured and how: benchmarks/harness/speed.py. The result (markdown, with the machine) goes to --output.
"""

import argparse
import time
from pathlib import Path

import torch

from harness import shapes, speed
from harness.report import machine_lines

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
p.add_argument("--output", default=str(Path(__file__).parent / "results" / "speed.md"))
p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
p.add_argument("--seed", type=int, default=0)
g = p.add_argument_group("model benchmark (Mixtral-shaped)")
g.add_argument("--hidden_size", type=int, default=512)
g.add_argument("--layers", type=int, default=4)
g.add_argument("--experts", type=int, default=8)
g.add_argument("--top_k", type=int, default=2)
g.add_argument("--batch_size", type=int, default=4)
g.add_argument("--seq_len", type=int, default=256)
g.add_argument("--vocab_size", type=int, default=4096)
g.add_argument("--baseline", default=speed.MODEL_BASELINE, help="method spec the others are compared with")
g.add_argument(
    "--methods",
    nargs="+",
    default=speed.MODEL_METHODS,
    help="method specs (benchmarks/harness/methods.py); without r=, r is matched to the baseline's # Act.",
)
g.add_argument("--repeats", type=int, default=15)
g.add_argument("--warmup", type=int, default=2)
g = p.add_argument_group("layer benchmark (OLMoE-shaped MoE block)")
g.add_argument("--layer_hidden_size", type=int, default=2048)
g.add_argument("--layer_intermediate_size", type=int, default=1024)
g.add_argument("--layer_experts", type=int, default=64)
g.add_argument("--layer_top_k", type=int, default=8)
g.add_argument("--layer_tokens", type=int, default=512)
g.add_argument("--layer_methods", nargs="+", default=speed.LAYER_METHODS)
g.add_argument("--layer_repeats", type=int, default=7)
g = p.add_argument_group("LoRACoE fused router GEMM (appendix C)")
g.add_argument("--fusion_features", type=int, default=2048)
g.add_argument("--fusion_tokens", type=int, default=2048)
g.add_argument("--fusion_repeats", type=int, default=30)
g = p.add_argument_group("LoRACoE against peft LoRA, equal r and targets (dense Llama-shaped model)")
g.add_argument("--loracoe_hidden_size", type=int, default=512)
g.add_argument("--loracoe_layers", type=int, default=4)
g.add_argument("--loracoe_r", type=int, default=16)
g.add_argument("--loracoe_experts", type=int, default=2)
g.add_argument("--loracoe_repeats", type=int, default=30)
g.add_argument(
    "--loracoe_clock",
    choices=["wall", "process"],
    default="wall",
    help="process: this process's CPU time (time.process_time), less disturbed by other processes on a "
    "shared machine; use with one torch thread (--threads 1)",
)
p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
p.add_argument(
    "--sections",
    nargs="+",
    default=["model", "layer", "fusion", "loracoe"],
    choices=["model", "layer", "fusion", "loracoe"],
    help="which benchmarks to run",
)

if __name__ == "__main__":
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape = shapes.ModelShape(
        args.hidden_size, args.layers, args.experts, args.top_k, args.batch_size, args.seq_len, args.vocab_size
    )
    sections = ["# Speed: PERFT and LoRACoE next to peft's LoRA", "", *machine_lines(device), ""]
    if "model" in args.sections:
        model_rows = speed.model_benchmark(
            shape, args.methods, args.baseline, args.repeats, args.warmup, device, dtype, args.seed
        )
        sections += [
            f"## Training step, Mixtral-shaped model (hidden {shape.hidden_size}, {shape.num_hidden_layers} layers, "
            f"{shape.num_experts} experts top-{shape.top_k}, {shape.batch_size} x {shape.seq_len} tokens, "
            f"{args.dtype})",
            "",
            speed.model_table(model_rows, shape.tokens),
            "",
        ]
    if "layer" in args.sections:
        layer_rows = speed.layer_benchmark(
            args.layer_methods,
            args.layer_tokens,
            args.layer_repeats,
            1,
            device,
            dtype,
            args.seed,
            hidden_size=args.layer_hidden_size,
            num_experts=args.layer_experts,
            top_k=args.layer_top_k,
            intermediate_size=args.layer_intermediate_size,
        )
        sections += [
            f"## One MoE block forward + backward, OLMoE-shaped (hidden {args.layer_hidden_size}, "
            f"{args.layer_experts} experts top-{args.layer_top_k}, FFN {args.layer_intermediate_size}, "
            f"{args.layer_tokens} tokens)",
            "",
            speed.layer_table(layer_rows, args.layer_tokens),
            "",
        ]
    if "fusion" in args.sections:
        fusion = speed.fusion_benchmark(
            args.fusion_features,
            args.fusion_features,
            args.fusion_tokens,
            repeats=args.fusion_repeats,
            device=device,
            dtype=dtype,
            seed=args.seed,
        )
        sections += [
            f"## LoRACoE forward, router fused into A's GEMM (appendix C): Linear {args.fusion_features} -> "
            f"{args.fusion_features}, r=16, E=2, {args.fusion_tokens} tokens",
            "",
            speed.fusion_table(fusion),
            "",
        ]
    if "loracoe" in args.sections:
        dense = shapes.ModelShape(
            args.loracoe_hidden_size, args.loracoe_layers, 0, 0, args.batch_size, args.seq_len, args.vocab_size
        )
        clock = time.process_time if args.loracoe_clock == "process" else time.perf_counter
        rows = speed.loracoe_benchmark(
            dense,
            args.loracoe_r,
            args.loracoe_experts,
            args.loracoe_repeats,
            args.warmup,
            device,
            dtype,
            args.seed,
            clock=clock,
        )
        sections += [
            f"## LoRACoE against peft LoRA, r={args.loracoe_r}, targets {', '.join(speed.LORACOE_MODULES)}: dense "
            f"Llama-shaped model (hidden {dense.hidden_size}, {dense.num_hidden_layers} layers, {dense.batch_size} "
            f"x {dense.seq_len} tokens, {args.dtype}; {args.loracoe_clock} time)",
            "",
            speed.loracoe_table(rows, dense.tokens),
            "",
        ]
    text = "\n".join(
        [
            *sections,
            "Ratios are medians over repetitions of the ratio measured in the same repetition (interquartile range in "
            "brackets). FLOP floor: the ratio of matrix-product FLOPs (forward + backward), the best a compute-bound "
            "step could do. Peak memory: resident parameters, gradients and optimizer state plus the peak of the "
            "tensors the step allocates (on GPU: the CUDA allocator's peak).",
            "",
        ]
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)
