"""PERFT-R on Mixtral-8x7B with DeepSpeed ZeRO-3 (PERFT paper, Table 2 / Tables 7-8: Top2/8, r=8), trained as the
authors' code trains it (their initialisation, renormalised top-K gates, 120 validation examples, evaluation every 80
steps, best checkpoint kept).

    accelerate launch --config_file recipes/configs/accelerate_zero3.yaml recipes/mixtral_perft_r.py \\
        --data math_50k.json --output_dir out/mixtral-perft-r
    python recipes/mixtral_perft_r.py --tiny --output_dir /tmp/run    # offline smoke run
"""

from pathlib import Path

from perft_peft import PerftConfig, recipe

p = recipe.parser(__doc__, Path(__file__).parent / "configs" / "mixtral_perft_r.yaml")
p.add_argument("--num_experts", type=int, help="M, PEFT experts per MoE block")
p.add_argument("--top_k", type=int, help="K, PEFT experts per token")
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
p.add_argument(
    "--norm_topk_prob",
    type=recipe._bool,
    help="renormalise the top-K gates (the authors' Mixtral code does: modeling_mixtral.py line 1013)",
)
p.add_argument("--router_aux_loss_coef", type=float, help="PEFT router load balancing (paper: 0.02 for Mixtral)")

if __name__ == "__main__":
    args = recipe.parse(p)
    config = PerftConfig(
        variant="R",
        num_experts=args.num_experts,
        top_k=args.top_k,
        r=args.r,
        lora_alpha=recipe.perft_alpha(args),
        lora_dropout=args.lora_dropout,
        expert_type=args.expert_type,
        adapter_act=args.adapter_act,
        init_weights=recipe.init_weights(args.init_weights),
        norm_topk_prob=bool(args.norm_topk_prob),
        task_type="CAUSAL_LM",
    )
    recipe.run(args, config, router_aux_loss_coef=args.router_aux_loss_coef)
