"""Evaluate an adapter on the papers' 14 benchmarks with the LLM-Adapters protocol (perft_peft.evaluation).

    python recipes/evaluate.py --adapter out/olmoe-perft-r --data_dir LLM-Adapters/dataset --output_dir out/eval
    python recipes/evaluate.py --adapter <user>/<repo> --benchmarks boolq piqa --data_dir LLM-Adapters/dataset \\
        --output_dir out/eval
    python recipes/evaluate.py --adapter /tmp/run --tiny --limit 4 --output_dir /tmp/eval   # offline smoke run

Writes eval_results.json, eval_results.md (the tables) and eval_predictions.json (every response) to
--output_dir. See docs/evaluation.md.
"""

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and its name would then shadow the `evaluate`
# library that loads the accuracy metric.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from perft_peft.evaluation import cli  # noqa: E402

p = cli.parser(__doc__)

if __name__ == "__main__":
    cli.run(cli.parse(p))
