import os

import pytest
import torch

import perft_peft  # noqa: F401  (registers PERFT with peft)
from perft_peft.testing import TINY_FAMILIES, tiny_moe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FAMILIES = list(TINY_FAMILIES)
VARIANT_KWARGS = {"R": dict(num_experts=4, top_k=2), "E": {}, "D": dict(num_experts=3), "S": {}}


@pytest.fixture
def input_ids():
    return torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(1))


def base_model(family="mixtral", **overrides):
    return tiny_moe(family, seed=0, **overrides)
