"""Running the repository's scripts (recipes, evaluation, benchmarks) in fresh processes, as users run them."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
# offline, one thread a process: the tests share two cores
OFFLINE_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
# a recipe's smallest run: the tiny model and fixtures, one batch of two examples a step, no checkpointing
TINY_RUN = ["--tiny", "--batch_size", "2", "--per_device_train_batch_size", "2", "--gradient_checkpointing", "false"]


def run(args, env=None, timeout=600, launcher=(sys.executable,)) -> str:
    """Run ``launcher + args`` from the repository's root; fail with the end of its output unless it exits 0.
    Returns stdout + stderr."""
    result = subprocess.run(
        [*launcher, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=OFFLINE_ENV if env is None else env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout + result.stderr
