"""The papers' MoE-agnostic baselines with peft's own LoRA: on attention W_q, W_v; on the router W_g; on the
expert weights (peft `target_parameters`).

    python recipes/baselines.py --method lora_attn --model allenai/OLMoE-1B-7B-0924 --data commonsense_170k.json \\
        --output_dir out/lora-qv
    python recipes/baselines.py --tiny --method lora_experts --output_dir /tmp/run    # offline smoke run
"""

from pathlib import Path

from perft_peft import recipe
from perft_peft.baselines import TARGETS, lora_config

p = recipe.parser(__doc__, Path(__file__).parent / "configs" / "baselines.yaml")
p.add_argument("--method", choices=sorted(TARGETS), help="where peft's LoRA goes")
p.add_argument("--r", type=int)
p.add_argument("--lora_alpha", type=int)
p.add_argument("--lora_dropout", type=float)

if __name__ == "__main__":
    args = recipe.parse(p)
    recipe.run(args, lora_config(args.method, args.r, args.lora_alpha, args.lora_dropout))
