"""LoRACoE's router initialisation: random (the paper, §4.2), so the E composite experts start different, and small,
so switching warmup -> joint leaves the warmed-up LoRA's output almost unchanged.

Why random: with R = 0 every expert's softmax is uniform and every expert receives the same gradient, so the E rows
blocks of R stay equal forever and mean_e softmax(R_e x) is one softmax: any E would train as E = 1.

Why this scale: R ~ N(0, std^2) with std = ROUTER_INIT_SCALE / sqrt(d_in) gives logits l = R x with standard
deviation ROUTER_INIT_SCALE * rms(x) (||x|| = sqrt(d_in) rms(x)). To first order in l, with kappa making uniform
weights c = 1 (``composition_scale="rank"``),

    composition: c_j - 1 = mean_e (l_ej - mean_k l_ek)      rms = ROUTER_INIT_SCALE * rms(x) * sqrt((1 - 1/r) / E)
    partition:   c_j - 1 = l_g(j) - mean_g l_g               rms = ROUTER_INIT_SCALE * rms(x) * sqrt(1 - 1/E)

and the change at the switch, s B ((c - 1) * A x), is about rms(c - 1) times the LoRA update s B A x: at most
ROUTER_INIT_SCALE * rms(x) = 1e-3 for normalised hidden states (rms(x) ~ 1), which keeps it below 1e-2 for inputs
with rms up to 10 (e.g. MLP activations entering down_proj). The experts still start measurably different: their
logits differ by ~1e-3 relative, 10^4 times float32's resolution.
"""

import math

import torch

ROUTER_INIT_SCALE = 1e-3


@torch.no_grad()
def init_router(router: torch.Tensor) -> None:
    """router [rows, d_in] ~ N(0, (ROUTER_INIT_SCALE / sqrt(d_in))^2), in place."""
    router.normal_(0.0, ROUTER_INIT_SCALE / math.sqrt(router.shape[-1]))
