"""Sparse Growing Transformer (SGT): attention loops that grow from deep to shallow layers.

A :class:`SGTLoop` lives in a :class:`~mmgen.nn.layers.Block` (``Block(..., sgt={...})``).  It

* measures, in a no-grad side computation on the layer's own q/k, the entropy of each head's
  attention for the LAST query, divided by log(number of keys it may see), averaged over the
  batch (``commit`` after each forward, ``finalize`` once per optimiser step: all-reduced over
  ranks, EMA with ``ema``);
* once selected, loops the layer's attention once more: after the attention residual and
  before the FFN, ``x = x + attn(norm1(x))`` with the layer's own weights and no gate.  At
  selection every head loops; the ``keep_heads`` highest-entropy heads are kept and the others'
  loop output decays linearly 1 -> 0 over a window.  After the window the loop computes ONLY
  the kept heads (:meth:`SelfAttention.project` / ``attend`` with ``heads``), so the FLOPs
  saving is real.

The :class:`SGTScheduler` decides when and where (see :meth:`SGTScheduler.step`).  All state
that decides the model's function (loop on/off, kept heads, decay) and the scheduler's own state
are persistent buffers: they are saved in checkpoints and ``save_pretrained`` exports, so a
resumed run continues the schedule exactly and an exported model loops the same heads.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from .attention import GroupMask


def last_query_entropy(q: torch.Tensor, k: torch.Tensor, mask=None) -> torch.Tensor:
    """Per-head normalised attention entropy of the last query, averaged over the batch: [H].

    q, k [B, H, L, D] (projected, rotated); mask as in :func:`mmgen.nn.attention.attention`.
    The entropy is divided by log(number of keys the last query may attend to)."""
    ql, kf = q[:, :, -1:].float(), k.float()
    scores = ql @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, H, 1, L]
    if mask is not None:
        if isinstance(mask, GroupMask):
            m = mask.to(q.device)
            vis = m.visible[..., m.q_group[-1], :]  # [G] or [B, G]
            allowed = vis[..., m.k_group]
        else:
            allowed = mask[..., -1, :]
        allowed = allowed.reshape(-1, 1, 1, k.shape[2]) if allowed.ndim > 1 else allowed
        scores = scores.masked_fill(~allowed, float("-inf"))
        n = allowed.sum(-1).clamp(min=2).float()  # [B,1,1] or []
    else:
        n = torch.tensor(float(max(k.shape[2], 2)), device=q.device)
    p = scores.softmax(-1)
    ent = -(p * p.clamp_min(1e-12).log()).sum(-1)  # [B, H, 1]
    return (ent / n.log()).mean(0).squeeze(-1)


class SGTLoop(nn.Module):
    """SGT state and attention loop of one layer.  ``forward(block, x, rope, mask, kv_cache)``
    replaces the block's ``x + attn(norm1(x))``."""

    def __init__(self, n_heads: int, keep_heads: int = 2, ema: float = 0.5):
        super().__init__()
        if not 0 < keep_heads <= n_heads:
            raise ValueError(f"SGT: keep_heads={keep_heads} must be in 1..{n_heads}")
        self.ema_decay = ema
        self.register_buffer("entropy", torch.zeros(n_heads))     # EMA of the per-head entropy
        self.register_buffer("probing", torch.tensor(True))       # measure entropy this step?
        self.register_buffer("looping", torch.tensor(False))      # selected: loop the attention
        self.register_buffer("subset", torch.tensor(False))       # decay done: kept heads only
        self.register_buffer("kept", torch.zeros(keep_heads, dtype=torch.long))
        self.register_buffer("scale", torch.ones(n_heads))        # loop output weight per head
        self.register_buffer("window", torch.tensor([-1, -1]))    # decay window [start, end) in steps
        # Entropies of the current optimiser step (all micro-batches); folded into the EMA by
        # finalize() before the step ends, so never part of a checkpoint.
        self._sum = torch.zeros(n_heads)
        self._count = 0
        self._pending = None

    # ------------------------------------------------------------------ statistics
    def commit(self) -> None:
        """Count the entropy measured by the last forward.  Called by the block outside gradient
        checkpointing, so a recomputation in backward is not counted twice."""
        if self._pending is not None:
            self._sum = self._sum.to(self._pending.device) + self._pending
            self._count += 1
            self._pending = None

    @torch.no_grad()
    def finalize(self) -> None:
        """Average this step's entropies (over micro-batches and ranks) into the EMA."""
        stats = torch.cat([self._sum.to(self.entropy.device), self.entropy.new_tensor([self._count])])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        if stats[-1] > 0:
            self.entropy.mul_(self.ema_decay).add_(stats[:-1] / stats[-1], alpha=1 - self.ema_decay)
        self._sum, self._count = torch.zeros_like(self._sum), 0

    # ------------------------------------------------------------------ schedule actions
    @torch.no_grad()
    def select(self, step: int, window: int) -> None:
        """Start looping at ``step``: keep the highest-entropy heads, decay the rest over ``window``."""
        self.kept.copy_(self.entropy.topk(len(self.kept)).indices.sort().values)
        self.looping.fill_(True)
        self.window.copy_(torch.tensor([step, step + window]))
        self.update(step)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Set the loop's per-head weights for the forwards after ``step``."""
        if not bool(self.looping):
            return
        start, end = (int(v) for v in self.window)
        decay = max(0.0, 1.0 - (step - start) / max(1, end - start))
        self.scale.fill_(decay)
        self.scale[self.kept] = 1.0
        self.subset.fill_(step >= end)

    # ------------------------------------------------------------------ forward
    def forward(self, block, x, rope=None, mask=None, kv_cache=None):
        attn = block.attn
        q, k, v = attn.project(block.norm1(x), rope)
        if self.training and kv_cache is None and bool(self.probing):
            with torch.no_grad():
                self._pending = last_query_entropy(q, k, mask)
        x = x + attn.attend(q, k, v, mask, kv_cache)
        if not bool(self.looping):
            return x
        if bool(self.subset):
            heads, scale = self.kept, None
        else:
            heads, scale = None, self.scale
        cache = None if kv_cache is None else kv_cache.child("sgt", None if heads is None else len(heads))
        return x + attn(block.norm1(x), rope, mask, cache, heads=heads, head_scale=scale)

    def extra_repr(self) -> str:
        return f"heads={len(self.entropy)}, keep_heads={len(self.kept)}, ema={self.ema_decay}"


