"""APEX: grow what the model already does well into what it barely uses, then fold it back.

One stage:

1. **Vote** (:meth:`APEX.record`): forward hooks on the inputs of every block's output
   projections (``attn.o_proj``: per head, ``mlp.down_proj``: per hidden channel) take each
   unit's L2 norm over batch x sequence per forward; the top ``vote_ratio`` units get +1, the
   bottom ones -1; votes add up over the recorded batches.
2. **Permute** (:meth:`APEX.attach`): heads (q/k/v rows, o columns) and FFN channels
   (gate/up rows, down columns) are reordered by votes, best first. The model computes the same
   function; the advantageous ("high") units are now the first ``m`` input channels of the
   output projection, the disadvantageous ("low") ones the last ``m``.
3. **Expand**: the output projection W sees ``T x`` instead of ``x``:
   ``low <- low * mix_vec + Monarch(high)``, ``high <- high * mix_scale`` (the rest unchanged),
   plus a zero-initialised ``delta`` on the low input columns: ``y = W T x + delta x_low``.
   ``Monarch`` is a block-diagonal butterfly ``L P R`` with R = identity blocks and L = 0, and the
   vectors start at 1, so the stage starts exactly at the original model. Only these operator
   parameters train (the model's own weights stay frozen).
4. **Fuse** (:meth:`APEX.fuse`): ``W <- W T`` and ``W[:, low] += delta``; the plain
   ``nn.Linear`` is put back, so the architecture never changes between stages.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class APEXConfig:
    attn_ratio: float = 0.25  # share of heads in each of the high and low sets
    ffn_ratio: float = 0.25  # share of FFN hidden channels in each set
    vote_ratio: float = 0.1875  # top/bottom share of units that vote +1 / -1 per forward (code: ~18.75%)
    monarch_blocks: int = 0  # blocks of the Monarch factors; 0 = about sqrt(m)

    def __post_init__(self):
        for name in ("attn_ratio", "ffn_ratio"):
            if not 0 < getattr(self, name) <= 0.5:
                raise ValueError(f"APEX {name} must be in (0, 0.5] (high and low sets must not overlap)")
        if not 0 < self.vote_ratio <= 0.5:
            raise ValueError("APEX vote_ratio must be in (0, 0.5]")


class Monarch(nn.Module):
    """m -> m map ``L P R``: R block-diagonal (b blocks of s x s), P the (b, s) -> (s, b) transpose,
    L block-diagonal (s blocks of b x b). R starts as the identity, L at zero (output 0)."""

    def __init__(self, m: int, blocks: int = 0):
        super().__init__()
        b = blocks or max(d for d in range(1, int(math.isqrt(m)) + 1) if m % d == 0)
        if m % b:
            raise ValueError(f"Monarch: {m} channels do not split into {b} blocks")
        self.b, self.s = b, m // b
        self.R = nn.Parameter(torch.eye(self.s).repeat(b, 1, 1))
        self.L = nn.Parameter(torch.zeros(self.s, b, b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h = torch.einsum("nbs,bts->nbt", x.reshape(-1, self.b, self.s), self.R)
        h = torch.einsum("nsb,scb->nsc", h.transpose(1, 2), self.L)
        return h.reshape(*lead, -1)


class ExpandedLinear(nn.Module):
    """A frozen output projection fed by the APEX operator on its input channels."""

    def __init__(self, base: nn.Linear, m: int, monarch_blocks: int = 0):
        super().__init__()
        self.base, self.m = base.requires_grad_(False), int(m)
        dev, dtype = base.weight.device, base.weight.dtype
        self.mix_vec = nn.Parameter(torch.ones(m, device=dev, dtype=dtype))
        self.mix_scale = nn.Parameter(torch.ones(m, device=dev, dtype=dtype))
        self.monarch = Monarch(m, monarch_blocks).to(dev, dtype)
        self.delta = nn.Parameter(torch.zeros(base.out_features, m, device=dev, dtype=dtype))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        high, mid, low = x[..., :m], x[..., m:-m], x[..., -m:]
        return torch.cat([high * self.mix_scale, mid, low * self.mix_vec + self.monarch(high)], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.transform(x)) + F.linear(x[..., -self.m:], self.delta)

    @torch.no_grad()
    def fused_weight(self) -> torch.Tensor:
        n = self.base.in_features
        eye = torch.eye(n, device=self.delta.device, dtype=self.delta.dtype)
        T = self.transform(eye).T  # column j = T e_j
        w = self.base.weight @ T
        w[:, -self.m:] += self.delta
        return w


def _permute_rows(linear: nn.Linear, order: torch.Tensor) -> None:
    linear.weight.data = linear.weight.data[order].contiguous()


def _permute_cols(linear: nn.Linear, order: torch.Tensor) -> None:
    linear.weight.data = linear.weight.data[:, order].contiguous()


class APEX:
    """Voting, permutation, expansion and fusion over every block of a VideoAR model."""

    def __init__(self, model: nn.Module, config: APEXConfig | None = None):
        self.model, self.cfg = model, config or APEXConfig()
        self.blocks = list(model.blocks)
        self.votes: list[dict[str, torch.Tensor]] = []
        self.stages_done = 0

    def _units(self, block) -> dict[str, int]:
        return {"attn": block.attn.n_heads, "ffn": getattr(block.mlp.down_proj, "base", block.mlp.down_proj).in_features}

    def _sets(self, block) -> dict[str, int]:
        units = self._units(block)
        return {"attn": max(1, int(units["attn"] * self.cfg.attn_ratio)),
                "ffn": max(1, int(units["ffn"] * self.cfg.ffn_ratio))}

    @contextlib.contextmanager
    def record(self):
        """Inside this context every forward adds its votes (run a few training batches)."""
        self.votes = [{k: torch.zeros(n) for k, n in self._units(b).items()} for b in self.blocks]
        handles = []
        for i, block in enumerate(self.blocks):
            heads = block.attn.n_heads

            def attn_hook(mod, args, i=i, heads=heads):
                x = args[0].detach().float()
                self._vote(i, "attn", x.reshape(-1, heads, x.shape[-1] // heads).pow(2).sum((0, 2)).sqrt())

            def ffn_hook(mod, args, i=i):
                self._vote(i, "ffn", args[0].detach().float().reshape(-1, args[0].shape[-1]).norm(dim=0))

            handles.append(block.attn.o_proj.register_forward_pre_hook(attn_hook))
            handles.append(block.mlp.down_proj.register_forward_pre_hook(ffn_hook))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _vote(self, i: int, kind: str, norms: torch.Tensor) -> None:
        k = max(1, int(len(norms) * self.cfg.vote_ratio))
        order = torch.argsort(norms.cpu(), descending=True, stable=True)
        self.votes[i][kind][order[:k]] += 1
        self.votes[i][kind][order[-k:]] -= 1

    @torch.no_grad()
    def permute(self) -> None:
        """Reorder heads and FFN channels by votes, best first (the function is unchanged)."""
        if not self.votes:
            raise RuntimeError("APEX: record votes (with apex.record(): run batches) before attach()")
        for block, votes in zip(self.blocks, self.votes):
            attn, mlp = block.attn, block.mlp
            head_order = torch.argsort(votes["attn"], descending=True, stable=True)
            d = attn.head_dim
            rows = (head_order[:, None] * d + torch.arange(d)).reshape(-1).to(attn.q_proj.weight.device)
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
                _permute_rows(lin, rows)
            _permute_cols(attn.o_proj, rows)
            ch = torch.argsort(votes["ffn"], descending=True, stable=True).to(mlp.down_proj.weight.device)
            _permute_rows(mlp.gate_up_proj, torch.cat([ch, ch + len(ch)]))  # gate rows, then up rows
            _permute_cols(mlp.down_proj, ch)

    def attach(self) -> list[nn.Parameter]:
        """Permute, freeze the model, wrap each block's o_proj/down_proj; returns the trainable parameters."""
        self.permute()
        self.model.requires_grad_(False)
        for block in self.blocks:
            sets = self._sets(block)
            block.attn.o_proj = ExpandedLinear(block.attn.o_proj, sets["attn"] * block.attn.head_dim,
                                               self.cfg.monarch_blocks)
            block.mlp.down_proj = ExpandedLinear(block.mlp.down_proj, sets["ffn"], self.cfg.monarch_blocks)
        return [p for p in self.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold every operator into its projection and put the plain ``nn.Linear`` back."""
        for block in self.blocks:
            for owner, name in ((block.attn, "o_proj"), (block.mlp, "down_proj")):
                op = getattr(owner, name)
                if isinstance(op, ExpandedLinear):
                    op.base.weight.data = op.fused_weight()
                    setattr(owner, name, op.base)
        self.stages_done += 1

    def trainable_count(self) -> int:
        """Operator parameters one stage trains (for matching other methods' budgets)."""
        total = 0
        for block in self.blocks:
            sets = self._sets(block)
            o_proj, down = (getattr(x, "base", x) for x in (block.attn.o_proj, block.mlp.down_proj))
            for m, out in ((sets["attn"] * block.attn.head_dim, o_proj.out_features), (sets["ffn"], down.out_features)):
                mon = Monarch(m, self.cfg.monarch_blocks)
                total += 2 * m + mon.R.numel() + mon.L.numel() + out * m
        return total
