"""A small LLaVA-style multimodal LLM: ViT encoder -> MLP projector -> decoder-only LM.

Sequence layout (one forward pass, the answer is the next token after the question):

    [ visual tokens (gh x gw grid) | appended tokens (optional) | question tokens ]

*Appended tokens* are extra visual tokens that sit between the image and the text: the
zoom views used as a training augmentation, or Blink's super-resolved region tokens.
They are optional per sample (``extra_active``); an inactive slot is invisible to every
other token, so a sample without them computes what it would without the slots.

Positions (3-D rotary, :class:`mmgen.nn.Rope3D`, M-RoPE style):
  visual token at grid cell (r, c):   (0, s*r, s*c)       with s = ``pos_stride`` (default 2)
  appended token at sub-cell (y, x) of a region whose top-left cell is (r0, c0), upsampled by f:
                                      (0, s*r0 + y*s/f, s*c0 + x*s/f)
  question token i:                   (P+i, P+i, P+i)      with P = s * max(gh, gw)
So a region's sub-grid positions interleave with its original cells (the sub-cell (0, 0) shares
its cell's position) and the question's positions do not depend on whether anything was
appended — the documented position-id choice for Blink's tokens.

RoPE only rotates queries and keys: it shapes *where* a token attends, but the values it reads
carry no position, so with rotary positions alone an answer like "top-left" has to be inferred
from attention patterns, which a small model trained from scratch does not learn (the first
packaged model stayed at chance on position questions).  ``visual_pos_embed`` therefore adds
a learned absolute embedding (row table + column table over the ``pos_stride``-fine grid) to
the image-derived input tokens (visual tokens and zoom views given to ``prepare``, at their
sub-grid positions).  Blink's super-resolved tokens are made from hidden states, which
already hold their cells' embedding, so ``set_extra`` adds nothing.

The decoder is driven layer by layer through :class:`DecoderState` (``prepare`` ->
``run_layer`` x depth -> ``readout``); ``forward`` is exactly that loop, so Blink, which
runs the same loop and edits the state between layers, reproduces it bit for bit when it
never expands.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmgen.nn import Block, RMSNorm, Rope3D, apply_rope, ffn_hidden
from mmgen.nn.moe import check_ffn_layout, sparse_ffn_kwargs
from mmgen.nn.pretrained import PretrainedModel, register_to_config

from .text import VOCAB


@dataclass
class DecoderState:
    """Everything one decoder layer needs; produced by ``TinyLlava.prepare``.

    h: [B, L, C]; pos: Long [L, 3] or [B, L, 3]; rope: (cos, sin); mask: bool [L, L] or
    [B, 1, L, L]; n_visual / n_extra: sizes of the visual and appended blocks; extra_active:
    bool [B] (None when there are no appended tokens); text_lengths: Long [B] (None for an
    image-only prefix); grid: (gh, gw).
    """

    h: torch.Tensor
    pos: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor]
    mask: torch.Tensor
    n_visual: int
    n_extra: int
    extra_active: torch.Tensor | None
    text_lengths: torch.Tensor | None
    grid: tuple[int, int]

    @property
    def text_start(self) -> int:
        return self.n_visual + self.n_extra

    @property
    def visual_h(self) -> torch.Tensor:
        return self.h[:, :self.n_visual]

    @property
    def extra_h(self) -> torch.Tensor:
        return self.h[:, self.n_visual:self.text_start]

    @property
    def extra_pos(self) -> torch.Tensor:
        """[B, n_extra, 3]"""
        pos = self.pos if self.pos.ndim == 3 else self.pos.expand(self.h.shape[0], -1, -1)
        return pos[:, self.n_visual:self.text_start]

    def last_text_index(self) -> torch.Tensor:
        return self.text_start + self.text_lengths - 1


def patch_stem(kind: str, patch: int, dim: int) -> nn.Module:
    """Image -> one ``dim``-vector per patch x patch pixels.

    "patch": one linear patch-projection (ViT's).  "conv": 3x3 stride-2 convolutions with GELU
    halving the resolution until a last 2x2 stride-2 projection reaches the patch size (patch must
    be a power of two >= 4).  With the single projection, the from-scratch ViT had not learned to
    tell the shapes apart after 1500 steps of the dense shape loss (0.32 per-patch accuracy on
    object patches, chance 0.25); the conv stem reached 0.59 after 800 steps.
    """
    if kind == "patch":
        return nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
    if kind != "conv":
        raise ValueError(f"unknown stem {kind!r}; expected 'patch' or 'conv'")
    if patch < 4 or patch & (patch - 1):
        raise ValueError(f"the conv stem needs a power-of-two patch >= 4, got {patch}")
    layers, width, c_in = [], 32, 3
    while patch > 2:
        layers += [nn.Conv2d(c_in, width, 3, stride=2, padding=1), nn.GELU()]
        c_in, width, patch = width, min(2 * width, dim), patch // 2
    return nn.Sequential(*layers, nn.Conv2d(c_in, dim, kernel_size=2, stride=2))


class TinyLlava(PretrainedModel):
    """ViT (patch tokens on a gh x gw grid, 2-D RoPE; a linear or convolutional patch stem) + 2-layer
    MLP projector + causal LM built from :class:`mmgen.nn.Block` over the word vocabulary of
    :mod:`mmgen.mllm.text`."""

    @register_to_config
    def __init__(self, image_size: int = 64, patch: int = 8, vit_dim: int = 64, vit_depth: int = 2,
                 vit_heads: int = 2, dim: int = 64, depth: int = 4, heads: int = 2,
                 mlp_ratio: float = 3.0, vocab_size: int = len(VOCAB), max_text_len: int = 16,
                 pos_stride: int = 2, visual_pos_embed: bool = False, stem: str = "patch", ffn: str = "dense",
                 moe_experts: int = 8, moe_top_k: int = 2, moe_shared: int = 1, moe_expert_hidden: int | None = None,
                 moe_dense_layers: int = 0, moe_bias_rate: float = 1e-3, moe_bias_schedule: str = "constant",
                 moe_aux_alpha: float = 0.0, moe_kernel: str = "auto"):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} must be a multiple of patch {patch}")
        self.patch_embed = patch_stem(stem, patch, vit_dim)
        self.vit_rope = Rope3D(vit_dim // vit_heads)
        self.vit = nn.ModuleList([Block(vit_dim, vit_heads, mlp_ratio) for _ in range(vit_depth)])
        self.vit_norm = RMSNorm(vit_dim)
        self.projector = nn.Sequential(nn.Linear(vit_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        if visual_pos_embed:  # learned per fine-grid row / column (pos_stride units), summed
            g = image_size // patch * pos_stride
            self.row_embed, self.col_embed = nn.Embedding(g, dim), nn.Embedding(g, dim)
            nn.init.normal_(self.row_embed.weight, std=0.1)
            nn.init.normal_(self.col_embed.weight, std=0.1)
        self.embed = nn.Embedding(vocab_size, dim)
        self.rope = Rope3D(dim // heads)
        # the LM's FFN options are VideoAR's (mmgen.nn.moe); MoUE's cross-layer pool is VideoAR's only
        moe = sparse_ffn_kwargs(self.config, ffn_hidden(dim, mlp_ratio), ("dense", "moe", "mohd"))
        self.layers = nn.ModuleList([Block(dim, heads, mlp_ratio, moe=None if i < moe_dense_layers else moe)
                                     for i in range(depth)])
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)

    def _check_checkpoint(self, state: dict, folder: Path) -> None:
        check_ffn_layout(self, state, folder)  # an LM expert-layout mismatch names the config field

    # ------------------------------------------------------------------ geometry
    @property
    def grid(self) -> tuple[int, int]:
        g = self.config.image_size // self.config.patch
        return g, g

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def visual_positions(self, gh: int, gw: int, device=None) -> torch.Tensor:
        s = self.config.pos_stride
        r, c = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
        return torch.stack([torch.zeros_like(r), s * r, s * c], -1).reshape(-1, 3)

    def text_positions(self, n: int, device=None) -> torch.Tensor:
        start = self.config.pos_stride * max(self.grid)
        return (start + torch.arange(n, device=device))[:, None].expand(n, 3)

    def region_positions(self, r0: torch.Tensor, c0: torch.Tensor, size: int, factor: int) -> torch.Tensor:
        """Sub-grid positions of a size x size region (top-left cells r0, c0: Long [B]) upsampled by
        ``factor`` -> Long [B, (size*factor)^2, 3].  Requires pos_stride % factor == 0."""
        s = self.config.pos_stride
        if s % factor:
            raise ValueError(f"upsampling factor {factor} must divide the model's pos_stride {s}")
        n = size * factor
        y, x = torch.meshgrid(torch.arange(n, device=r0.device), torch.arange(n, device=r0.device), indexing="ij")
        y, x = y.reshape(-1) * (s // factor), x.reshape(-1) * (s // factor)
        return torch.stack([torch.zeros(len(r0), n * n, dtype=torch.long, device=r0.device),
                            s * r0[:, None] + y, s * c0[:, None] + x], -1)

    def position_embedding(self, pos: torch.Tensor) -> torch.Tensor | float:
        """Absolute position content for image-derived input tokens at positions ``pos`` [..., 3]
        (0 when the model has no ``visual_pos_embed``)."""
        if not self.config.visual_pos_embed:
            return 0.0
        return self.row_embed(pos[..., 1]) + self.col_embed(pos[..., 2])

    # ------------------------------------------------------------------ encoders
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """float [B, 3, H, W] in [-1, 1] (H, W multiples of the patch) -> [B, (H/p)*(W/p), dim]."""
        return self.projector(self.vit_features(images))

    def vit_features(self, images: torch.Tensor) -> torch.Tensor:
        """The ViT's normalised patch features [B, (H/p)*(W/p), vit_dim] (before the projector)."""
        x = self.patch_embed(images)
        B, _, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        pos = self.visual_positions(gh, gw, x.device) // self.config.pos_stride
        rope = self.vit_rope(pos)
        for blk in self.vit:
            x = blk(x, rope)  # bidirectional inside the image
        return self.vit_norm(x)

    # ------------------------------------------------------------------ layer-by-layer decoder
    def prepare(self, images: torch.Tensor, ids: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None, extra: torch.Tensor | None = None,
                extra_pos: torch.Tensor | None = None, extra_active: torch.Tensor | None = None,
                visual: torch.Tensor | None = None) -> DecoderState:
        """Embed image (+ appended tokens) + question. ids: Long [B, Lt] right-padded, lengths [B];
        ids None = image-only prefix.  ``visual`` skips the encoder (precomputed tokens)."""
        vis = self.encode_image(images) if visual is None else visual
        B, device = vis.shape[0], vis.device
        gh, gw = self.grid
        if vis.shape[1] != gh * gw:
            raise ValueError(f"image gives {vis.shape[1]} tokens, model expects {gh}x{gw}")
        vis_pos = self.visual_positions(gh, gw, device)
        parts, pos = [vis + self.position_embedding(vis_pos)], [vis_pos]
        if ids is not None:
            if ids.shape[1] > self.config.max_text_len:
                raise ValueError(f"question has {ids.shape[1]} tokens, context allows {self.config.max_text_len}")
            parts.append(self.embed(ids))
            pos.append(self.text_positions(ids.shape[1], device))
            if lengths is None:
                lengths = torch.full((B,), ids.shape[1], device=device)
        state = DecoderState(torch.cat(parts, 1), torch.cat(pos, 0), None, None, gh * gw, 0, None,
                             lengths if ids is not None else None, (gh, gw))
        if extra is not None:  # image-derived input tokens: they get the absolute positions too
            return self.set_extra(state, extra + self.position_embedding(extra_pos), extra_pos, extra_active)
        return self._finish(state)

    def _finish(self, state: DecoderState, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> DecoderState:
        """Recompute the mask (and the rope, unless ``rope`` of these positions is given) after the
        sequence changed."""
        L, device = state.h.shape[1], state.h.device
        causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        mask = causal
        if state.extra_active is not None and not bool(state.extra_active.all()):
            # inactive appended slots: no one attends to them (they still see themselves so
            # their own softmax rows stay finite; their values are never read)
            slot = torch.zeros(L, dtype=torch.bool, device=device)
            slot[state.n_visual:state.text_start] = True
            hidden = slot[None, :] & ~state.extra_active[:, None]  # [B, L]
            eye = torch.eye(L, dtype=torch.bool, device=device)
            mask = ((causal[None] & ~hidden[:, None, :]) | eye)[:, None]
        return replace(state, rope=self.rope(state.pos) if rope is None else rope, mask=mask)

    def set_extra(self, state: DecoderState, extra: torch.Tensor | None, extra_pos: torch.Tensor | None,
                  extra_active: torch.Tensor | None = None) -> DecoderState:
        """Replace the appended block by ``extra`` [B, Ne, C] at positions ``extra_pos`` [B, Ne, 3]
        (None removes it). extra_active: bool [B] (default all)."""
        nv, ts = state.n_visual, state.text_start
        vis_h, text_h = state.h[:, :nv], state.h[:, ts:]
        B = state.h.shape[0]
        base_pos = state.pos if state.pos.ndim == 3 else state.pos.expand(B, -1, -1)
        vis_pos, text_pos = base_pos[:, :nv], base_pos[:, ts:]
        if extra is None:
            pos = torch.cat([vis_pos, text_pos], 1)
            if state.n_extra == 0 or bool((pos == pos[:1]).all()):
                pos = pos[0]
            return self._finish(replace(state, h=torch.cat([vis_h, text_h], 1), pos=pos, n_extra=0,
                                        extra_active=None))
        if extra_active is None:
            extra_active = torch.ones(B, dtype=torch.bool, device=extra.device)
        h = torch.cat([vis_h, extra.to(vis_h.dtype), text_h], 1)
        pos = torch.cat([vis_pos, extra_pos.to(vis_pos), text_pos], 1)
        return self._finish(replace(state, h=h, pos=pos, n_extra=extra.shape[1], extra_active=extra_active))

    def select(self, state: DecoderState, index: torch.Tensor) -> DecoderState:
        """The samples ``index`` (Long [b]) of a batch state (their rotary rows, the mask rebuilt)."""
        per_sample = lambda t: t[index] if t is not None and t.ndim >= 3 else t  # noqa: E731
        return self._finish(replace(
            state, h=state.h[index], pos=per_sample(state.pos),
            extra_active=None if state.extra_active is None else state.extra_active[index],
            text_lengths=None if state.text_lengths is None else state.text_lengths[index]),
            rope=tuple(per_sample(t) for t in state.rope))

    def merge(self, states: list[DecoderState]) -> DecoderState:
        """One batch from states of the same layout (sequence length, appended-block size), in order."""
        first = states[0]
        if any(s.h.shape[1] != first.h.shape[1] or s.n_extra != first.n_extra for s in states):
            raise ValueError("merge needs states with the same sequence layout")
        if all(s.pos.ndim == 2 and torch.equal(s.pos, first.pos) for s in states):
            pos, rope = first.pos, first.rope
        else:
            pos = torch.cat([s.pos if s.pos.ndim == 3 else s.pos.expand(s.h.shape[0], -1, -1) for s in states])
            rope = tuple(torch.cat([t if t.ndim == 3 else t.expand(s.h.shape[0], -1, -1) for s, t in
                                    zip(states, ts)]) for ts in zip(*(s.rope for s in states)))
        cat = lambda ts: None if ts[0] is None else torch.cat(ts)  # noqa: E731
        return self._finish(replace(
            first, h=torch.cat([s.h for s in states]), pos=pos,
            extra_active=cat([s.extra_active for s in states]), text_lengths=cat([s.text_lengths for s in states])),
            rope=rope)

    def run_layer(self, i: int, state: DecoderState) -> DecoderState:
        return replace(state, h=self.layers[i](state.h, state.rope, state.mask))

    def query_keys(self, i: int, state: DecoderState, with_rope: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's query of the last question token and keys of the visual tokens, recomputed
        from the layer input (norm1 -> q_proj / k_proj; RoPE when ``with_rope``); the layer itself
        projects them again (reusing them measured no faster: README, Blink rows).
        -> q [B, H, D], k [B, H, Nv, D]."""
        blk = self.layers[i]
        attn = blk.attn
        B, nv = state.h.shape[0], state.n_visual
        idx = state.last_text_index()
        rows = state.h[torch.arange(B, device=idx.device), idx][:, None]  # [B, 1, C]
        H, D = attn.n_heads, attn.head_dim
        q = attn.q_proj(blk.norm1(rows)).view(B, 1, H, D).transpose(1, 2)  # [B, H, 1, D]
        k = attn.k_proj(blk.norm1(state.h[:, :nv])).view(B, nv, H, D).transpose(1, 2)  # [B, H, Nv, D]
        if with_rope:
            cos, sin = state.rope
            if cos.ndim == 2:
                cq, sq = cos[idx][:, None], sin[idx][:, None]
                ck, sk = cos[:nv], sin[:nv]
            else:
                ar = torch.arange(B, device=idx.device)
                cq, sq = cos[ar, idx][:, None], sin[ar, idx][:, None]
                ck, sk = cos[:, :nv], sin[:, :nv]
            q, k = apply_rope(q, cq, sq), apply_rope(k, ck, sk)
        return q[:, :, 0], k

    def readout(self, state: DecoderState) -> torch.Tensor:
        """Next-token logits [B, V] at each sample's last question token."""
        B = state.h.shape[0]
        last = state.h[torch.arange(B, device=state.h.device), state.last_text_index()]
        return self.head(self.norm(last))

    def forward(self, images: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor | None = None,
                **extra) -> torch.Tensor:
        """Vanilla forward: logits [B, V] for the answer token."""
        state = self.prepare(images, ids, lengths, **extra)
        for i in range(len(self.layers)):
            state = self.run_layer(i, state)
        return self.readout(state)

    def hidden_states(self, state: DecoderState, layers) -> dict[int, torch.Tensor]:
        """Run all layers, returning the INPUT hidden states [B, L, C] of each layer in ``layers``."""
        out = {}
        for i in range(len(self.layers)):
            if i in layers:
                out[i] = state.h
            state = self.run_layer(i, state)
        return out


def zoom_view(model: TinyLlava, hires: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor,
              size: int, factor: int) -> torch.Tensor:
    """The model's visual tokens of region (r0, c0, size x size cells) seen as a zoomed crop.

    hires: uint8 [B, Hh, Wh, 3] (the source image, at least the model resolution).  The crop is
    resized to (size*factor*patch)^2 pixels and encoded, giving (size*factor)^2 tokens, i.e.
    ``factor`` x finer cells than the full view.  -> [B, (size*factor)^2, dim]."""
    cfg = model.config
    B, Hh, Wh, _ = hires.shape
    out_px = size * factor * cfg.patch
    cell_h, cell_w = Hh / model.grid[0], Wh / model.grid[1]
    crops = []
    for b in range(B):
        y0, x0 = int(round(float(r0[b]) * cell_h)), int(round(float(c0[b]) * cell_w))
        y1, x1 = int(round((float(r0[b]) + size) * cell_h)), int(round((float(c0[b]) + size) * cell_w))
        crop = hires[b, y0:y1, x0:x1].permute(2, 0, 1).float()[None] / 127.5 - 1
        mode = "area" if crop.shape[-1] >= out_px else "bilinear"
        kw = {} if mode == "area" else {"align_corners": False}
        crops.append(F.interpolate(crop, size=(out_px, out_px), mode=mode, **kw))
    images = torch.cat(crops).clamp(-1, 1).to(next(model.parameters()).device)
    return model.encode_image(images)

