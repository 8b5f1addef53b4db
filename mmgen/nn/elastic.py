"""Elastic sub-models (ERNIE 5.0): per training micro-batch one sub-model — fewer layers, a random
subset of the experts, or a smaller top-k — is sampled and its loss added to the full model's in
the same backward; at sampling time a trained sub-model is picked by name (``depth=3,top_k=2``).

A depth sub-model runs the first ``depth`` blocks (then the model's final norm and head).  A width
sub-model keeps ``round(expert_fraction * experts)`` experts: a random subset in training, the
first ones at inference (any subset was trained, so a fixed one is as good as another).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

KEYS = ("depth", "top_k", "experts")


@dataclass
class ElasticConfig:
    """depths / top_ks: the reduced depths and top-k values that may be sampled (empty = that axis
    is not elastic).  p_*: probability of keeping the full setting on each axis.  weight: the
    sub-model loss weight."""

    depths: list[int] = field(default_factory=list)
    top_ks: list[int] = field(default_factory=list)
    expert_fraction: float | None = None  # None = width not elastic
    p_full_depth: float = 0.8
    p_all_experts: float = 0.8
    p_default_k: float = 0.8
    weight: float = 1.0

    def as_dict(self) -> dict:
        return asdict(self)

    def validate(self, depth: int, n_experts: int, top_k: int) -> None:
        for d in self.depths:
            if not 1 <= d < depth:
                raise ValueError(f"elastic.depths: {d} must be in 1..depth-1={depth - 1}")
        if (self.top_ks or self.expert_fraction) and not n_experts:
            raise ValueError("elastic.top_ks / elastic.expert_fraction need an MoE FFN (ffn='moe')")
        for k in self.top_ks:
            if not 1 <= k < top_k:
                raise ValueError(f"elastic.top_ks: {k} must be in 1..moe_top_k-1={top_k - 1}")
        if self.expert_fraction is not None:
            kept = self.kept_experts(n_experts)
            if not top_k <= kept < n_experts:
                raise ValueError(f"elastic.expert_fraction={self.expert_fraction} keeps {kept} of {n_experts} experts; "
                                 f"it must keep at least moe_top_k={top_k} and fewer than all")

    def kept_experts(self, n_experts: int) -> int:
        return round(self.expert_fraction * n_experts)

    def sample(self, rng: random.Random, n_experts: int) -> dict:
        """One sub-model setting {"depth", "top_k", "experts"} (a key absent = full on that axis)."""
        out = {}
        if self.depths and rng.random() >= self.p_full_depth:
            out["depth"] = rng.choice(self.depths)
        if self.expert_fraction is not None and rng.random() >= self.p_all_experts:
            out["experts"] = self.kept_experts(n_experts)
        if self.top_ks and rng.random() >= self.p_default_k:
            out["top_k"] = rng.choice(self.top_ks)
        return out


def parse_setting(text: str) -> dict:
    """'depth=3,top_k=2' -> {"depth": 3, "top_k": 2} (keys: depth, top_k, experts)."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in KEYS or not value.strip().isdigit():
            raise ValueError(f"elastic setting {item!r}: expected KEY=INT with KEY one of {KEYS} (e.g. depth=3,top_k=2)")
        out[key.strip()] = int(value)
    return out
