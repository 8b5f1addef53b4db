"""Inner Thinking Transformer (ITT): the hardest tokens take extra "thinking steps" of a layer.

An :class:`ITT` lives in a :class:`~mmgen.nn.layers.Block` (``Block(..., itt={...})``).  Step 0
is the plain block.  For each thinking step t = 1 .. steps-1:

* adaptive token routing: a linear scorer on the current hidden state picks the top ``frac``
  of the tokens of every routing group (ceil(frac * group size), at least one per group);
* the routed tokens, plus a learned thinking-step encoding, run through the SAME block as a
  sub-sequence: they attend to the routed tokens the original mask lets them see, at their
  original rotary positions;
* residual thinking connection: h += alpha_t * sigmoid(score) * (step output - step input) on the
  routed tokens, so the final state is the plain output plus a learned weighted sum of the
  steps' updates (the sigmoid lets the scorer learn).

Routing groups (``groups``, one id per token) make routing causal for VideoAR: a group (one
scale of one frame, or one prefix token) is predicted at once and decoded at once, so routing
within a group uses no future tokens and a KV-cached decoder makes the same choice group by
group.  Each thinking step keeps its own cache of the routed tokens' keys/values (and their
positions, for masks): cached sampling equals the full forward.  Without groups (e.g. the
MLLM) the whole sequence is one routing group (MoD-style; not causal, so not for KV decoding).

``steps`` can be lowered after training (:func:`set_thinking_steps`): elastic compute.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import GroupMask
from .layers import KVCache


class RoutedKVCache(KVCache):
    """KV cache of one thinking step: the routed tokens only, with their sequence positions."""

    def __init__(self, parent: KVCache):
        B, H, L, D = parent.k.shape
        super().__init__(B, H, L, D, parent.k.dtype, parent.k.device)
        self.pos = torch.zeros(B, L, dtype=torch.long, device=parent.k.device)

    def drop(self, start: int, n: int) -> None:
        """Remove the routed entries at sequence positions start .. start+n-1 (every row routed
        the same number of them: routing quotas are per group) and shift the later ones down."""
        pos = self.pos[:, :self.length]
        gone = (pos >= start) & (pos < start + n)
        kept = (~gone).sum(1)
        if not bool((kept == kept[0]).all()):
            raise RuntimeError("RoutedKVCache.drop: rows dropped different numbers of entries")
        order = (gone.long() * self.length + torch.arange(self.length, device=pos.device)).argsort(1)[:, :int(kept[0])]
        new_pos = pos.gather(1, order)
        idx = order[:, None, :, None].expand(-1, self.k.shape[1], -1, self.k.shape[3])
        m = int(kept[0])
        self.k[:, :, :m], self.v[:, :, :m] = self.k.gather(2, idx), self.v.gather(2, idx)
        self.pos[:, :m] = torch.where(new_pos >= start + n, new_pos - n, new_pos)
        self.length = m

    def add_positions(self, pos: torch.Tensor) -> torch.Tensor:
        """Record the positions [B, n] of the entries about to be appended; returns all so far."""
        n = pos.shape[1]
        self.pos[:, self.length:self.length + n] = pos
        return self.pos[:, :self.length + n]


def route(scores: torch.Tensor, frac: float, groups: torch.Tensor | None) -> torch.Tensor:
    """Indices [B, K] (ascending) of the top ``frac`` tokens of every group by ``scores`` [B, L].

    Every group routes ceil(frac * its size) tokens, so K is the same for every row."""
    B, L = scores.shape
    if groups is None:
        groups = torch.zeros(L, dtype=torch.long, device=scores.device)
    _, inverse = torch.unique(groups.to(scores.device), return_inverse=True)
    sizes = torch.bincount(inverse)
    quota = torch.ceil(sizes.double() * frac).long().clamp(min=1)
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    # stable sort by group keeps the score order inside each group
    by_group = by_score.gather(1, inverse[by_score].argsort(dim=1, stable=True))
    g = inverse[by_group]                                   # group of each sorted slot
    start = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(L, device=scores.device) - start[g]
    keep = rank < quota[g]
    return by_group[keep].view(B, -1).sort(dim=1).values


def _gather_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t [L, C] (shared by the batch) or [B, L, C] -> [B, K, C] at per-row indices idx [B, K]."""
    if t.ndim == 2:
        return t[idx]
    return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))


def _sub_mask(mask, rows: torch.Tensor, cols: torch.Tensor):
    """Restrict a mask to query rows [B, Kq] and key columns [B, Kk] -> bool [B, 1, Kq, Kk]."""
    if mask is None:
        return None
    dense = mask.dense(rows.device) if isinstance(mask, GroupMask) else mask
    B = rows.shape[0]
    if dense.ndim == 2:
        dense = dense[None, None]
    dense = dense.expand(B, 1, *dense.shape[-2:])
    picked = dense.gather(2, rows[:, None, :, None].expand(-1, 1, -1, dense.shape[-1]))
    return picked.gather(3, cols[:, None, None, :].expand(-1, 1, rows.shape[1], -1))


class ITT(nn.Module):
    """Thinking steps of one block.  ``forward(run, x, rope, mask, kv_cache, groups)`` where
    ``run(x, rope, mask, kv_cache)`` is the plain block."""

    def __init__(self, dim: int, steps: int = 2, frac: float = 0.5):
        super().__init__()
        if steps < 1 or not 0 < frac <= 1:
            raise ValueError(f"ITT: steps={steps} must be >= 1 and frac={frac} in (0, 1]")
        self.frac = frac
        self.active_steps = steps  # may be lowered at inference (set_thinking_steps)
        self.scorer = nn.Linear(dim, 1, bias=False)
        self.step_embed = nn.Parameter(torch.zeros(steps - 1, dim))  # thinking-step encodings
        self.alpha = nn.Parameter(torch.ones(steps - 1))               # residual thinking weights

    @property
    def steps(self) -> int:
        return self.alpha.numel() + 1

    def forward(self, run, x, rope=None, mask=None, kv_cache: KVCache | None = None, groups=None):
        h = run(x, rope, mask, kv_cache)
        start = None if kv_cache is None else kv_cache.length - x.shape[1]
        for t in range(1, min(self.active_steps, self.steps)):
            score = self.scorer(h).squeeze(-1)
            idx = route(score.detach().float(), self.frac, groups)
            inp = _gather_rows(h, idx) + self.step_embed[t - 1].to(h.dtype)
            sub_rope = None if rope is None else tuple(_gather_rows(r, idx) for r in rope)
            if kv_cache is None:
                cache, cols = None, idx
            else:
                cache = kv_cache.children.setdefault(f"think{t}", RoutedKVCache(kv_cache))
                cols = cache.add_positions(start + idx)  # mask: the chunk's rows over the whole cache
            step_mask = _sub_mask(mask, idx, cols)
            delta = run(inp, sub_rope, step_mask, cache) - inp
            gate = torch.sigmoid(score.gather(1, idx)).unsqueeze(-1)
            update = (self.alpha[t - 1] * gate * delta).to(h.dtype)
            h = h.scatter_add(1, idx[..., None].expand(-1, -1, h.shape[-1]), update)
        return h

    def extra_repr(self) -> str:
        return f"steps={self.steps}, frac={self.frac}, active_steps={self.active_steps}"


def set_thinking_steps(model: nn.Module, steps: int | None) -> None:
    """Run every ITT block of ``model`` with at most ``steps`` steps (None = all it was built with)."""
    for m in model.modules():
        if isinstance(m, ITT):
            m.active_steps = m.steps if steps is None else max(1, int(steps))
