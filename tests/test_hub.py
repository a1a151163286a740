"""Sharing on the Hub, against a real HTTP server (tests/hub_server.py) driven by the real huggingface_hub client.

huggingface_hub reads HF_ENDPOINT / HF_HOME when it is imported (and this pytest process imported it long ago),
so every client runs in a fresh process: the tiny recipe with --push_to_hub, then the steps at the bottom of this
file (``python tests/test_hub.py <step> ...``), which print their findings as one JSON line for the tests to judge.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # several processes (the recipe, the clients), ~1 minute in all
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # as a script (the client steps), `tests` must be importable too
from tests.hub_server import HubServer  # noqa: E402
from tests.scripts import RECIPES, TINY_RUN, run  # noqa: E402

REPO = "user/tiny-perft"
MISSING = "user/does-not-exist"
NO_ADAPTER = "user/no-adapter"
BRANCH = "experiment"
RESULT = "RESULT "


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One server for the module; it stops when the module is done (or after its lifetime, whatever happens)."""
    with HubServer(tmp_path_factory.mktemp("hub-storage")) as server:
        yield server


def _env(endpoint: str, hf_home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    return {
        **env,
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": "dummy-token",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _step(name, *args, endpoint, hf_home):
    """Run a client step of this file in a fresh process; its JSON result."""
    out = run([__file__, name, *args], _env(endpoint, hf_home))
    return json.loads(next(line for line in out.splitlines() if line.startswith(RESULT))[len(RESULT) :])


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    """The tiny recipe run that pushes its adapter: the output folder and the commit it made."""
    out = tmp_path_factory.mktemp("recipe") / "run"
    run(
        [
            RECIPES / "mixtral_perft_r.py",
            *TINY_RUN,
            "--max_steps",
            "1",
            "--output_dir",
            out,
            "--push_to_hub",
            "--hub_model_id",
            REPO,
        ],
        _env(hub.url, tmp_path_factory.mktemp("hf-recipe")),
    )
    return out, hub.storage.refs(REPO)["main"]


@pytest.fixture(scope="module")
def pushed_again(hub, pushed, tmp_path_factory):
    """A second push of a changed adapter (perft_peft.hub.push_to_hub from memory), the first one to a branch,
    a repo without adapter, and transformers' own push_to_hub for comparison."""
    out, _ = pushed
    changed = tmp_path_factory.mktemp("changed")
    return changed, _step("push_again", out, changed, endpoint=hub.url, hf_home=tmp_path_factory.mktemp("hf-push"))


@pytest.fixture(scope="module")
def loaded(hub, pushed, pushed_again, tmp_path_factory):
    """Everything loaded by repo id in a fresh process with an empty cache, plus the bad-input attempts."""
    (out, first), (changed, _) = pushed, pushed_again
    hf_home = tmp_path_factory.mktemp("hf-load")
    return hf_home, _step("load", out, changed, first, endpoint=hub.url, hf_home=hf_home)


# ---------------------------------------------------------------------------------------------------- tests


def test_recipe_push_lands_adapter_and_our_card(hub, pushed):
    out, first = pushed
    storage = hub.storage
    tree = storage.commit(REPO, first)["tree"]
    assert sorted(tree) == [".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert tree["adapter_model.safetensors"].get("lfs"), "safetensors must travel through the LFS batch API"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert storage.read(REPO, tree[name]) == (out / name).read_bytes()
    card = storage.read(REPO, tree["README.md"]).decode()
    assert card == (out / "README.md").read_text(), "the local card is written after the push, equal to it"
    accounting = json.loads((out / "accounting.json").read_text())
    for text in (
        "PERFT-R",
        "import perft_peft",
        f'PeftModel.from_pretrained(base, "{REPO}")',
        "# Act.",
        f"{accounting['activated_trainable']:,}",
        f"{accounting['pct_activated']:.4f}",
        "| `top_k` | `2` |",
    ):
        assert text in card
    assert any(r.startswith("PUT /api/lfs-upload/") for r in hub.requests)


def test_card_metadata(pushed, loaded):
    out, _ = pushed
    card = loaded[1]["card"]
    assert card["library_name"] == "peft"
    assert card["base_model"] == str(out / "tiny_base")
    assert {"perft", "peft", "moe"} <= set(card["tags"])


def test_load_by_repo_id_equals_local_folder(loaded):
    diffs = loaded[1]["diffs"]
    # peft, peft's auto class and transformers' load_adapter give exactly the local folder's outputs...
    assert diffs["peft"] == diffs["auto"] == diffs["transformers"] == 0.0
    # ...and that is not the base model's output (so an adapter that silently failed to load would show).
    assert diffs["base"] > 1e-3


def test_push_twice_keeps_history(hub, pushed, pushed_again, loaded):
    out, first = pushed
    second = pushed_again[1]["second"]
    commits = loaded[1]["commits"]
    assert [c["id"] for c in commits] == [second, first, hub.storage.history(REPO, first)[-1][0]]
    assert commits[1]["title"] == "Upload adapter trained with perft-peft"
    assert loaded[1]["first_revision_bytes_equal"] is True
    diffs = loaded[1]["diffs"]
    assert diffs["pinned"] == diffs["auto_pinned"] == diffs["transformers_pinned"] == 0.0  # the first adapter
    assert diffs["main_vs_first"] > 1e-3
    assert diffs["branch"] == 0.0  # push_adapter(revision=<branch>) created the branch; it loads like a sha


def test_our_card_wins_over_transformers_push(pushed_again):
    cards = pushed_again[1]["transformers_push"]
    # transformers' PushToHubMixin.push_to_hub on a fresh repo: our card (perft_peft hooks it; see
    # tests/test_hub_push_standard.py), as perft_peft.hub.push_to_hub and transformers' push after that.
    for step in ("transformers_first", "ours", "transformers_after"):
        assert cards[step]["library_name"] == "peft" and "perft" in cards[step]["tags"], step


# What each loading API says: peft's and transformers' own messages, the Hub's error chained to peft's (raised
# while handling it). docs/hub.md lists them.
@pytest.mark.parametrize(
    "case, message, cause",
    [
        ("missing_peft", f"Can't find 'adapter_config.json' at '{MISSING}'", "RepositoryNotFoundError"),
        ("missing_auto", f"Can't find 'adapter_config.json' at '{MISSING}'", "RepositoryNotFoundError"),
        ("missing_transformers", f"{MISSING} is not a local folder and is not a valid model identifier", None),
        ("missing_revision_peft", f"Can't find 'adapter_config.json' at '{REPO}'", "RevisionNotFoundError"),
        ("no_adapter_peft", f"Can't find 'adapter_config.json' at '{NO_ADAPTER}'", "RemoteEntryNotFoundError"),
        ("no_adapter_auto", f"Can't find 'adapter_config.json' at '{NO_ADAPTER}'", "RemoteEntryNotFoundError"),
        ("no_adapter_transformers", f"adapter model file not found in {NO_ADAPTER}", None),
    ],
)
def test_repo_or_revision_without_adapter(loaded, case, message, cause):
    error = loaded[1]["errors"][case]
    assert message in error["message"], error
    if cause:
        assert error["cause"] == cause, error


def test_failed_loads_leave_nothing_in_the_cache(loaded):
    cache = loaded[0] / "hub"
    assert not [p for p in cache.glob("models--user--does-not-exist/**/*") if p.is_file()]
    assert not [p for p in cache.glob("models--user--no-adapter/blobs/*")]  # only huggingface_hub's absence marks


def test_adapter_for_another_base(loaded):
    """Our config's own check (base_hidden_size) surfaces through both loading paths; the model is untouched."""
    result = loaded[1]
    for api in ("peft", "transformers"):
        error = result["errors"][f"other_base_{api}"]
        assert error["type"] == "ValueError", error
        assert "made for a model with hidden size 32" in error["message"], error
        assert result[f"other_base_{api}_untouched"] is True


def test_server_gone_mid_push(pushed, tmp_path):
    """The server vanishes when the commit request arrives (the LFS upload already done): a clear error, the
    local folder byte-for-byte as it was, no stray files; the repo still has only its initial commit."""
    out, _ = pushed
    folder = tmp_path / "adapter"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "accounting.json"):
        shutil.copy2(out / name, folder / name)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    with HubServer(tmp_path / "storage", die_on_commit=True) as dying:
        result = _step("push_doomed", folder, endpoint=dying.url, hf_home=tmp_path / "hf")
        assert any(r.startswith("PUT /api/lfs-upload/") for r in dying.requests)
        assert len(dying.storage.history("user/doomed", dying.storage.refs("user/doomed")["main"])) == 1
    assert result["type"] == "HubPushError", result
    assert "connection to the Hub failed or was lost (RemoteProtocolError" in result["message"]
    assert f"{folder} is unchanged" in result["message"]
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()} == before


def test_push_refused_token(pushed_again):
    error = pushed_again[1]["no_token"]
    assert error["type"] == "HubPushError", error
    assert "the Hub refused the token (401: Invalid credentials in Authorization header)" in error["message"]


def test_push_adapter_needs_a_saved_adapter(tmp_path):
    from perft_peft.hub import push_adapter

    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no adapter_model.safetensors"):
        push_adapter(tmp_path, "user/anything")  # fails before any network access
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json"]


def test_model_card_loracoe_with_evaluation(tmp_path):
    """No server needed: the card of a LoRACoE adapter folder, with the accounting and the evaluation table."""
    from peft import get_peft_model

    from perft_peft import LoraCoeConfig, parameter_accounting
    from perft_peft.hub import model_card, save_accounting
    from perft_peft.testing import tiny_moe

    model = get_peft_model(tiny_moe("mixtral"), LoraCoeConfig(r=4, num_experts=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path)
    accounting = parameter_accounting(model)
    save_accounting(accounting, tmp_path)
    (tmp_path / "eval_results.md").write_text("| BoolQ | PIQA | CR avg |\n|---|---|---|\n| 61.2 | 70.1 | 65.7 |\n")
    card = model_card(tmp_path, repo_id="user/coe")
    assert card.data.tags == ["loracoe", "peft", "moe"] and card.data.library_name == "peft"
    assert "**LoRACoE**" in card.text and "| `construction` | `composition` |" in card.text
    assert f"{accounting.activated_trainable:,}" in card.text
    assert "## Evaluation\n\n| BoolQ | PIQA | CR avg |" in card.text
    from_model = str(model_card(model, repo_id="user/coe"))
    assert from_model.split("<!-- end of")[0].rstrip() == str(card).split("## Evaluation")[0].rstrip()


# ---------------------------------------------------------------------------------------------------- client steps
# Run in fresh processes by the fixtures above, with HF_ENDPOINT pointing at the server.


def _attempt(fn) -> dict:
    try:
        fn()
    except Exception as e:  # the tests judge the type and message
        cause = e.__cause__ or e.__context__  # peft raises its ValueError inside the `except` of the Hub error
        return {"type": type(e).__name__, "message": str(e), "cause": type(cause).__name__}
    return {"type": None, "message": "", "cause": None}


def _card(repo_id) -> dict:
    from huggingface_hub import ModelCard

    data = ModelCard.load(repo_id).data
    return {"library_name": data.library_name, "base_model": data.base_model, "tags": data.tags}


def step_push_again(out, changed):
    import torch
    from huggingface_hub import HfApi
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from perft_peft import hub

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(Path(out) / "tiny_base"), out, is_trainable=True
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "perft_" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=generator))
    model.save_pretrained(changed)
    second = hub.push_to_hub(model, REPO).oid
    hub.push_adapter(out, REPO, revision=BRANCH)  # the first adapter again, on a new branch
    HfApi().create_repo(NO_ADAPTER)
    HfApi().upload_file(repo_id=NO_ADAPTER, path_or_fileobj=b"# nothing here\n", path_in_repo="README.md")
    model.push_to_hub("user/via-transformers")
    cards = {"transformers_first": _card("user/via-transformers")}
    hub.push_to_hub(model, "user/via-transformers")
    cards["ours"] = _card("user/via-transformers")
    model.push_to_hub("user/via-transformers")
    cards["transformers_after"] = _card("user/via-transformers")
    no_token = _attempt(lambda: hub.push_adapter(out, "user/no-token", token=False))  # False: send no token
    return {"second": second, "transformers_push": cards, "no_token": no_token}


