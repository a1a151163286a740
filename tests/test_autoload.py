"""PERFT and LoRACoE adapters load through peft without ``import perft_peft``, in fresh processes of fresh
virtualenvs where perft-peft is installed regularly (``pip install .``) and editable (``pip install -e .``).

Each venv is made without pip and sees this venv's packages (torch, transformers, peft, trl) through a plain
path line in a .pth file, which adds the directory to sys.path without running the .pth files in it; perft-peft
itself is installed into it from a copy of the source by this venv's pip (``pip --python``). So only the venv's
own perft-peft installation (and its ``perft_peft-autoload.pth``) can register the methods.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

# Nothing heavy at module level: the venvs run this file as their client, which must start with nothing imported.
pytestmark = pytest.mark.slow  # two venvs built by pip, six Python processes: ~1 minute
ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["perft_peft", "trainer", "setup.py", "setup.cfg", "README.md", "perft_peft_autoload.py"]
RESULT = "RESULT "
IDS = [[1, 5, 9, 13, 17, 21, 25, 29]]


def _venv(root: Path, editable: bool) -> Path:
    """A fresh venv with perft-peft installed from a copy of the source (so the build leaves no files here)."""
    source = root / "src"
    if not source.exists():
        source.mkdir(parents=True)
        for name in SOURCES:
            copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
            copy(
                ROOT / name,
                source / name,
                **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}),
            )
    venv = root / ("editable" if editable else "regular")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # A path line only: this venv's site-packages joins sys.path, its .pth files (our editable install) do not run.
    Path(purelib, "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--quiet",
        "--no-deps",
        *(["-e"] if editable else []),
        source,
    ]
    result = subprocess.run(install, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert Path(purelib, "perft_peft-autoload.pth").is_file()
    return python


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A saved tiny base, a PERFT-R and a LoRACoE adapter on it, and the logits they give here (where
    perft_peft is imported)."""
    import torch
    from peft import PeftModel, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from perft_peft import LoraCoeConfig, PerftConfig
    from perft_peft.testing import tiny_moe

    root = tmp_path_factory.mktemp("adapters")
    tiny_moe("mixtral").save_pretrained(root / "base")
    ids = torch.tensor(IDS)
    expected = {}
    for name, config in (
        ("perft", PerftConfig(variant="R", r=4, init_weights=False)),
        ("loracoe", LoraCoeConfig(r=4, target_modules=["q_proj"], init_weights=False)),
    ):
        # from the saved base, so adapter_config.json records it (AutoPeftModelForCausalLM loads it)
        get_peft_model(AutoModelForCausalLM.from_pretrained(root / "base"), config).save_pretrained(root / name)
        with torch.no_grad():
            expected[name] = PeftModel.from_pretrained(tiny_moe("mixtral"), root / name).eval()(ids).logits
    with torch.no_grad():
        expected["base"] = tiny_moe("mixtral")(ids).logits
    save_file(expected, root / "expected.safetensors")
    return root


@pytest.fixture(scope="module")
def venvs(tmp_path_factory):
    root = tmp_path_factory.mktemp("venvs")
    return {"regular": _venv(root, editable=False), "editable": _venv(root, editable=True)}


