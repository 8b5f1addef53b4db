"""3-D rotary position embedding (t, h, w), M-RoPE / uni-RoPE style.

The head dimension is split into three even parts, one per axis; each part rotates its
channel pairs by ``pos[axis] * base ** (-2j / d_axis)``.  A 1-D sequence (text) uses the
same index on all three axes, ``pos = (i, i, i)``, so for pure text the embedding behaves
like an ordinary rotary embedding with a mixed frequency set.

Pairing convention: channel ``j`` is paired with ``j + D/2`` ("rotate half").
"""
from __future__ import annotations

import torch
from torch import nn


def default_axes_dims(head_dim: int) -> tuple[int, int, int]:
    """Split of ``head_dim`` over (t, h, w): a quarter to time, the rest shared by h and w.

    The VideoAR paper does not state the split; Qwen2-VL's M-RoPE gives time 1/4 of the
    rotary pairs and height/width 3/8 each, which we follow (128 -> (32, 48, 48)).
    """
    if head_dim % 2:
        raise ValueError(f"Rope3D: head_dim must be even, got {head_dim}")
    dt = 2 * max(1, round(head_dim / 8))
    rest = head_dim - dt
    dh = 2 * (rest // 4)
    return dt, dh, rest - dh


class Rope3D(nn.Module):
    """Rotary embedding over (t, h, w).

    head_dim: per-head channels; axes_dims: channels per axis (each even, summing to
    head_dim), default :func:`default_axes_dims`; base: frequency base (default 10000).
    forward(pos: [L, 3] or [B, L, 3], integer or float) -> (cos, sin), each [L, D/2] or [B, L, D/2]
    in float32.  Use with :func:`apply_rope`.
    """

    def __init__(self, head_dim: int, axes_dims: tuple[int, int, int] | None = None,
                 base: float = 10000.0):
        super().__init__()
        axes_dims = tuple(axes_dims) if axes_dims is not None else default_axes_dims(head_dim)
        if len(axes_dims) != 3 or sum(axes_dims) != head_dim or any(d % 2 for d in axes_dims):
            raise ValueError(f"Rope3D: axes_dims {axes_dims} must be 3 even numbers summing to "
                             f"head_dim={head_dim}")
        self.head_dim, self.axes_dims, self.base = head_dim, axes_dims, float(base)
        inv = [base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d) for d in axes_dims]
        # axis_of[j] says which of (t, h, w) rotary pair j reads its position from.
        axis_of = torch.cat([torch.full((d // 2,), a) for a, d in enumerate(axes_dims)])
        self.register_buffer("inv_freq", torch.cat(inv).float(), persistent=False)
        self.register_buffer("axis_of", axis_of, persistent=False)

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if pos.shape[-1] != 3:
            raise ValueError(f"Rope3D: positions must have a last dim of 3 (t, h, w), got {tuple(pos.shape)}")
        angles = pos.float()[..., self.axis_of] * self.inv_freq
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, L, D] by (cos, sin) [L, D/2] or [B, L, D/2]; returns x's dtype."""
    if cos.ndim == 3:  # per-sample positions: broadcast over heads
        cos, sin = cos[:, None], sin[:, None]
    # dtype checks in Python: a no-op cast still costs a dispatched op per call while decoding
    xf = x if x.dtype == torch.float32 else x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out if out.dtype == x.dtype else out.to(x.dtype)
