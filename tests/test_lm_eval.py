"""lm-evaluation-harness (the ``lm-eval`` extra, 0.4.13) evaluates PERFT and LoRACoE adapters, offline: a tiny saved
base + tokenizer, adapters on it, and a local multiple-choice task (``include_path``, a JSON dataset).

The log-likelihoods lm-eval records must be the ones the adapted model gives, computed here directly from a
``PeftModel`` (and not the base model's). The ``lm_eval`` command runs in a fresh process that never imports
perft_peft: the adapter loads through the autoload hook (docs/design.md, "Registration: loading without
`import perft_peft`").
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from perft_peft import LoraCoeConfig, PerftConfig
from perft_peft.testing import tiny_moe, tiny_tokenizer

pytestmark = pytest.mark.slow  # the lm_eval command in its own process (~30 s)
TASK = "perft_tiny_mc"
DOCS = [
    {
        "question": f"t{3 + i} t{10 + i} t{20 + i}",
        "choices": [f"t{30 + i}", f"t{40 + i}", f"t{50 + i}"],
        "answer": i % 3,
    }
    for i in range(6)
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    tiny_moe("mixtral").save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    for name, config in (
        ("perft", PerftConfig(variant="R", r=4, init_weights=False)),
        ("loracoe", LoraCoeConfig(r=4, target_modules=["q_proj", "v_proj"], init_weights=False)),
    ):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(root / "base"), config)
        for name_, p in model.named_parameters():  # a joint-phase router that is not uniform
            if "loracoe_router" in name_:
                torch.nn.init.normal_(p, std=1.0)
        model.save_pretrained(root / name)
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "data.json").write_text("\n".join(json.dumps(doc) for doc in DOCS))
    (tasks / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tasks / 'data.json'}\n"
        'test_split: test\noutput_type: multiple_choice\ndoc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: answer\nmetric_list:\n  - metric: acc\n'
    )
    return root


def direct_loglikelihoods(model, tokenizer) -> list[list[float]]:
    """log P(" choice" | question) per document and choice, from the model itself (one token per choice here)."""
    out = []
    with torch.no_grad():
        for doc in DOCS:
            context = tokenizer(doc["question"], add_special_tokens=False)["input_ids"]
            logprobs = model(torch.tensor([context])).logits[0, -1].float().log_softmax(-1)
            choices = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in doc["choices"]]
            assert all(len(c) == 1 for c in choices)
            out.append([logprobs[c[0]].item() for c in choices])
    return out


def expected(root, adapter):
    base = AutoModelForCausalLM.from_pretrained(root / "base").eval()
    tokenizer = tiny_tokenizer()
    without = direct_loglikelihoods(base, tokenizer)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "base"), root / adapter).eval()
    return direct_loglikelihoods(model, tokenizer), without


def check(recorded, root, adapter):
    adapted, base = expected(root, adapter)
    torch.testing.assert_close(torch.tensor(recorded), torch.tensor(adapted), atol=1e-4, rtol=0)
    assert (torch.tensor(recorded) - torch.tensor(base)).abs().max() > 1e-2, "the adapter changes the scores"


def test_lm_eval_command_applies_a_perft_adapter(setup, tmp_path):
    root = setup
    env = {k: v for k, v in os.environ.items() if k != "PERFT_PEFT_NO_AUTOLOAD"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        Path(sys.executable).parent / "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={root / 'base'},peft={root / 'perft'},dtype=float32",
        "--tasks",
        TASK,
        "--include_path",
        root / "tasks",
        "--device",
        "cpu",
        "--batch_size",
        "4",
        "--output_path",
        tmp_path,
        "--log_samples",
    ]
    result = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    (samples,) = tmp_path.glob(f"*/samples_{TASK}_*.jsonl")
    rows = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda r: r["doc_id"])
    assert len(rows) == len(DOCS)
    check([[float(resp[0][0]) for resp in row["resps"]] for row in rows], root, "perft")


def test_simple_evaluate_applies_a_loracoe_adapter(setup):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    root = setup
    results = simple_evaluate(
        model="hf",
        model_args=f"pretrained={root / 'base'},peft={root / 'loracoe'},dtype=float32",
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(root / "tasks")),
        device="cpu",
        batch_size=4,
        log_samples=True,
    )
    rows = sorted(results["samples"][TASK], key=lambda r: r["doc_id"])
    check([[float(resp[0][0]) for resp in row["resps"]] for row in rows], root, "loracoe")
    assert 0.0 <= results["results"][TASK]["acc,none"] <= 1.0
