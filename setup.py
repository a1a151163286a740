import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# Run by Python at start-up from site-packages: registers PERFT and LoRACoE with peft when peft is imported
# (perft_peft_autoload.py says how, docs/design.md "Registration: loading without `import perft_peft`").
AUTOLOAD_PTH = ("perft_peft-autoload.pth", "import perft_peft_autoload; perft_peft_autoload.install()\n")


class BuildPyWithAutoload(build_py):
    """build_py, plus the autoload .pth at the root of what gets installed into site-packages. A regular wheel
    takes the root of build_lib; an editable (PEP 660) wheel ignores build_lib and takes the files setuptools
    installs into its root (``install_lib``), so the .pth goes there. ``data_files`` cannot do this: it installs
    under sys.prefix, not site-packages."""

    def run(self):
        super().run()
        root = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, AUTOLOAD_PTH[0]), "w", encoding="utf-8") as f:
            f.write(AUTOLOAD_PTH[1])


setup(
    name="perft-peft",
    version="0.1.0",
    description="PERFT and LoRACoE: parameter-efficient fine-tuning for Mixture-of-Experts LLMs, as peft methods",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # `trainer/` is installed as `perft_peft.trainer`, so no generic top-level `trainer` module is installed.
    packages=find_packages(include=["perft_peft", "perft_peft.*"]) + ["perft_peft.trainer"],
    package_dir={"perft_peft.trainer": "trainer"},
    py_modules=["perft_peft_autoload"],  # tiny and import-free: the .pth imports it at every start-up
    cmdclass={"build_py": BuildPyWithAutoload},
    package_data={"perft_peft.data": ["fixtures/*.json", "fixtures/eval/*.json"]},
    install_requires=[
        "torch>=2.6,<3",
        "transformers>=5.0,<6",
        "peft>=0.21,<0.22",  # we extend peft's PeftType and BaseTuner: pin the minor version we test
        "accelerate>=1.10,<2",
        "safetensors>=0.4",
        "huggingface_hub>=1.0,<3",
        "tqdm>=4.60",
        "matplotlib>=3.7",  # routing / rank-usage plots
        "datasets>=3",
        "evaluate>=0.4,<0.5",  # the shipped accuracy metric (loaded by path, offline)
        "pyyaml>=6",
    ],
    extras_require={
        # dev runs the whole suite, including the 2-process DeepSpeed ZeRO-3 recipe test and the trl mixin test
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "trl>=1.0",
            "deepspeed>=0.17,<1",
            "lm-eval==0.4.13",
            "ruff>=0.14,<0.15",  # `make quality` (part of `make test`) and `make style`
        ],
        "deepspeed": ["deepspeed>=0.17,<1"],
        # PERFT Figure 6 as the paper draws it: UMAP after PCA (without it, the figure shows PC1 and PC2)
        "umap": ["umap-learn>=0.5,<0.6"],
        # lm-evaluation-harness, tested with exactly this release (docs/evaluation.md "Evaluating with lm-eval")
        "lm-eval": ["lm-eval==0.4.13"],
    },
)
