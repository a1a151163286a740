"""The PERFT equations of docs/design.md, written independently of the library: plain loops, float64, tensors read
back from the saved safetensors. Used to check what the layer computes."""

import torch
from transformers.activations import ACT2FN

from perft_peft import PerftLayer


def expert_delta(h, A, B, scaling, act):
    """Delta_j(h) = s * B_j act(A_j h) for one token h [D] and one expert's A [r, D], B [D, r]."""
    z = A.double() @ h.double()
    if act is not None:
        z = ACT2FN[act](z)
    return scaling * (B.double() @ z)


def perft_term(
    variant, h, tensors, scaling, act=None, top_k=None, routing=None, norm_topk_prob=False, base_gates=False
):
    """The variant's added term for tokens h [T, D]; ``routing`` = the model's (index [T,K], weights [T,K]), for E
    and ``base_gates``; ``norm_topk_prob``: R's top-K probabilities divided by their sum (the authors' Mixtral
    routing); ``base_gates``: R's k-th chosen expert weighted by the model's k-th weight (their OLMoE code)."""
    A, B = tensors["perft_A"], tensors["perft_B"]
    out = torch.zeros(h.shape, dtype=torch.float64)
    for t in range(h.shape[0]):
        if variant in ("D", "S"):
            pairs = [(j, 1.0) for j in range(A.shape[0])]
        elif variant == "R":
            logits = tensors["perft_router"].double() @ h[t].double()
            probs = torch.softmax(logits, dim=-1)
            chosen = torch.argsort(probs, descending=True)[:top_k]
            pairs = [(int(j), float(probs[j])) for j in chosen]  # top-K probabilities, not renormalised (Eq. 7)
            if norm_topk_prob:
                total = sum(g for _, g in pairs)
                pairs = [(j, g / total) for j, g in pairs]
            if base_gates:
                pairs = [(j, float(routing[1][t][k])) for k, (j, _) in enumerate(pairs)]
        else:
            index, weights = routing
            pairs = [(int(i), float(w)) for i, w in zip(index[t], weights[t])]
        for j, g in pairs:
            out[t] += g * expert_delta(h[t], A[j], B[j], scaling, act)
    return out


def capture_router_inputs(model):
    """Forward pre-hooks record each PERFT layer's input hidden states (float64) and its router weight."""
    captured = []

    def hook(module, args):
        captured.append(
            (args[0].reshape(-1, args[0].shape[-1]).detach().double(), module.perft_router["default"].detach().double())
        )

    for layer in model.modules():
        if isinstance(layer, PerftLayer):
            layer.register_forward_pre_hook(hook)
    return captured


def reference_router_losses(captured, mask, top_k):
    """Switch/Mixtral balance loss and ST-MoE z-loss per layer, with explicit loops, averaged over layers."""
    balance, zloss = [], []
    for h, W in captured:
        logits = h @ W.T
        probs = logits.softmax(-1)
        M = W.shape[0]
        tokens = [t for t in range(h.shape[0]) if mask[t]]
        f = torch.zeros(top_k, M, dtype=torch.float64)
        for t in tokens:
            for k, j in enumerate(torch.argsort(probs[t], descending=True)[:top_k]):
                f[k, j] += 1 / len(tokens)
        P = sum(probs[t] for t in tokens) / len(tokens)
        balance.append(M * (f * P).sum())
        zloss.append(sum(torch.logsumexp(logits[t], -1) ** 2 for t in tokens) / len(tokens))
    return torch.stack(balance).mean(), torch.stack(zloss).mean()
