"""The papers' MoE-agnostic baselines with peft's own LoRA: on attention W_q, W_v; on the router W_g; on the
expert weights (peft `target_parameters`).

    python recipes/baselines.py --method lora_attn --model allenai/OLMoE-1B-7B-0924 --data commonsense_170k.json \\
        --output_dir out/lora-qv
    python recipes/baselines.py --tiny --method lora_experts --output_dir /tmp/run    # offline smoke run
"""

from pathlib import Path

from perft_peft import recipe
from perft_peft.baselines import lora_config
from perft_peft.recipe_args import BaselineArguments

p = recipe.parser(__doc__, Path(__file__).parent / "configs" / "baselines.yaml", BaselineArguments)

if __name__ == "__main__":
    script, method, training = p.parse()
    recipe.run(script, method, training, lora_config(method.method, method.r, method.lora_alpha, method.lora_dropout))
