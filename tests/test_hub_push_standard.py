"""The standard ways to push put our card on the Hub: ``model.push_to_hub`` on a PERFT / LoRACoE ``PeftModel``
and ``PerftTrainer.push_to_hub`` (``push_to_hub=True``), against the local Hub server (tests/hub_server.py), with
the real huggingface_hub client in a fresh process (see tests/test_hub.py for why). Other adapter types keep
transformers' own card."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # one client process (~30 s)
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.hub_server import HubServer  # noqa: E402

RESULT = "RESULT "
PERFT_REPO, LORACOE_REPO, LORA_REPO, TRAINER_REPO = (
    "user/std-perft",
    "user/std-loracoe",
    "user/std-lora",
    "user/std-trainer",
)
USER_NOTES = "## Notes from the user\n\nKept across pushes."


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """Run the client below in a fresh process against a fresh server; (server storage, the client's findings)."""
    with HubServer(tmp_path_factory.mktemp("hub-storage")) as hub:
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env.update(
            HF_ENDPOINT=hub.url,
            HF_TOKEN="dummy-token",
            HF_HUB_DISABLE_XET="1",
            OMP_NUM_THREADS="1",
            HF_HOME=str(tmp_path_factory.mktemp("hf-home")),
            HF_HUB_DISABLE_PROGRESS_BARS="1",
        )
        work = tmp_path_factory.mktemp("work")
        result = subprocess.run(
            [sys.executable, __file__, str(work)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
        line = next(line for line in result.stdout.splitlines() if line.startswith(RESULT))
        yield hub.storage, json.loads(line[len(RESULT) :])


def card_text(storage, repo, revision="main"):
    commit = storage.commit(repo, storage.refs(repo)[revision] if revision == "main" else revision)
    return storage.read(repo, commit["tree"]["README.md"]).decode()


def metadata(text):
    from huggingface_hub import ModelCard

    return ModelCard(text).data.to_dict()


def test_model_push_to_hub_writes_our_card(pushed):
    storage, result = pushed
    first = card_text(storage, PERFT_REPO, result["perft_first"])
    data = metadata(first)
    assert data["library_name"] == "peft" and data["base_model"] == result["base_path"]
    assert data["tags"][:3] == ["perft", "peft", "moe"] and "my-tag" in data["tags"]  # push_to_hub(tags=...)
    assert data["pipeline_tag"] == "text-generation"
    accounting = result["perft_accounting"]
    for text in (
        "**PERFT-R**",
        "| `top_k` | `2` |",
        f'PeftModel.from_pretrained(base, "{PERFT_REPO}")',
        f"{accounting['activated_trainable']:,}",
        f"{accounting['pct_activated']:.4f}",
    ):
        assert text in first, text
    assert "transformers model that has been pushed" not in first  # transformers' generic card is gone


def test_second_push_updates_our_block_and_keeps_the_rest(pushed):
    storage, result = pushed
    second = card_text(storage, PERFT_REPO)
    assert storage.refs(PERFT_REPO)["main"] != result["perft_first"]
    assert "**PERFT-D**" in second and "| `num_experts` | `3` |" in second and "PERFT-R" not in second
    assert second.count("## How to load") == 1 and second.count("<!-- perft-peft card") == 1
    assert second.rstrip().endswith(USER_NOTES), "the user's text outside our block survives the push"
    assert "my-tag" in metadata(second)["tags"] and "extra" in metadata(second)["tags"]


def test_loracoe_push_and_other_types_untouched(pushed):
    storage, result = pushed
    coe = card_text(storage, LORACOE_REPO)
    assert metadata(coe)["tags"][:3] == ["loracoe", "peft", "moe"] and "**LoRACoE**" in coe
    assert metadata(coe)["library_name"] == "peft" and metadata(coe)["base_model"] == result["base_path"]
    assert f'PeftModel.from_pretrained(base, "{LORACOE_REPO}")' in coe
    assert "transformers model that has been pushed" not in coe
    lora = metadata(card_text(storage, LORA_REPO))
    assert lora == result["lora_card_without_perft_peft"], "a LoRA gets exactly the card it gets without us"
    assert lora["library_name"] == "transformers"


def test_trainer_push_to_hub_card_with_model_index(pushed):
    storage, result = pushed
    card = card_text(storage, TRAINER_REPO)
    data = metadata(card)
    assert data["library_name"] == "peft" and data["tags"][:3] == ["perft", "peft", "moe"]
    assert f'PeftModel.from_pretrained(base, "{TRAINER_REPO}")' in card
    assert "## Training procedure" in card.split("end of perft-peft card")[1], "Trainer's summary is kept"
    (entry,) = data["model-index"]
    assert entry["name"] == TRAINER_REPO.split("/")[-1]
    results = {r["dataset"]["type"]: r["metrics"][0] for r in entry["results"]}
    assert results == {
        "boolq": {"type": "accuracy", "value": 70.0, "name": "accuracy (%)"},
        "gsm8k": {"type": "accuracy", "value": 25.0, "name": "accuracy (%)"},
    }
    assert "| BoolQ |" in card and "70.0" in card
    assert result["trainer_local_card"] == card, "output_dir/README.md is what was uploaded"


# ---------------------------------------------------------------------------------------------------- client


def _lora_card_without_us(work: Path) -> dict:
    """transformers' own push of a LoRA in a process that never imported perft_peft: the reference."""
    code = (
        "import sys, json, torch; from peft import get_peft_model, LoraConfig; "
        "from transformers import AutoModelForCausalLM; from huggingface_hub import ModelCard; "
        "m = get_peft_model(AutoModelForCausalLM.from_pretrained(sys.argv[1]), LoraConfig(r=2, "
        "target_modules=['q_proj'])); m.push_to_hub('user/std-lora-reference'); "
        "print(json.dumps(ModelCard.load('user/std-lora-reference').data.to_dict()))"
    )
    env = {**os.environ, "PERFT_PEFT_NO_AUTOLOAD": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(work / "base")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=300,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def client(work: Path) -> dict:
    import torch
    from datasets import Dataset
    from huggingface_hub import HfApi, ModelCard
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import perft_peft
    from perft_peft import LoraCoeConfig, PerftConfig, parameter_accounting
    from perft_peft.evaluation import BenchmarkResult, EvalReport
    from perft_peft.testing import tiny_moe
    from perft_peft.trainer import PerftTrainer, PerftTrainingArguments

    assert "perft_peft" in sys.modules and perft_peft.__version__
    tiny_moe("mixtral").save_pretrained(work / "base")

    def base():
        return AutoModelForCausalLM.from_pretrained(work / "base")

    perft = get_peft_model(base(), PerftConfig(variant="R", r=4, num_experts=4, top_k=2, task_type="CAUSAL_LM"))
    first = perft.push_to_hub(PERFT_REPO, tags=["my-tag"]).oid
    # The user adds notes on the Hub, outside our block; then pushes a different adapter with another tag.
    card = ModelCard.load(PERFT_REPO)
    HfApi().upload_file(
        repo_id=PERFT_REPO,
        path_in_repo="README.md",
        path_or_fileobj=(str(card).rstrip() + "\n\n" + USER_NOTES + "\n").encode(),
    )
    get_peft_model(base(), PerftConfig(variant="D", r=4, num_experts=3)).push_to_hub(PERFT_REPO, tags=["extra"])

    get_peft_model(base(), LoraCoeConfig(r=4, target_modules=["q_proj"])).push_to_hub(LORACOE_REPO)
    get_peft_model(base(), LoraConfig(r=2, target_modules=["q_proj"])).push_to_hub(LORA_REPO)

    ids = torch.randint(3, 128, (8, 10), generator=torch.Generator().manual_seed(0)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids, "attention_mask": [[1] * 10] * 8})
    out = work / "trainer"
    args = PerftTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        push_to_hub=True,
        hub_model_id=TRAINER_REPO,
    )
    trainer = PerftTrainer(model=get_peft_model(base(), PerftConfig(variant="R", r=4)), args=args, train_dataset=data)
    trainer.train()
    EvalReport(
        {"boolq": BenchmarkResult("boolq", 7, 10, 4, 32), "gsm8k": BenchmarkResult("gsm8k", 1, 4, 4, 256)}
    ).to_json(out / "eval_results.json")
    trainer.push_to_hub()
    return {
        "perft_first": first,
        "perft_accounting": {
            **vars(parameter_accounting(perft)),
            "pct_activated": parameter_accounting(perft).pct_activated,
        },
        "base_path": str(work / "base"),
        "trainer_local_card": (out / "README.md").read_text(),
        "lora_card_without_perft_peft": {**_lora_card_without_us(work)},
    }


if __name__ == "__main__":
    print(RESULT + json.dumps(client(Path(sys.argv[1]))), flush=True)
