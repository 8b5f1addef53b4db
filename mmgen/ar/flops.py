"""Model FLOPs of VideoAR, counting attention only over the (query, key) pairs the mask allows.

Matmuls count 2 FLOPs per multiply-add.  Per layer and token: q/k/v/o projections 4*C^2 and the
SwiGLU 3*C*hidden multiply-adds (an MoE FFN: its ACTIVE experts, top_k + shared, plus the
router's C*experts); attention costs 2*C multiply-adds per allowed (query, key) pair
(Q.K^T and P.V over all heads).  The input projection and the output head run on visual tokens
only.  Norms, rotary, softmax and embeddings are ignored (< 1% at these sizes).  Training =
3x forward (backward = 2x forward); recomputation by gradient checkpointing is not counted (MFU
counts model FLOPs, not hardware FLOPs).

Depth options (VideoAR config / model state) add ``extra`` FLOPs:
* static block looping (``loop_layers``): one more full layer each;
* ITT (``itt_layers``, ``itt_steps``, ``itt_frac``): per extra step, the scorer on every token
  plus a full layer over the routed tokens (ceil(frac * size) of every group) with attention
  over the routed pairs the mask allows;
* SGT: per looping layer, projections and attention of the heads the loop computes
  (``loop_heads``: all heads while the others decay, then only the kept ones), plus the
  no-grad entropy probe of the last query in ``probing_layers`` layers (forward only).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from mmgen.nn import ffn_hidden
from mmgen.nn.moe import active_ffn_macs, sparse_ffn_kwargs

from .layout import GroupLayout


def forward_flops(config: dict, num_frames: int | None = None, loop_heads: Sequence[int] = (),
                  probing_layers: int = 0) -> dict:
    """FLOPs of one forward pass over one sample.  ``config`` is a VideoAR config (dict or
    ``model.config``); ``loop_heads``/``probing_layers`` describe SGT's state (:func:`sgt_state`).
    Returns {"tokens", "visual_tokens", "allowed_pairs", "dense", "attention", "extra", "probe",
    "total", "per_token", "train_per_token"}; ``total`` includes ``extra`` (the depth options'
    forward FLOPs); ``train_per_token`` = (3 * total + probe) / tokens."""
    c = dict(config)
    prefix = 1 if c["cond"] == "class" else c["max_text_len"]
    layout = GroupLayout(prefix, num_frames or c["num_frames"], c["scales"], c.get("pos_mode", "own_grid"),
                         c.get("frame_window"))
    C, depth, H = c["width"], c["depth"], c["heads"]
    out_dim = c["bits"] if c.get("head", "bits") == "bits" else c["codebook_size"]
    hidden = ffn_hidden(C, c.get("mlp_ratio", 4.0))
    ffn = [3 * C * hidden] * depth
    sparse = sparse_ffn_kwargs(c, hidden)
    if sparse is not None:  # active experts only, plus the router
        first = c.get("moe_dense_layers", 0)
        ffn[first:] = [active_ffn_macs(C, dense_hidden=hidden, **sparse)] * (depth - first)
    layers = 4 * C * C * depth + sum(ffn)
    per_layer = 4 * C * C + ffn[-1]  # one (the last, possibly sparse) layer: what a loop or thinking step re-runs
    dense = 2 * (layout.length * layers + layout.num_visual * (c["bits"] * C + C * out_dim))
    pairs = layout.allowed_pairs()
    attention = 2 * depth * 2 * C * pairs
    layer_total = 2 * (layout.length * per_layer + 2 * C * pairs)
    extra = len(c.get("loop_layers") or ()) * layer_total
    itt_layers, steps = len(c.get("itt_layers") or ()), c.get("itt_steps", 2)
    if itt_layers and steps > 1:
        sizes = torch.bincount(layout.group_id, minlength=layout.num_groups)
        routed = torch.ceil(sizes.double() * c.get("itt_frac", 0.5)).long().clamp(min=1)
        routed_pairs = int(routed @ layout.group_visibility().long() @ routed)
        step = 2 * (layout.length * C + int(routed.sum()) * per_layer + 2 * C * routed_pairs)
        extra += itt_layers * (steps - 1) * step
    for h in loop_heads:
        extra += 2 * (layout.length * 4 * C * (h * C // H) + 2 * (h * C // H) * pairs)
    probe = 2 * probing_layers * C * layout.length  # one query against every key
    total = dense + attention + extra
    return {"tokens": layout.length, "visual_tokens": layout.num_visual, "allowed_pairs": pairs,
            "dense": dense, "attention": attention, "extra": extra, "probe": probe, "total": total,
            "per_token": total / layout.length, "train_per_token": (3 * total + probe) / layout.length}


def sgt_state(model) -> dict:
    """``forward_flops`` arguments for a VideoAR's current SGT state: the heads each looping
    layer computes and the number of layers measuring entropy."""
    loops = model.sgt_loops()
    heads = [len(lp.kept) if bool(lp.subset) else len(lp.scale) for lp in loops.values() if bool(lp.looping)]
    return {"loop_heads": heads, "probing_layers": sum(bool(lp.probing) for lp in loops.values())}
