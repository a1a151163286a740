"""LoRACoE in two phases: plain-LoRA warmup, then LoRA + router (LoRACoE paper, appendix A), on the paper's data:
75k of commonsense_170k (--data) plus 75k of OrcaMath (--math_data), seeded (--seed).

    python recipes/loracoe.py --model Qwen/Qwen2-7B --data commonsense_170k.json --output_dir out/loracoe
    python recipes/loracoe.py --tiny --output_dir /tmp/run    # offline smoke run (bundled fixtures, both sets)

The paper's baselines (4 epochs at 3e-4, r=16, same targets and data) and ablations (Tables 2-3):

    python recipes/loracoe.py --config recipes/configs/loracoe_lora.yaml ...      # LoRA
    python recipes/loracoe.py --config recipes/configs/loracoe_loramoe.yaml ...   # partition LoRAMoE, E=4
    python recipes/loracoe.py --num_experts 4 ... / --r 32 --lora_alpha 64 ... / --no_warmup ...
    python recipes/loracoe.py --save_without_router ...   # also <output_dir>/without_router: a plain LoRA
"""

from pathlib import Path

from perft_peft import LoraCoeConfig, recipe
from perft_peft.data import ORCA_MATH_FIXTURE, MixturePart, fixture_path, load_mixture
from perft_peft.loracoe import save_without_router

p = recipe.parser(__doc__, Path(__file__).parent / "configs" / "loracoe.yaml")
p.add_argument(
    "--math_data", help="OrcaMath (question/answer) Hub id or JSON(L) file mixed with --data; 'none': --data alone"
)
p.add_argument("--data_size", type=int, help="records sampled from --data (0: all)")
p.add_argument("--math_data_size", type=int, help="records sampled from --math_data (0: all)")
p.add_argument(
    "--method",
    choices=["loracoe", "lora"],
    help="loracoe (construction composition or partition), or the baseline: peft LoRA on the same targets",
)
p.add_argument(
    "--save_without_router",
    action="store_true",
    help="ablation (Table 2): also save the trained A, B as a plain peft LoRA in <output_dir>/"
    "without_router (inference with c = 1)",
)
p.add_argument("--r", type=int)
p.add_argument("--lora_alpha", type=int)
p.add_argument("--num_experts", type=int, help="E composite experts (partition: rank groups)")
p.add_argument("--target_modules", nargs="+")
p.add_argument("--lora_dropout", type=float)
p.add_argument("--construction", choices=["composition", "partition"])
p.add_argument("--composition_scale", choices=["rank", "none"])
p.add_argument("--init_from_lora", help="start from this saved peft LoRA instead of a warmup")
p.add_argument(
    "--loracoe_warmup_epochs",
    type=float,
    help="LoRA warmup length in epochs; given as a flag, it replaces the config's loracoe_warmup_steps",
)
p.add_argument(
    "--loracoe_warmup_steps",
    type=int,
    help="LoRA warmup length in optimizer steps (use with --max_steps); given as a flag, it replaces "
    "the config's loracoe_warmup_epochs",
)
p.add_argument("--loracoe_warmup_learning_rate", type=float)
p.add_argument(
    "--no_warmup",
    action="store_true",
    help="ablation (Table 3): no LoRA warmup, LoRA and router trained jointly from the start",
)


def parse(argv=None):
    """Flags over the YAML defaults. The two warmup lengths exclude each other, so one given as a flag replaces
    the other from the config file (else the config's epochs would make any --loracoe_warmup_steps an error)."""
    given = p.parse_args(argv)
    args = recipe.parse(p, argv)
    if args.method == "lora" and (args.save_without_router or args.init_from_lora):
        p.error("--save_without_router and --init_from_lora are for --method loracoe")
    if args.no_warmup or args.method == "lora":
        if given.loracoe_warmup_steps or given.loracoe_warmup_epochs:
            p.error(
                "--loracoe_warmup_steps/--loracoe_warmup_epochs need a warmup, but --no_warmup or --method lora "
                "has none"
            )
        args.loracoe_warmup_steps = args.loracoe_warmup_epochs = args.loracoe_warmup_learning_rate = None
        return args
    if given.loracoe_warmup_steps is not None and given.loracoe_warmup_epochs is None:
        args.loracoe_warmup_epochs = None
    elif given.loracoe_warmup_epochs is not None and given.loracoe_warmup_steps is None:
        args.loracoe_warmup_steps = None
    if args.max_steps > 0 and args.loracoe_warmup_steps is None and given.loracoe_warmup_epochs is None:
        args.loracoe_warmup_steps, args.loracoe_warmup_epochs = args.max_steps // 2, None
    return args


def mixture_parts(args) -> list[MixturePart]:
    """--data (+ --math_data) with their sizes; --tiny: all of the bundled commonsense and OrcaMath fixtures."""
    if args.tiny:
        return [MixturePart(fixture_path(args.tiny_data)), MixturePart(ORCA_MATH_FIXTURE, format="orca_math")]
    parts = [MixturePart(args.data, args.data_size or None)]
    if args.math_data and args.math_data.lower() != "none":
        parts.append(MixturePart(args.math_data, args.math_data_size or None, "orca_math"))
    return parts


def peft_config(args):
    """peft's LoraConfig for --method lora, else the LoraCoeConfig the flags describe."""
    if args.method == "lora":
        from peft import LoraConfig

        return LoraConfig(
            r=args.r,
            lora_alpha=args.lora_alpha,
            target_modules=args.target_modules,
            lora_dropout=args.lora_dropout,
            task_type="CAUSAL_LM",
        )
    return LoraCoeConfig(
        r=args.r,
        lora_alpha=args.lora_alpha,
        num_experts=args.num_experts,
        target_modules=args.target_modules,
        lora_dropout=args.lora_dropout,
        construction=args.construction,
        composition_scale=args.composition_scale,
        init_from_lora=args.init_from_lora,
        task_type="CAUSAL_LM",
    )


def main(argv=None):
    args = parse(argv)
    parts = mixture_parts(args)
    warmup = (
        {}
        if args.method == "lora"
        else dict(
            loracoe_warmup_epochs=args.loracoe_warmup_epochs,
            loracoe_warmup_steps=args.loracoe_warmup_steps,
            loracoe_warmup_learning_rate=args.loracoe_warmup_learning_rate,
        )
    )
    trainer = recipe.run(
        args, peft_config(args), load_records=lambda args: load_mixture(parts, seed=args.seed), **warmup
    )
    if args.save_without_router and trainer.is_world_process_zero():
        save_without_router(trainer.accelerator.unwrap_model(trainer.model), Path(args.output_dir) / "without_router")
    return trainer


if __name__ == "__main__":
    main()