def step_load(out, changed, first):
    import torch
    from huggingface_hub import HfApi, hf_hub_download
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    from perft_peft import PerftLayer
    from perft_peft.testing import tiny_moe

    def base():
        return AutoModelForCausalLM.from_pretrained(Path(out) / "tiny_base")

    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])

    def logits(model):
        with torch.no_grad():
            return model.eval()(input_ids=ids).logits

    def diff(a, b):
        return (a - b).abs().max().item()

    first_local, changed_local = (
        logits(PeftModel.from_pretrained(base(), out)),
        logits(PeftModel.from_pretrained(base(), changed)),
    )
    with_adapter, pinned_adapter = base(), base()
    with_adapter.load_adapter(REPO)
    pinned_adapter.load_adapter(REPO, adapter_kwargs={"revision": first})  # `revision=` is a TypeError here
    diffs = {
        "peft": diff(logits(PeftModel.from_pretrained(base(), REPO)), changed_local),
        "auto": diff(logits(AutoPeftModelForCausalLM.from_pretrained(REPO)), changed_local),
        "transformers": diff(logits(with_adapter), changed_local),
        "base": diff(logits(base()), changed_local),
        "pinned": diff(logits(PeftModel.from_pretrained(base(), REPO, revision=first)), first_local),
        "auto_pinned": diff(logits(AutoPeftModelForCausalLM.from_pretrained(REPO, revision=first)), first_local),
        "transformers_pinned": diff(logits(pinned_adapter), first_local),
        "branch": diff(logits(PeftModel.from_pretrained(base(), REPO, revision=BRANCH)), first_local),
        "main_vs_first": diff(changed_local, first_local),
    }
    old = Path(hf_hub_download(REPO, "adapter_model.safetensors", revision=first)).read_bytes()
    commits = [{"id": c.commit_id, "title": c.title} for c in HfApi().list_repo_commits(REPO)]

    others = {api: tiny_moe("mixtral", hidden_size=64) for api in ("peft", "transformers")}
    errors = {
        "missing_peft": _attempt(lambda: PeftModel.from_pretrained(base(), MISSING)),
        "missing_auto": _attempt(lambda: AutoPeftModelForCausalLM.from_pretrained(MISSING)),
        "missing_transformers": _attempt(lambda: base().load_adapter(MISSING)),
        "missing_revision_peft": _attempt(lambda: PeftModel.from_pretrained(base(), REPO, revision="nope")),
        "no_adapter_peft": _attempt(lambda: PeftModel.from_pretrained(base(), NO_ADAPTER)),
        "no_adapter_auto": _attempt(lambda: AutoPeftModelForCausalLM.from_pretrained(NO_ADAPTER)),
        "no_adapter_transformers": _attempt(lambda: base().load_adapter(NO_ADAPTER)),
        "other_base_peft": _attempt(lambda: PeftModel.from_pretrained(others["peft"], REPO)),
        "other_base_transformers": _attempt(lambda: others["transformers"].load_adapter(REPO)),
    }
    return {
        "diffs": diffs,
        "card": _card(REPO),
        "commits": commits,
        "errors": errors,
        "first_revision_bytes_equal": old == (Path(out) / "adapter_model.safetensors").read_bytes(),
        **{
            f"other_base_{api}_untouched": not any(isinstance(m, PerftLayer) for m in model.modules())
            for api, model in others.items()
        },
    }


def step_push_doomed(folder):
    from perft_peft.hub import push_adapter

    return _attempt(lambda: push_adapter(folder, "user/doomed"))


if __name__ == "__main__":
    import perft_peft  # noqa: F401  (registers PERFT with peft, as the card says to)

    print(RESULT + json.dumps(globals()[f"step_{sys.argv[1]}"](*sys.argv[2:])), flush=True)
