"""VideoAR: a LLaMA-style decoder that predicts a video group by group (next frame, next scale).

Sequence (see :mod:`mmgen.ar.layout`)::

    [condition prefix | (frame 0, scale 0) | (frame 0, scale 1) | ... | (frame F-1, scale K-1)]

* Prefix: one class token (class models) or ``max_text_len`` byte-level text tokens
  (text models), embedded by the model itself (ERNIE-style: one transformer for text and video).
  The unconditional input for classifier-free guidance is the null class ``num_classes`` or
  the empty prompt (all padding).
* Visual group (t, k): its input is the tokenizer's ``next_scale_inputs(codes)[k][:, t]``
  (frame t's coarser scales summed at full size and resized to scale k; for k = 0 the previous
  frame's whole latent), projected to ``width``, plus a learned scale embedding.  Group (0, 0)
  has no history: its input is the learned <SOS> embedding (its features are ignored); it sees
  the condition through attention to the prefix.
* The output of group (t, k) predicts frame t's codes at scale k: ``bits`` logits per token
  (bitwise BCE, Infinity) or ``codebook_size`` logits (index head, for a VQ quantizer).
* Attention is group-causal (the layout's mask) with 3-D rotary positions (t, h, w).

Training uses :meth:`VideoAR.forward` (all groups at once, teacher forcing); sampling uses
:meth:`new_cache`, :meth:`prefill` and :meth:`forward_group` (one group at a time, KV-cached).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from mmgen.nn import Block, KVCache, RMSNorm, Rope3D

from . import text as text_tokens
from .layout import GroupLayout

CONDITIONS = ("class", "text")
HEADS = ("bits", "index")


@dataclass
class ARCache:
    """State of KV-cached decoding: the layout, one KVCache per block, and the next group due."""

    layout: GroupLayout
    layers: list[KVCache]
    batch_size: int
    next_group: int = 0  # index into the layout's groups; prefix groups are filled by prefill()

    @property
    def length(self) -> int:
        return self.layers[0].length


class VideoAR(ModelMixin, ConfigMixin):
    """Next-frame & next-scale video generator.

    Config (all JSON-serialisable, saved by ``save_pretrained``):
      bits: input feature width d of the tokenizer's codes (= tokenizer.quantizer.bits)
      scales: per-frame scale schedule [(h_k, w_k)], coarse to fine (= tokenizer.quantizer.scales)
      num_frames: latent frames of a training clip (default layout; sampling may ask for others)
      width, depth, heads, mlp_ratio, qk_norm: transformer shape (LLaMA-style, SwiGLU, no biases)
      cond: "class" or "text"; num_classes (class models); max_text_len (text models)
      head: "bits" (d logits/token, BCE) or "index" (codebook_size logits/token, CE)
      pos_mode: "own_grid" (VideoAR) or "finest_grid" (coarse scales centre-aligned on the finest grid)
      rope_base, rope_axes: Rope3D base and (t, h, w) split of the head dim (None = 1/4, 3/8, 3/8)
      frame_window: Random Frame Mask window w (None = every past frame is visible)
      attn_backend: mmgen.nn.attention backend ("auto" = Flex on CUDA, SDPA on CPU); a run-time
        default only (:meth:`set_attention_backend`): any saved value samples anywhere
      grad_checkpointing: recompute blocks in backward (training only; :meth:`set_gradient_checkpointing`)
    """

    @register_to_config
    def __init__(self, bits: int = 16, scales: Sequence = ((1, 1), (2, 2), (4, 4), (8, 8)),
                 num_frames: int = 5, width: int = 256, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, qk_norm: bool = True, cond: str = "text",
                 num_classes: int = 192, max_text_len: int = 96, head: str = "bits",
                 codebook_size: int | None = None, pos_mode: str = "own_grid", rope_base: float = 10000.0,
                 rope_axes: Sequence[int] | None = None, frame_window: int | None = None,
                 attn_backend: str = "auto", grad_checkpointing: bool = False):
        super().__init__()
        if cond not in CONDITIONS:
            raise ValueError(f"VideoAR: cond={cond!r} must be one of {CONDITIONS}")
        if head not in HEADS:
            raise ValueError(f"VideoAR: head={head!r} must be one of {HEADS}")
        if head == "index" and not codebook_size:
            raise ValueError("VideoAR: head='index' needs codebook_size")
        self.scales = [(s, s) if isinstance(s, int) else (int(s[0]), int(s[1])) for s in scales]
        self.prefix_len = 1 if cond == "class" else max_text_len
        self.out_dim = bits if head == "bits" else int(codebook_size)

        if cond == "class":
            self.cond_embed = nn.Embedding(num_classes + 1, width)  # last row = null class (CFG)
        else:
            self.cond_embed = nn.Embedding(text_tokens.VOCAB_SIZE, width)
        self.in_proj = nn.Linear(bits, width, bias=False)
        self.scale_embed = nn.Embedding(len(self.scales), width)
        self.sos = nn.Parameter(torch.zeros(width))
        self.rope = Rope3D(width // heads, rope_axes, rope_base)
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, qk_norm=qk_norm, backend=attn_backend,
                  checkpointing=grad_checkpointing) for _ in range(depth))
        self.norm = RMSNorm(width)
        self.out_proj = nn.Linear(width, self.out_dim, bias=False)
        self._layouts: dict[int, GroupLayout] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if p.ndim == 2:
                # GPT-2 style: residual-branch outputs scaled down with depth.
                std = 0.02 / math.sqrt(2 * self.config.depth) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, std=std)
        nn.init.normal_(self.sos, std=0.02)
        nn.init.zeros_(self.out_proj.weight)  # start at chance: every bit logit 0 -> loss ln 2

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        for block in self.blocks:
            block.checkpointing = enabled

    def set_attention_backend(self, backend: str) -> None:
        """Choose the attention kernel for this run (the saved ``attn_backend`` is only the default
        it was trained with; every backend computes the same function)."""
        from mmgen.nn.attention import BACKENDS

        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
        for block in self.blocks:
            block.attn.backend = backend

    # ------------------------------------------------------------------ layout & condition
    def layout(self, num_frames: int | None = None) -> GroupLayout:
        """The (cached) GroupLayout for ``num_frames`` latent frames (default: config.num_frames)."""
        n = int(num_frames or self.config.num_frames)
        if n not in self._layouts:
            self._layouts[n] = GroupLayout(self.prefix_len, n, self.scales, self.config.pos_mode,
                                           self.config.frame_window)
        return self._layouts[n]

    def condition_tokens(self, cond) -> torch.Tensor:
        """Validate a condition and return prefix token ids Long [B, prefix_len] on the model's device.

        class models: class ids (int list or Long [B]), id == num_classes is the null class.
        text models: list of prompts, or already encoded Long [B, max_text_len].
        """
        cfg = self.config
        if cfg.cond == "class":
            if isinstance(cond, str) or (isinstance(cond, (list, tuple)) and any(isinstance(c, str) for c in cond)):
                raise TypeError("this VideoAR model is class-conditional; got text prompt(s) — pass class ids")
            ids = torch.as_tensor(cond, dtype=torch.long).reshape(-1)
            bad = (ids < 0) | (ids > cfg.num_classes)
            if bad.any():
                raise ValueError(f"class id {int(ids[bad][0])} out of range: this model has {cfg.num_classes} "
                                 f"classes (0..{cfg.num_classes - 1}; {cfg.num_classes} = unconditional)")
            return ids[:, None].to(self.device)
        if isinstance(cond, torch.Tensor):
            if cond.dtype != torch.long or cond.ndim != 2 or cond.shape[1] != cfg.max_text_len:
                raise ValueError(f"text tokens must be Long [B, {cfg.max_text_len}], got {cond.dtype} {tuple(cond.shape)}")
            return cond.to(self.device)
        if isinstance(cond, str):
            cond = [cond]
        if not all(isinstance(c, str) for c in cond):
            raise TypeError("this VideoAR model is text-conditional; pass prompt strings, not class ids")
        return text_tokens.encode_batch(list(cond), cfg.max_text_len).to(self.device)

    def null_condition(self, batch_size: int) -> torch.Tensor:
        """Prefix tokens of the unconditional input (CFG): null class or empty prompt."""
        fill = self.config.num_classes if self.config.cond == "class" else text_tokens.PAD_ID
        return torch.full((batch_size, self.prefix_len), fill, dtype=torch.long, device=self.device)

    def check_tokenizer(self, tokenizer) -> None:
        """Raise ValueError unless ``tokenizer``'s quantizer produces what this model was built for."""
        q = tokenizer.quantizer
        scales = [tuple(s) for s in q.scales]
        if q.bits != self.config.bits:
            raise ValueError(f"tokenizer/generator mismatch: tokenizer codes have {q.bits} bits/features, "
                             f"the generator expects bits={self.config.bits}")
        if scales != self.scales:
            raise ValueError(f"tokenizer/generator mismatch: tokenizer scales {scales} != generator scales {self.scales}")
        vq_size = getattr(q, "codebook_size", None)
        if self.config.head == "index" and vq_size != self.config.codebook_size:
            raise ValueError(f"tokenizer/generator mismatch: generator has an index head of {self.config.codebook_size} "
                             f"codes, the tokenizer's quantizer has codebook_size={vq_size}")
        if self.config.head == "bits" and vq_size is not None:
            raise ValueError("tokenizer/generator mismatch: the tokenizer uses an index (VQ) quantizer; the "
                             "generator has a bit head (use head='index')")

    # ------------------------------------------------------------------ pieces
    def _embed_visual(self, feats: torch.Tensor, scale_id: torch.Tensor, sos_at: slice | None) -> torch.Tensor:
        if feats.shape[-1] != self.config.bits:
            raise ValueError(f"visual inputs have {feats.shape[-1]} features, the model expects bits={self.config.bits}")
        x = self.in_proj(feats.to(self.in_proj.weight.dtype)) + self.scale_embed(scale_id)
        if sos_at is not None:  # group (0, 0) has no history: its input is the <SOS> embedding
            sos = (self.sos + self.scale_embed.weight[0]).to(x.dtype)
            x = x.clone()
            x[:, sos_at] = sos
        return x

    def _rope(self, pos: torch.Tensor):
        return self.rope(pos.to(self.device))

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.norm(x)).float()

    # ------------------------------------------------------------------ training forward
    def forward(self, cond, inputs: Sequence[torch.Tensor], frame_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits for every visual token.

        cond: see :meth:`condition_tokens` (prefix token ids Long [B, P] are accepted as-is).
        inputs: tokenizer.quantizer.next_scale_inputs(codes): list[K] of [B, t, h_k, w_k, bits].
        frame_keep: optional Random Frame Mask draw bool [B, t, t] (GroupLayout.sample_frame_keep).
        Returns float32 logits [B, L_visual, out_dim] in layout order (frame, scale, row, col).
        """
        layout = self.layout(inputs[0].shape[1])
        prefix = self.cond_embed(self.condition_tokens(cond))
        feats = layout.flatten_visual(inputs)
        scale_id = layout.scale_id[layout.prefix_len:].to(self.device)
        x = torch.cat([prefix, self._embed_visual(feats, scale_id, layout.visual_slice(0, 0))], dim=1)
        rope = self._rope(layout.pos)
        mask = layout.attention_mask(frame_keep.cpu() if frame_keep is not None else None).to(self.device)
        for block in self.blocks:
            x = block(x, rope, mask)
        return self._output(x[:, layout.prefix_len:])

    # ------------------------------------------------------------------ KV-cached decoding
    def new_cache(self, batch_size: int, num_frames: int | None = None, dtype: torch.dtype | None = None) -> ARCache:
        """Empty KV cache for ``batch_size`` rows (cond and uncond rows of CFG count separately).

        dtype: storage dtype of keys/values; default = the autocast dtype when autocast is on for
        the model's device, else the model's parameter dtype.
        """
        layout = self.layout(num_frames)
        if dtype is None:
            dev = self.device.type
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.dtype
        head_dim = self.config.width // self.config.heads
        layers = [KVCache(batch_size, self.config.heads, layout.length, head_dim, dtype, self.device)
                  for _ in self.blocks]
        return ARCache(layout, layers, batch_size)

    def _run_cached(self, cache: ARCache, x: torch.Tensor, tokens: slice) -> torch.Tensor:
        layout = cache.layout
        single_group = bool((layout.group_id[tokens] == layout.group_id[tokens.start]).all())
        if single_group and layout.window is None:
            mask = None  # one group sees everything cached so far, itself included
        else:  # the (causal) text prefix, or a frame window: rows of the layout's mask
            mask = layout.attention_mask().rows(tokens, tokens.stop).to(self.device)
        rope = self._rope(layout.pos[tokens])
        for block, kv in zip(self.blocks, cache.layers):
            x = block(x, rope, mask, kv_cache=kv)
        return x

    @torch.no_grad()
    def prefill(self, cache: ARCache, cond) -> None:
        """Feed the condition prefix (cond as in :meth:`condition_tokens`, batch = cache.batch_size)."""
        if cache.next_group != 0:
            raise RuntimeError("prefill: the cache already holds a prefix; create a new cache per video batch")
        tokens = self.condition_tokens(cond)
        if tokens.shape[0] != cache.batch_size:
            raise ValueError(f"prefill: condition batch {tokens.shape[0]} != cache batch {cache.batch_size}")
        P = cache.layout.prefix_len
        self._run_cached(cache, self.cond_embed(tokens), slice(0, P))
        cache.next_group = P

    @torch.no_grad()
    def forward_group(self, cache: ARCache, inputs: torch.Tensor | None, t: int, k: int) -> torch.Tensor:
        """Logits [B, h_k*w_k, out_dim] (float32) of group (frame t, scale k).

        inputs: frame t's input at scale k, [B, h_k, w_k, bits] — ``next_scale_inputs(codes)[k][:, t]``
        during teacher forcing; while sampling: k > 0 -> ``down_to(sum of frame t's dequant_up so far, k)``,
        k = 0 -> ``down_to(previous frame's full latent, 0)``.  Ignored (may be None) for group (0, 0).
        Groups must come in layout order, after :meth:`prefill`.
        """
        layout = cache.layout
        g = layout.group_index(t, k)
        if cache.next_group < layout.prefix_len:
            raise RuntimeError("forward_group: call prefill(cache, cond) first")
        if g != cache.next_group:
            expected = int(layout.group_frame[cache.next_group]), int(layout.group_scale[cache.next_group])
            raise RuntimeError(f"forward_group: groups must be fed in order; expected (frame, scale) = {expected}, got ({t}, {k})")
        h, w = layout.scales[k]
        B = cache.batch_size
        if t == 0 and k == 0 and inputs is None:
            inputs = torch.zeros(B, h, w, self.config.bits, device=self.device)
        if tuple(inputs.shape) != (B, h, w, self.config.bits):
            raise ValueError(f"forward_group({t}, {k}): inputs must be [{B}, {h}, {w}, {self.config.bits}], "
                             f"got {tuple(inputs.shape)}")
        scale_id = torch.full((h * w,), k, device=self.device)
        x = self._embed_visual(inputs.reshape(B, h * w, -1).to(self.device), scale_id,
                               slice(None) if (t, k) == (0, 0) else None)
        out = self._run_cached(cache, x, layout.group_slice(t, k))
        cache.next_group = g + 1
        return self._output(out)
