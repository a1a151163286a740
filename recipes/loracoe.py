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

from perft_peft import recipe
from perft_peft.data import load_mixture
from perft_peft.loracoe import save_without_router
from perft_peft.recipe_args import LoraCoeArguments

p = recipe.parser(__doc__, Path(__file__).parent / "configs" / "loracoe.yaml", LoraCoeArguments)


def main(argv=None):
    script, method, training = p.parse(argv)
    parts = recipe.mixture_parts(script, method)
    config = recipe.loracoe_config(method)
    trainer = recipe.run(script, method, training, config, load_records=lambda: load_mixture(parts, seed=training.seed))
    if method.save_without_router and trainer is not None and trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model)
        save_without_router(model, Path(training.output_dir) / "without_router")
    return trainer


if __name__ == "__main__":
    main()