def _client(python, *args, env=None, cwd):
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PERFT_PEFT_NO_AUTOLOAD")},
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    result = subprocess.run(
        [python, __file__, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith(RESULT))
    return json.loads(line[len(RESULT) :]), result.stderr


@pytest.mark.parametrize("kind", ["regular", "editable"])
def test_loads_without_import(kind, venvs, adapters, tmp_path):
    result, _ = _client(venvs[kind], "load", adapters, cwd=tmp_path)
    # Python start-up imported our small module only; nothing heavy until peft is imported.
    assert result["at_start"] == {
        "perft_peft_autoload": True,
        "peft": False,
        "torch": False,
        "perft_peft": False,
        "transformers": False,
    }
    assert result["finder_installed"] is True
    # perft_peft came from this venv's installation, not from the repository under test.
    location = Path(result["perft_peft_file"])
    assert ("site-packages" in location.parts) == (kind == "regular") and ROOT not in location.parents
    assert result["diffs"] == {"peft": 0.0, "auto": 0.0, "transformers": 0.0}, result
    assert result["differs_from_base"] is True
    assert result["peft_loader_is_its_own"] is True and result["finder_removed"] is True


def test_env_var_turns_it_off(venvs, adapters, tmp_path):
    result, _ = _client(venvs["regular"], "off", adapters, env={"PERFT_PEFT_NO_AUTOLOAD": "1"}, cwd=tmp_path)
    assert result == {"finder_installed": False, "error": "KeyError: 'PERFT'", "perft_peft_imported": False}


def test_a_failing_registration_never_breaks_peft(venvs, adapters, tmp_path):
    """perft_peft raising on import (here a broken copy first on PYTHONPATH): peft imports and works (a LoRA),
    one RuntimeWarning says what happened, PERFT fails to load exactly as without the hook."""
    broken = tmp_path / "broken" / "perft_peft"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('simulated failure')\n")
    result, stderr = _client(venvs["regular"], "broken", adapters, env={"PYTHONPATH": str(broken.parent)}, cwd=tmp_path)
    assert result["warnings"] == [
        "perft-peft could not register PERFT and LoRACoE with peft (RuntimeError: "
        "simulated failure). peft works as before; loading a PERFT or LoRACoE adapter "
        "needs `import perft_peft` first. Set PERFT_PEFT_NO_AUTOLOAD=1 to skip this step."
    ]
    assert result["lora_works"] is True and result["error"] == "KeyError: 'PERFT'"


# ---------------------------------------------------------------------------------------------------- clients
# Run by the venvs' Python: nothing here imports perft_peft.


def client_load(root):
    at_start = {
        name: name in sys.modules for name in ("perft_peft_autoload", "peft", "torch", "perft_peft", "transformers")
    }
    finder_installed = any(type(f).__name__ == "_PeftFinder" for f in sys.meta_path)
    # The order matters: trl, then transformers' Trainer, import peft in the middle of their own imports.
    import trl  # noqa: F401
    from transformers import Trainer  # noqa: F401

    # isort: split
    import torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    root = Path(root)
    expected = load_file(root / "expected.safetensors")
    ids = torch.tensor(IDS)

    def base():
        return AutoModelForCausalLM.from_pretrained(root / "base")

    def diff(model, name):
        with torch.no_grad():
            return (model.eval()(ids).logits - expected[name]).abs().max().item()

    with_adapter = base()
    with_adapter.load_adapter(str(root / "perft"))
    diffs = {
        "peft": diff(PeftModel.from_pretrained(base(), root / "perft"), "perft"),
        "auto": diff(AutoPeftModelForCausalLM.from_pretrained(root / "loracoe"), "loracoe"),
        "transformers": diff(with_adapter, "perft"),
    }
    import peft

    return {
        "at_start": at_start,
        "finder_installed": finder_installed,
        "diffs": diffs,
        "differs_from_base": bool((expected["perft"] - expected["base"]).abs().max() > 1e-3),
        "perft_peft_file": sys.modules["perft_peft"].__file__,
        "peft_loader_is_its_own": type(peft.__loader__).__name__
        == type(peft.__spec__.loader).__name__
        == "SourceFileLoader",
        "finder_removed": not any(type(f).__name__ == "_PeftFinder" for f in sys.meta_path),
    }


def _load_error(root) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    try:
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(Path(root) / "base"), Path(root) / "perft")
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return "loaded"


def client_off(root):
    finder_installed = any(type(f).__name__ == "_PeftFinder" for f in sys.meta_path)
    return {
        "finder_installed": finder_installed,
        "error": _load_error(root),
        "perft_peft_imported": "perft_peft" in sys.modules,
    }


def client_broken(root):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import peft
        import peft.tuners.lora  # noqa: F401  (a second import of peft's modules: no second warning)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(Path(root) / "base"), LoraConfig(r=2, target_modules=["q_proj"])
    )
    return {
        "warnings": [str(w.message) for w in caught if "perft-peft" in str(w.message)],
        "lora_works": isinstance(lora, peft.PeftModel),
        "error": _load_error(root),
    }


if __name__ == "__main__":
    print(RESULT + json.dumps(globals()[f"client_{sys.argv[1]}"](*sys.argv[2:])), flush=True)
