"""Any PERFT variant on OLMoE-1B-7B, one GPU (PERFT paper, Table 2 / Tables 1, 4-6).

    python recipes/olmoe_perft.py --variant R --num_experts 4 --top_k 1 --r 32 \\
        --data commonsense_170k.json --output_dir out/olmoe-perft-r
    python recipes/olmoe_perft.py --tiny --variant E --output_dir /tmp/run    # offline smoke run
"""

from pathlib import Path

from perft_peft import PerftConfig, recipe

p = recipe.parser(__doc__, Path(__file__).parent / "configs" / "olmoe_perft.yaml")
p.add_argument("--variant", choices=["R", "E", "D", "S"], help="PERFT variant")
p.add_argument("--num_experts", type=int, help="M (R and D)")
p.add_argument("--top_k", type=int, help="K (R)")
p.add_argument("--r", type=int, help="bottleneck D_B")
p.add_argument("--lora_alpha", type=int)
p.add_argument("--lora_dropout", type=float)
p.add_argument("--expert_type", choices=["lora", "adapter"])
p.add_argument("--router_aux_loss_coef", type=float, help="PEFT router load balancing (paper: 0.01 for OLMoE)")

if __name__ == "__main__":
    args = recipe.parse(p)
    multiplicity = {"R": dict(num_experts=args.num_experts, top_k=args.top_k),
                    "D": dict(num_experts=args.num_experts)}.get(args.variant, {})
    config = PerftConfig(variant=args.variant, r=args.r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                         expert_type=args.expert_type, task_type="CAUSAL_LM", **multiplicity)
    recipe.run(args, config, router_aux_loss_coef=args.router_aux_loss_coef)
