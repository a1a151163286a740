"""Evaluate an adapter on the papers' 14 benchmarks with the LLM-Adapters protocol (perft_peft.evaluation).

    python recipes/evaluate_adapter.py --adapter out/olmoe-perft-r --data_dir LLM-Adapters/dataset --output_dir out/eval
    python recipes/evaluate_adapter.py --adapter <user>/<repo> --benchmarks boolq piqa \\
        --data_dir LLM-Adapters/dataset --output_dir out/eval
    python recipes/evaluate_adapter.py --adapter /tmp/run --tiny --limit 4 --output_dir /tmp/eval   # offline smoke run

Writes eval_results.json, eval_results.md (the tables) and eval_predictions.json (every response) to
--output_dir. See docs/evaluation.md.
"""

from perft_peft.evaluation import cli

p = cli.parser(__doc__)

if __name__ == "__main__":
    cli.run(cli.parse(p))
