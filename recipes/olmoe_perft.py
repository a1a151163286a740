"""Any PERFT variant on OLMoE-1B-7B, one GPU (PERFT paper, Table 2 / Tables 1, 4-6), trained as the authors'
code trains it (their initialisation, 120 validation examples, evaluation every 80 steps, best checkpoint kept).

    python recipes/olmoe_perft.py --variant R --num_experts 4 --top_k 1 --r 32 \\
        --data commonsense_170k.json --output_dir out/olmoe-perft-r
    python recipes/olmoe_perft.py --variant R --num_experts 2 --top_k 2 --r 8 --expert_type adapter \\
        --data commonsense_170k.json --output_dir out/olmoe-perft-r-adapter    # SiLU adapter experts, scale 1
    python recipes/olmoe_perft.py --tiny --variant E --output_dir /tmp/run    # offline smoke run
"""

from pathlib import Path

from perft_peft import recipe
from perft_peft.recipe_args import PerftArguments

p = recipe.parser(__doc__, Path(__file__).parent / "configs" / "olmoe_perft.yaml", PerftArguments)

if __name__ == "__main__":
    script, method, training = p.parse()
    recipe.run(script, method, training, recipe.perft_config(method))
