"""LoRACoE in two phases: plain-LoRA warmup, then LoRA + router (LoRACoE paper, appendix A).

    python recipes/loracoe.py --model Qwen/Qwen2-7B --data commonsense_170k.json --output_dir out/loracoe
    python recipes/loracoe.py --tiny --output_dir /tmp/run    # offline smoke run
"""

from pathlib import Path

from perft_peft import LoraCoeConfig, recipe

p = recipe.parser(__doc__, Path(__file__).parent / "configs" / "loracoe.yaml")
p.add_argument("--r", type=int)
p.add_argument("--lora_alpha", type=int)
p.add_argument("--num_experts", type=int, help="E composite experts (partition: rank groups)")
p.add_argument("--target_modules", nargs="+")
p.add_argument("--lora_dropout", type=float)
p.add_argument("--construction", choices=["composition", "partition"])
p.add_argument("--composition_scale", choices=["rank", "none"])
p.add_argument("--init_from_lora", help="start from this saved peft LoRA instead of a warmup")
p.add_argument("--loracoe_warmup_epochs", type=float)
p.add_argument("--loracoe_warmup_steps", type=int, help="use with --max_steps")
p.add_argument("--loracoe_warmup_learning_rate", type=float)

if __name__ == "__main__":
    args = recipe.parse(p)
    if args.max_steps > 0 and args.loracoe_warmup_steps is None:
        args.loracoe_warmup_steps, args.loracoe_warmup_epochs = args.max_steps // 2, None
    config = LoraCoeConfig(r=args.r, lora_alpha=args.lora_alpha, num_experts=args.num_experts,
                           target_modules=args.target_modules, lora_dropout=args.lora_dropout,
                           construction=args.construction, composition_scale=args.composition_scale,
                           init_from_lora=args.init_from_lora, task_type="CAUSAL_LM")
    recipe.run(args, config, loracoe_warmup_epochs=args.loracoe_warmup_epochs,
               loracoe_warmup_steps=args.loracoe_warmup_steps,
               loracoe_warmup_learning_rate=args.loracoe_warmup_learning_rate)