def steps_of(value: float, total_steps: int) -> int:
    """A schedule length: ``value`` >= 1 is a number of steps, < 1 a fraction of ``total_steps``."""
    return int(value) if value >= 1 else max(1, round(value * total_steps))


class SGTScheduler(nn.Module):
    """Chooses which layers' attention loops, deep -> shallow (the SGT authors' rules).

    ``step(loops, step, total_steps)`` once per optimiser step (before the optimiser updates):

    1. every loop folds this step's entropies into its EMA and updates its head decay;
    2. at the first step >= warm-up: rank the candidate layers (all with a loop; layer 0 has
       none) by mean head entropy, take the ``top_k`` and select the deepest;
    3. whenever a window (of ``window`` steps) after a selection ends: if ``max_layers`` are
       selected the structure is fixed; else select the deepest top-``top_k`` layer that is
       shallower than every selected one; if there is none the structure is fixed.
    A fixed structure stops the entropy measurement.  Loop depth is 1 (the authors' setting:
    a still-top-k layer would get a deeper loop only below the maximum depth).
    ``warmup``/``window`` >= 1 are steps, < 1 fractions of the run's optimiser steps.
    """

    def __init__(self, warmup: float = 250, window: float = 250, top_k: int = 3, max_layers: int = 3):
        super().__init__()
        self.warmup, self.window_len, self.top_k = warmup, window, top_k
        self.register_buffer("selected", torch.full((max_layers,), -1, dtype=torch.long))
        self.register_buffer("selected_at", torch.full((max_layers,), -1, dtype=torch.long))
        self.register_buffer("window_end", torch.tensor(-1))
        self.register_buffer("fixed", torch.tensor(False))

    @property
    def layers(self) -> list[int]:
        return [int(i) for i in self.selected if i >= 0]

    def step(self, loops: dict[int, SGTLoop], step: int, total_steps: int) -> int | None:
        """Advance the schedule; returns the layer selected at this step (or None)."""
        for loop in loops.values():
            if bool(loop.probing):
                loop.finalize()
            loop.update(step)
        if bool(self.fixed) or step < steps_of(self.warmup, total_steps):
            return None
        chosen = self.layers
        if chosen and step < int(self.window_end):
            return None
        if len(chosen) == len(self.selected):
            return self._fix(loops)
        ranked = sorted(loops, key=lambda i: float(loops[i].entropy.mean()), reverse=True)
        top = ranked[:self.top_k]
        shallowest = min(chosen, default=max(loops) + 1)
        candidates = [i for i in top if i < shallowest]
        if not candidates:
            return self._fix(loops)
        layer = max(candidates)
        window = steps_of(self.window_len, total_steps)
        n = len(chosen)
        self.selected[n], self.selected_at[n] = layer, step
        self.window_end.fill_(step + window)
        loops[layer].select(step, window)
        return layer

    def _fix(self, loops: dict[int, SGTLoop]) -> None:
        self.fixed.fill_(True)
        for loop in loops.values():
            loop.probing.fill_(False)
        return None

    def trace(self, loops: dict[int, SGTLoop]) -> list[dict]:
        """The selections so far: [{"layer", "heads" (kept), "step", "subset_from"}]."""
        return [{"layer": layer, "heads": loops[layer].kept.tolist(), "step": int(at),
                 "subset_from": int(loops[layer].window[1])}
                for layer, at in zip(self.layers, self.selected_at.tolist())]


def plot_trace(trace: list[dict], num_layers: int, last_step: int, path) -> None:
    """Draw a selection trace: one bar per looping layer, hatched while all heads loop (decay
    window), solid once only the kept heads loop; the kept heads are written on the bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmgen.io import save_figure

    fig, ax = plt.subplots(figsize=(6, 0.4 * num_layers + 1.5))
    for item in trace:
        start, cut = item["step"], min(item["subset_from"], last_step)
        ax.barh(item["layer"], cut - start, left=start, color="tab:orange", alpha=0.5, hatch="//")
        if last_step > cut:
            ax.barh(item["layer"], last_step - cut, left=cut, color="tab:blue")
        ax.text(start, item["layer"], f" heads {item['heads']} from step {start}", va="center", fontsize=8)
    ax.set_xlim(0, max(1, last_step))
    ax.set_ylim(-0.5, num_layers - 0.5)
    ax.set_yticks(range(num_layers))
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("layer")
    ax.set_title("SGT attention loops (hatched: all heads, decaying; solid: kept heads only)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
