"""Registers PERFT and LoRACoE with peft in every process where perft-peft is installed, without
``import perft_peft``.

peft has no plugin discovery, so anything that loads adapters through peft without importing perft_peft first
(lm-eval's ``lm_eval`` command, trl's CLI, serving scripts, ``AutoPeftModelForCausalLM`` in a notebook) would fail
with ``KeyError: 'PERFT'``. perft-peft installs ``perft_peft-autoload.pth`` into site-packages; Python runs it at
start-up, and it calls ``install()``, which only puts a finder at the front of ``sys.meta_path`` (nothing else is
imported: not peft, not torch). When ``peft`` itself is imported, the finder lets peft's own loader run peft's
``__init__`` and then imports ``perft_peft``, which registers both methods; the finder then removes itself.

If that import fails, peft works as before and one ``RuntimeWarning`` says why (loading a PERFT or LoRACoE adapter
then needs an explicit ``import perft_peft``, as without this module). ``PERFT_PEFT_NO_AUTOLOAD=1`` turns it off.
"""

import os
import sys

ENV_VAR = "PERFT_PEFT_NO_AUTOLOAD"
_TARGET = "peft"


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once), unless ``PERFT_PEFT_NO_AUTOLOAD`` is set; if peft is imported
    already, register right away."""
    if os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on"):
        return
    if _TARGET in sys.modules:
        _register()
    elif not any(isinstance(finder, _PeftFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PeftFinder())


class _PeftFinder:
    """Finds ``peft`` as the other finders would, and wraps its loader so perft_peft registers after it ran."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


class _RegisteringLoader:
    """peft's loader, then ``import perft_peft``. peft itself sees its own loader (``__loader__``, ``__spec__``)."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # is_package, get_resource_reader, ...: answered by peft's loader
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _PeftFinder)]
        if getattr(module.__spec__, "loader", None) is self:
            module.__spec__.loader = self.loader
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self.loader
        self.loader.exec_module(module)
        _register()


def _register() -> None:
    if "perft_peft" in sys.modules:  # imported, or being imported (it imports peft): it registers itself
        return
    try:
        import perft_peft  # noqa: F401  (registers PERFT and LoRACoE with peft)
    except Exception as error:  # never break `import peft`
        import warnings

        warnings.warn(
            f"perft-peft could not register PERFT and LoRACoE with peft ({type(error).__name__}: "
            f"{error}). peft works as before; loading a PERFT or LoRACoE adapter needs `import "
            f"perft_peft` first. Set {ENV_VAR}=1 to skip this step.",
            RuntimeWarning,
            stacklevel=2,
        )
