"""Each method lives in its own folder: neither PERFT's nor LoRACoE's package imports the other's modules (what
they share lives in ``perft_peft/checks.py``, ``init.py``, ``targets.py``), and what moved into a method's folder
is still importable from ``perft_peft``."""

import ast
from pathlib import Path

import pytest

import perft_peft

PACKAGE = Path(perft_peft.__file__).resolve().parent
METHODS = ("perft", "loracoe")


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved against ``package``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("method", METHODS)
def test_a_method_does_not_import_the_other(method):
    other = next(m for m in METHODS if m != method)
    offenders = {}
    for path in sorted((PACKAGE / method).glob("*.py")):
        found = sorted(
            name
            for name in imported_modules(path, f"perft_peft.{method}")
            if name == f"perft_peft.{other}" or name.startswith(f"perft_peft.{other}.")
        )
        if found:
            offenders[path.name] = found
    assert not offenders, f"perft_peft/{method}/ imports {other}'s modules: {offenders}"


def test_perft_losses_stay_public():
    from perft_peft.perft import losses

    for name in ("load_balancing_loss", "router_z_loss", "router_records"):
        assert getattr(perft_peft, name) is getattr(losses, name)
