"""Model FLOPs of VideoAR, counting attention only over the (query, key) pairs the mask allows.

Matmuls count 2 FLOPs per multiply-add.  Per layer and token: q/k/v/o projections 4*C^2 and the
SwiGLU 3*C*hidden multiply-adds (an MoE FFN: its ACTIVE experts, top_k + shared, plus the
router's C*experts); attention costs 2*C multiply-adds per allowed (query, key) pair
(Q.K^T and P.V over all heads).  The input projection and the output head run on visual tokens
only.  Norms, rotary, softmax and embeddings are ignored (< 1% at these sizes).  Training =
3x forward (backward = 2x forward); recomputation by gradient checkpointing is not counted (MFU
counts model FLOPs, not hardware FLOPs).
"""
from __future__ import annotations

from mmgen.nn import ffn_hidden
from mmgen.nn.moe import active_ffn_macs

from .layout import GroupLayout
from .model import sparse_ffn_kwargs


def forward_flops(config: dict, num_frames: int | None = None) -> dict:
    """FLOPs of one forward pass over one sample.  ``config`` is a VideoAR config (dict or
    ``model.config``).  Returns {"tokens", "visual_tokens", "allowed_pairs", "dense", "attention",
    "total", "per_token", "train_per_token"}."""
    c = dict(config)
    prefix = 1 if c["cond"] == "class" else c["max_text_len"]
    layout = GroupLayout(prefix, num_frames or c["num_frames"], c["scales"], c.get("pos_mode", "own_grid"),
                         c.get("frame_window"))
    C, depth = c["width"], c["depth"]
    out_dim = c["bits"] if c.get("head", "bits") == "bits" else c["codebook_size"]
    hidden = ffn_hidden(C, c.get("mlp_ratio", 4.0))
    ffn = [3 * C * hidden] * depth
    sparse = sparse_ffn_kwargs(c)
    if sparse is not None:  # active experts only, plus the router
        first = c.get("moe_dense_layers", 0)
        ffn[first:] = [active_ffn_macs(C, dense_hidden=hidden, **sparse)] * (depth - first)
    layers = 4 * C * C * depth + sum(ffn)
    dense = 2 * (layout.length * layers + layout.num_visual * (c["bits"] * C + C * out_dim))
    pairs = layout.allowed_pairs()
    attention = 2 * depth * 2 * C * pairs
    total = dense + attention
    return {"tokens": layout.length, "visual_tokens": layout.num_visual, "allowed_pairs": pairs,
            "dense": dense, "attention": attention, "total": total,
            "per_token": total / layout.length, "train_per_token": 3 * total / layout.length}
