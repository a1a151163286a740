from setuptools import find_packages, setup

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
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "trl>=1.0", "deepspeed>=0.17,<1"],
        "deepspeed": ["deepspeed>=0.17,<1"],
        # PERFT Figure 6 as the paper draws it: UMAP after PCA (without it, the figure shows PC1 and PC2)
        "umap": ["umap-learn>=0.5,<0.6"],
    },
)
