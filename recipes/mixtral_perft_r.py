"""PERFT-R on Mixtral-8x7B with DeepSpeed ZeRO-3 (PERFT paper, Table 2 / Tables 7-8: Top2/8, r=8), trained as the
authors' code trains it (their initialisation, renormalised top-K gates, 120 validation examples, evaluation every 80
steps, best checkpoint kept).

    accelerate launch --config_file recipes/configs/accelerate_zero3.yaml recipes/mixtral_perft_r.py \\
        --data math_50k.json --output_dir out/mixtral-perft-r
    python recipes/mixtral_perft_r.py --tiny --output_dir /tmp/run    # offline smoke run
"""

from pathlib import Path

from perft_peft import recipe
from perft_peft.recipe_args import PerftArguments

p = recipe.parser(__doc__, Path(__file__).parent / "configs" / "mixtral_perft_r.yaml", PerftArguments)

if __name__ == "__main__":
    script, method, training = p.parse()
    recipe.run(script, method, training, recipe.perft_config(method))
