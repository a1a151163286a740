"""The papers' MoE-agnostic baselines, as peft's own LoRA: on attention W_q, W_v; on the router W_g; on the
expert weights (peft's ``target_parameters``, one LoRA per expert on the fused 3-D expert tensors).

Used by ``recipes/baselines.py`` and the benchmarks, so both train exactly the same baselines.
"""

from __future__ import annotations

TARGETS = {
    "lora_attn": dict(target_modules=["q_proj", "v_proj"]),
    "lora_router": dict(target_modules=[], target_parameters=["mlp.gate.weight"]),
    "lora_experts": dict(target_modules=[], target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]),
}


def lora_config(method: str, r: int, lora_alpha: float | None = None, lora_dropout: float = 0.0):
    """A peft ``LoraConfig`` for ``method`` (a key of TARGETS); ``lora_alpha`` defaults to 2r, as in the papers.

    peft's LoRA on parameters has no dropout, so ``lora_dropout`` applies to ``lora_attn`` only.
    """
    from peft import LoraConfig

    if method not in TARGETS:
        raise ValueError(f"Unknown baseline {method!r}; choose one of {', '.join(TARGETS)}.")
    targets = TARGETS[method]
    dropout = 0.0 if "target_parameters" in targets else lora_dropout
    return LoraConfig(
        r=r,
        lora_alpha=2 * r if lora_alpha is None else lora_alpha,
        lora_dropout=dropout,
        task_type="CAUSAL_LM",
        **targets,
    )
