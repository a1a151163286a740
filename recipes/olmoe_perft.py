"""Any PERFT variant on OLMoE-1B-7B, one GPU (PERFT paper, Table 2 / Tables 1, 4-6), trained as the authors'
code trains it (their initialisation, 120 validation examples, evaluation every 80 steps, best checkpoint kept).

    python recipes/olmoe_perft.py --variant R --num_experts 4 --top_k 1 --r 32 \\
        --data commonsense_170k.json --output_dir out/olmoe-perft-r
    python recipes/olmoe_perft.py --variant R --num_experts 2 --top_k 2 --r 8 --expert_type adapter \\
        --data commonsense_170k.json --output_dir out/olmoe-perft-r-adapter    # SiLU adapter experts, scale 1
    python recipes/olmoe_perft.py --tiny --variant E --output_dir /tmp/run    # offline smoke run
"""

from pathlib import Path

from perft_peft import PerftConfig, recipe

p = recipe.parser(__doc__, Path(__file__).parent / "configs" / "olmoe_perft.yaml")
p.add_argument("--variant", choices=["R", "E", "D", "S"], help="PERFT variant")
p.add_argument("--num_experts", type=int, help="M (R and D)")
p.add_argument("--top_k", type=int, help="K (R)")
p.add_argument("--r", type=int, help="bottleneck D_B")
p.add_argument(
    "--lora_alpha",
    type=int,
    help="scale numerator (default: 2r for LoRA experts as in the paper, r = "
    "scale 1 for adapter experts as in the authors' code)",
)
p.add_argument("--lora_dropout", type=float)
p.add_argument("--expert_type", choices=["lora", "adapter"])
p.add_argument("--adapter_act", help="activation of adapter experts (the authors' code: silu)")
p.add_argument(
    "--init_weights",
    choices=["true", "false", "perft"],
    help="perft: the authors' A ~ N(0, 2/r), B ~ 1e-6 N(0,1); true: peft LoRA's (B = 0)",
)
p.add_argument("--norm_topk_prob", type=recipe._bool, help="renormalise PERFT-R's top-K gates (false for OLMoE)")
p.add_argument(
    "--gate_weights",
    choices=["router", "base"],
    help="PERFT-R gates: router (Eq. 7) or base (the authors' OLMoE code: the model router's weights)",
)
p.add_argument("--router_aux_loss_coef", type=float, help="PEFT router load balancing (paper: 0.01 for OLMoE)")

if __name__ == "__main__":
    args = recipe.parse(p)
    multiplicity = {
        "R": dict(num_experts=args.num_experts, top_k=args.top_k),
        "D": dict(num_experts=args.num_experts),
    }.get(args.variant, {})
    config = PerftConfig(
        variant=args.variant,
        r=args.r,
        lora_alpha=recipe.perft_alpha(args),
        lora_dropout=args.lora_dropout,
        expert_type=args.expert_type,
        adapter_act=args.adapter_act,
        init_weights=recipe.init_weights(args.init_weights),
        norm_topk_prob=bool(args.norm_topk_prob) and args.variant == "R",
        gate_weights=args.gate_weights if args.variant == "R" else "router",
        task_type="CAUSAL_LM",
        **multiplicity,
    )
    recipe.run(args, config, router_aux_loss_coef=args.router_aux_loss_coef)
