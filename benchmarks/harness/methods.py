"""The methods the benchmarks compare, written as short specs so a command line can name them:

    R:r=4,M=8,K=2     PERFT-R, M PEFT experts of bottleneck r, top-K of its own router
    E:r=8             PERFT-E, one PEFT expert per model expert, the model's routing
    D:r=4,M=2         PERFT-D, M always-on shared experts
    S:r=16            PERFT-S, one shared expert
    lora_attn:r=8     peft LoRA on W_q, W_v     (also lora_router, lora_experts: see perft_peft.baselines)
    loracoe:r=8,E=2   LoRACoE on W_q, W_v, E composite experts (joint phase: router on)
    loramoe:r=8,E=4   the partition-based LoRAMoE baseline on W_q, W_v

Any other ``key=value`` goes to the method's peft config as that field (``init`` is short for ``init_weights``):
``R:r=4,M=8,K=2,init=perft``, ``loracoe:r=8,E=2,composition_scale=none``. Values read as integers, numbers,
``true``/``false`` or else strings; the config's own checks judge them. One option is not a config field:
``router=off`` (LoRACoE, LoRAMoE) names the same trained adapter scored without its router at inference (the
LoRACoE paper's Table 2); the sweep scores it from the router-on run, so it costs no training.

``lora_alpha`` is 2r everywhere (the papers' setting), so every method starts with the same update scale, and PERFT
uses peft LoRA's initialisation (B = 0) like the baselines unless ``init=perft`` is given
(``benchmarks/perft_init.py`` compares the two).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from perft_peft.baselines import TARGETS, lora_config

ATTENTION = ["q_proj", "v_proj"]
GROUPS = {
    "R": "PERFT-R",
    "E": "PERFT-E",
    "D": "PERFT-D",
    "S": "PERFT-S",
    "lora_attn": "LoRA (q,v)",
    "lora_router": "LoRA (router)",
    "lora_experts": "LoRA (experts)",
    "loracoe": "LoRACoE (q,v)",
    "loramoe": "LoRAMoE (q,v)",
}
_KEYS = {
    "R": {"r", "M", "K"},
    "E": {"r"},
    "D": {"r", "M"},
    "S": {"r"},
    "loracoe": {"r", "E"},
    "loramoe": {"r", "E"},
    **{name: {"r"} for name in TARGETS},
}
STRUCTURE = set().union(*_KEYS.values())
ALIASES = {"init": "init_weights"}
ROUTER_OFF = "router=off"


@dataclass(frozen=True)
class Method:
    spec: str
    kind: str  # a key of GROUPS
    r: int
    M: int | None = None
    K: int | None = None
    E: int | None = None
    options: tuple[tuple[str, object], ...] = ()  # further config fields, as given
    router_off: bool = False  # LoRACoE / LoRAMoE scored without the router (warmup phase) at inference

    @property
    def group(self) -> str:
        """The method family: one colour in the sweep's plot."""
        return GROUPS[self.kind]

    @property
    def label(self) -> str:
        """As in the papers' tables: PERFT-R (Top2/8), PERFT-D (2), LoRACoE (E=2), ..."""
        detail = {
            "R": f" (Top{self.K}/{self.M})",
            "D": f" ({self.M})",
            "loracoe": f" E={self.E}",
            "loramoe": f" E={self.E}",
        }.get(self.kind, "")
        extra = "".join(f" {key}={value}" for key, value in self.options)
        return f"{self.group}{detail}{extra}{' no router at inference' if self.router_off else ''} r={self.r}"

    @property
    def trained(self) -> "Method":
        """The method whose training run this one is scored from (itself unless ``router_off``)."""
        if not self.router_off:
            return self
        kind, _, rest = self.spec.partition(":")
        return parse_method(f"{kind}:{','.join(item for item in rest.split(',') if item != ROUTER_OFF)}")

    @property
    def routed(self) -> bool:
        """Has a router of its own whose load-balancing loss the trainer adds."""
        return self.kind == "R"

    def config(self):
        """A fresh peft config for this method, with ``options`` set on it (the config's checks run again)."""
        config = self._base_config()
        if not self.options:
            return config
        fields = {f.name for f in dataclasses.fields(config)}
        unknown = [key for key, _ in self.options if key not in fields]
        if unknown:
            raise ValueError(f"{self.spec!r}: {', '.join(unknown)} is not a field of {type(config).__name__}.")
        return dataclasses.replace(config, **dict(self.options))

    def _base_config(self):
        from perft_peft import LoraCoeConfig, PerftConfig

        alpha = 2 * self.r
        # PERFT with peft LoRA's initialisation (B = 0), like every baseline here, so all methods start alike.
        if self.kind in ("R", "D"):
            return PerftConfig(
                variant=self.kind, r=self.r, lora_alpha=alpha, num_experts=self.M, top_k=self.K, init_weights=True
            )
        if self.kind in ("E", "S"):
            return PerftConfig(variant=self.kind, r=self.r, lora_alpha=alpha, init_weights=True)
        if self.kind in ("loracoe", "loramoe"):
            return LoraCoeConfig(
                r=self.r,
                lora_alpha=alpha,
                num_experts=self.E,
                target_modules=ATTENTION,
                construction="composition" if self.kind == "loracoe" else "partition",
            )
        return lora_config(self.kind, self.r)


def _value(text: str):
    """An option's value: int, float, bool (true/false) or the string itself."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_method(spec: str, r: int | None = None) -> Method:
    """A Method from ``kind:key=value,...`` (see the module docstring); errors say what is wrong. ``r`` is the
    rank for a spec that names none (the benchmarks choose it); the returned spec then names it."""
    spec = spec.strip().rstrip(":")
    if r is not None and "r" not in (item.partition("=")[0] for item in spec.partition(":")[2].split(",")):
        spec = f"{spec}{',' if ':' in spec else ':'}r={r}"
    kind, _, rest = spec.partition(":")
    if kind not in _KEYS:
        raise ValueError(f"Unknown method {kind!r} in {spec!r}; choose one of {', '.join(_KEYS)}.")
    values, options, router_off = {}, [], False
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if not key or not value:
            raise ValueError(f"{spec!r}: {item!r} is not key=value.")
        if key in STRUCTURE and key not in _KEYS[kind]:
            raise ValueError(f"{spec!r}: {key!r} is not one of {sorted(_KEYS[kind])}, the keys {kind} takes.")
        if key in _KEYS[kind]:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{spec!r}: {key} must be a positive integer, got {value!r}.")
            values[key] = int(value)
        elif item == ROUTER_OFF:
            if kind not in ("loracoe", "loramoe"):
                raise ValueError(f"{spec!r}: {ROUTER_OFF} applies to loracoe and loramoe only.")
            router_off = True
        else:
            options.append((ALIASES.get(key, key), _value(value)))
    missing = _KEYS[kind] - set(values)
    if missing:
        raise ValueError(f"{spec!r} needs {', '.join(sorted(missing))}.")
    method = Method(spec=spec, kind=kind, **values, options=tuple(options), router_off=router_off)
    method.config()  # the configs' own checks (top_k <= num_experts, r divisible by E, ...), now
    return method
