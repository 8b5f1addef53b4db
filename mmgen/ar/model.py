"""VideoAR: a LLaMA-style decoder that predicts a video group by group (next frame, next scale).

Sequence (see :mod:`mmgen.ar.layout`)::

    [condition prefix | (frame 0, scale 0) | (frame 0, scale 1) | ... | (frame F-1, scale K-1)]

* Prefix: one class token (class models) or ``max_text_len`` text tokens (text models): either
  byte-level tokens embedded by the model itself (ERNIE-style: one transformer for text and
  video), or the token-level hidden states of a frozen pretrained encoder
  (:mod:`mmgen.ar.text_encoder`, ``text_encoder=``) projected to ``width``, padding positions
  replaced by a learned pad vector. The unconditional input for classifier-free guidance is the
  null class ``num_classes``, the empty prompt, or (``text_null="learned"``) an all-padding prefix.
* Visual group (t, k): its input is the tokenizer's ``next_scale_inputs(codes)[k][:, t]``
  (frame t's coarser scales summed at full size and resized to scale k; for k = 0 the previous
  frame's whole latent), projected to ``width``, plus a learned scale embedding.  Group (0, 0)
  has no history: its input is the learned <SOS> embedding (its features are ignored); it sees
  the condition through attention to the prefix.
* The output of group (t, k) predicts frame t's codes at scale k: ``bits`` logits per token
  (bitwise BCE, Infinity) or ``codebook_size`` logits (index head, for a VQ quantizer).
* Attention is group-causal (the layout's mask) with 3-D rotary positions (t, h, w).

Training uses :meth:`VideoAR.forward` (all groups at once, teacher forcing); sampling uses
:meth:`new_cache`, :meth:`prefill` and :meth:`forward_group` (one group at a time, KV-cached): the
model owns the decoding state (:class:`ARCache`: keys/values, frame window and eviction, rotary
tables), a sampler only drives the steps.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mmgen.nn import Block, KVCache, RMSNorm, Rope3D, ffn_hidden
from mmgen.nn.elastic import ElasticConfig
from mmgen.nn.moe import check_ffn_layout, default_expert_hidden, moe_layers, set_submodel, sparse_ffn_kwargs
from mmgen.nn.moue import UniversalMoE, UniversalPool
from mmgen.nn.pretrained import PretrainedModel, register_to_config
from mmgen.nn.sgt import SGTLoop, SGTScheduler

from . import text as text_tokens
from .layout import GroupLayout
from .text_encoder import MINILM, load_text_encoder
from .unified import TextHead
from .words import PAD, WordVocab, split_words

CONDITIONS = ("class", "text")
TEXT_NULLS = ("empty", "learned")
SIMILARITY_TOKENS = 64  # prompt length read when a byte-level model measures similarity with MiniLM
HEADS = ("bits", "index")
UNDERSTAND_INPUTS = ("codes", "latent")
UNDERSTAND_ENCODERS = ("linear", "conv")


class ARCache:
    """State of KV-cached decoding for ``batch_size`` rows, owned and advanced by :class:`VideoAR`.

    Holds one :class:`KVCache` per block, the next group due and the frame window. With a
    window ``w`` the cache keeps the prefix plus at most ``w + 1`` frames: when frame ``t``
    starts, the keys/values of frame ``t - w - 1`` are dropped (the layout's structural window),
    so memory is bounded however long the video. Every cached token is then visible to the new
    group, so visual groups attend to the whole cache with no mask. Positions come from the
    absolute layout (rotary positions keep growing with t); the rotary table of a frame is built
    once when the frame starts and sliced per group.
    """

    def __init__(self, layout: GroupLayout, layers: list[KVCache], batch_size: int, window: int | None):
        self.layout, self.layers, self.batch_size, self.window = layout, layers, batch_size, window
        self.next_group = 0  # index into the layout's groups; prefix groups are filled by prefill()
        self.frames_cached = 0
        self.frame_rope: tuple[torch.Tensor, torch.Tensor] | None = None  # (cos, sin) of the current frame

    @property
    def length(self) -> int:
        return self.layers[0].length

    def evict_oldest_frame(self) -> None:
        P, n = self.layout.prefix_len, self.layout.tokens_per_frame
        for kv in self.layers:
            kv.drop(P, n)
        self.frames_cached -= 1


class VideoAR(PretrainedModel):
    """Next-frame & next-scale video generator.

    Config (all JSON-serialisable, saved by ``save_pretrained``):
      bits: input feature width d of the tokenizer's codes (= tokenizer.quantizer.bits)
      scales: per-frame scale schedule [(h_k, w_k)], coarse to fine (= tokenizer.quantizer.scales)
      num_frames: latent frames of a training clip (default layout; sampling may ask for others)
      width, depth, heads, mlp_ratio, qk_norm: transformer shape (LLaMA-style, SwiGLU, no biases)
      cond: "class" or "text"; num_classes (class models); max_text_len (text models: bytes, or
        encoder tokens with a text encoder)
      text_encoder: None (byte-level tokens) or a frozen pretrained encoder: "minilm" (the pinned
        all-MiniLM-L6-v2 package) or a local HF folder; text_encoder_sha256: its weights' hash
        (recorded when the generator is built, checked on every load); text_null: "empty"
        (the encoding of "") or "learned" (the learned pad vector everywhere) as the CFG input
      train_captions: the captions the generator was trained on (set by training; used to tell
        users how far a prompt is from them, see :meth:`nearest_captions`)
      head: "bits" (d logits/token, BCE) or "index" (codebook_size logits/token, CE)
      pos_mode: "own_grid" (VideoAR) or "finest_grid" (coarse scales centre-aligned on the finest grid)
      rope_base, rope_axes: Rope3D base and (t, h, w) split of the head dim (None = 1/4, 3/8, 3/8)
      frame_window: Random Frame Mask window w (None = every past frame is visible)
      ffn: "dense" (SwiGLU), "moe" (mmgen.nn.moe.SparseMoE: routed + shared experts), "mohd" or "moue"
      moe_experts, moe_top_k, moe_shared, moe_expert_hidden: routed experts, chosen per token,
        always-on shared experts, expert hidden size (None = active FFN size of the dense model)
      moe_dense_layers: the first layers keep a dense FFN
      moe_bias_rate: loss-free balancing step; moe_bias_schedule: "constant", "cosine" (the step
        decays to 0 over the training run) or "exp" (geometric decay to moe_bias_rate_end);
        moe_aux_alpha: sequence-wise aux loss (0 = off)
      moe_kernel: "auto" (grouped GEMM where it runs), "grouped" or "loop"
      ffn="mohd" (mmgen.nn.mohd): mohd_expansion x the dense hidden dims, mohd_shared_fraction of
        the dense hidden always on, routed groups of mohd_group dims (bias/aux/kernel as moe_*)
      ffn="moue" (mmgen.nn.moue): moe_* shapes, experts drawn from one pool of moue_pool experts
        (None = stride x MoE layers); layer windows of moe_experts shifted by moue_stride
        (None = moe_experts // 2); router trajectory state of moue_traj_dim
      elastic: mmgen.nn.elastic.ElasticConfig fields (None = no elastic sub-models)

      Depth options (mmgen.nn.sgt / mmgen.nn.itt; all off by default = the plain model):
      sgt: Sparse Growing Transformer attention loops on layers 1..depth-1, scheduled by
        ``sgt_step``; sgt_warmup, sgt_window (>= 1: optimiser steps, < 1: fraction of the run),
        sgt_top_k, sgt_max_layers, sgt_keep_heads, sgt_ema
      itt_layers: layers with Inner-Thinking-Transformer thinking steps; itt_steps (1 = plain),
        itt_frac (top fraction of every group's tokens routed to each extra step)
      loop_layers: layers run twice as a whole block (static block looping, a baseline)

      Unified model (mmgen.ar.unified; off by default = the plain generator):
      text_vocab: word vocabulary (mmgen.ar.words) of the prompts AND of a text output head, so
        the same transformer also writes captions/answers after a video; None = byte prompts, no
        text head. text_len: text tokens after the video in a [video -> text] sequence;
        mtp_heads: extra multi-token-prediction heads (token t+2, t+3, ...) trained alongside
        understand_input: what the video groups of an understanding row (a row with text) read:
          "codes" (the inputs given, :func:`mmgen.ar.unified.video_inputs`, through ``in_proj``)
          or "latent" (the tokenizer encoder's continuous latent before quantisation, per clip
          RMS 1, resized to every scale, through its own ``latent_proj``: the bit codes of a
          small object are too noisy to be read at this size, issue 16). Generation rows always
          read the codes.
        understand_encoder: with ``understand_input="latent"``, "linear" (the latent cell alone) or
          "conv" (a residual 3x3-conv stem over each frame's latent before the resizing: a small
          object's shape lies across a cell and its neighbours; ``latent_stem``)

      Partial reveal (off by default): reveal_scales: scales whose tokens may be drawn in several
        passes (:func:`mmgen.ar.sampling.sample_codes`, ``reveal_steps``): a pass sees the codes
        the earlier passes kept, each through ``reveal_proj`` added to its token. Trained with
        :class:`mmgen.ar.training.ARModule`'s ``reveal_p``. Why: the tokens of one scale are
        otherwise drawn independently, and a choice they must make together (which cell holds
        a small object) is made by none of them (docs/design.md, issue 19).

    Runtime choices, arguments but not saved config (old configs that hold them still load):
      attn_backend: mmgen.nn.attention backend ("auto" = Flex on CUDA, SDPA on CPU);
        see :meth:`set_attention_backend`; every backend computes the same function
      grad_checkpointing: recompute blocks in backward; see :meth:`set_gradient_checkpointing`
    """

    ignore_for_config = ["attn_backend", "grad_checkpointing"]

    @register_to_config
    def __init__(self, bits: int = 16, scales: Sequence = ((1, 1), (2, 2), (4, 4), (8, 8)),
                 num_frames: int = 5, width: int = 256, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, qk_norm: bool = True, cond: str = "text",
                 num_classes: int = 192, max_text_len: int = 96, head: str = "bits",
                 codebook_size: int | None = None, pos_mode: str = "own_grid", rope_base: float = 10000.0,
                 rope_axes: Sequence[int] | None = None, frame_window: int | None = None,
                 attn_backend: str = "auto", grad_checkpointing: bool = False, ffn: str = "dense",
                 moe_experts: int = 8, moe_top_k: int = 2, moe_shared: int = 1,
                 moe_expert_hidden: int | None = None, moe_dense_layers: int = 0, moe_bias_rate: float = 1e-3,
                 moe_bias_schedule: str = "constant", moe_bias_rate_end: float = 1e-4, moe_aux_alpha: float = 0.0, moe_kernel: str = "auto",
                 mohd_expansion: float = 2.0, mohd_shared_fraction: float = 0.5, mohd_group: int = 32,
                 moue_pool: int | None = None, moue_stride: int | None = None, moue_traj_dim: int = 16, elastic: dict | None = None,
                 text_encoder: str | None = None, text_encoder_sha256: str | None = None,
                 text_null: str = "empty", train_captions: Sequence[str] | None = None, sgt: bool = False,
                 sgt_warmup: float = 0.1, sgt_window: float = 0.1, sgt_top_k: int = 3,
                 sgt_max_layers: int = 3, sgt_keep_heads: int = 2, sgt_ema: float = 0.5,
                 itt_layers: Sequence[int] | None = None, itt_steps: int = 2, itt_frac: float = 0.5,
                 loop_layers: Sequence[int] | None = None, text_vocab: Sequence[str] | None = None,
                 text_len: int = 24, mtp_heads: int = 0, understand_input: str = "codes",
                 understand_encoder: str = "linear", reveal_scales: Sequence[int] | None = None):
        super().__init__()
        if cond not in CONDITIONS:
            raise ValueError(f"VideoAR: cond={cond!r} must be one of {CONDITIONS}")
        if head not in HEADS:
            raise ValueError(f"VideoAR: head={head!r} must be one of {HEADS}")
        if head == "index" and not codebook_size:
            raise ValueError("VideoAR: head='index' needs codebook_size")
        itt, loops = set(itt_layers or ()), set(loop_layers or ())
        if (sgt and (itt or loops)) or itt & loops or not itt | loops <= set(range(depth)):
            raise ValueError(f"VideoAR: depth options need distinct layers in 0..{depth - 1} and SGT "
                             f"alone (sgt={sgt}, itt_layers={itt_layers}, loop_layers={loop_layers})")
        if text_vocab is not None and (cond != "text" or text_encoder is not None):
            raise ValueError("VideoAR: text_vocab (the unified model) needs cond='text' without a text_encoder")
        if understand_input not in UNDERSTAND_INPUTS or (understand_input != "codes" and text_vocab is None):
            raise ValueError(f"VideoAR: understand_input={understand_input!r} must be one of {UNDERSTAND_INPUTS}; "
                             "'latent' needs text_vocab (a unified model)")
        if understand_encoder not in UNDERSTAND_ENCODERS or (understand_encoder != "linear" and understand_input != "latent"):
            raise ValueError(f"VideoAR: understand_encoder={understand_encoder!r} must be one of {UNDERSTAND_ENCODERS}; "
                             "'conv' needs understand_input='latent'")
        self.words = WordVocab(text_vocab) if text_vocab is not None else None
        self.scales = [(s, s) if isinstance(s, int) else (int(s[0]), int(s[1])) for s in scales]
        if any(not 0 <= k < len(self.scales) or self.scales[k][0] * self.scales[k][1] < 2 for k in reveal_scales or ()):
            raise ValueError(f"VideoAR: reveal_scales={reveal_scales} must index scales of 2 or more tokens "
                             f"(scales {self.scales})")
        if reveal_scales and head != "bits":
            raise ValueError("VideoAR: reveal_scales needs the bit head")
        self.prefix_len = 1 if cond == "class" else max_text_len
        self.out_dim = bits if head == "bits" else int(codebook_size)

        self.text_encoder = None
        if cond == "class":
            self.cond_embed = nn.Embedding(num_classes + 1, width)  # last row = null class (CFG)
        elif text_encoder is None:
            self.cond_embed = nn.Embedding((self.words or text_tokens).VOCAB_SIZE, width)
        else:
            if text_null not in TEXT_NULLS:
                raise ValueError(f"VideoAR: text_null={text_null!r} must be one of {TEXT_NULLS}")
            self.text_encoder = load_text_encoder(text_encoder, text_encoder_sha256)
            if text_encoder_sha256 is None:
                self.register_to_config(text_encoder_sha256=self.text_encoder.sha256)
            dim = self.text_encoder.dim
            self.cond_embed = nn.Sequential(RMSNorm(dim), nn.Linear(dim, width, bias=False))
            self.cond_pad = nn.Parameter(torch.zeros(width))
        self.register_buffer("caption_memory", self._caption_memory_init(train_captions), persistent=True)
        self.in_proj = nn.Linear(bits, width, bias=False)
        self.scale_embed = nn.Embedding(len(self.scales), width)
        self.sos = nn.Parameter(torch.zeros(width))
        self.rope = Rope3D(width // heads, rope_axes, rope_base)
        self.sparse_ffn = moe = sparse_ffn_kwargs(self.config, ffn_hidden(width, mlp_ratio))
        ffns = [None if i < moe_dense_layers else moe for i in range(depth)]
        if ffn == "moue":
            ffns = self._universal_ffns(ffns, grad_checkpointing)
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, qk_norm=qk_norm, backend=attn_backend, checkpointing=grad_checkpointing,
                  moe=f, **self._depth_options(i)) for i, f in enumerate(ffns))
        self.sgt_scheduler = (SGTScheduler(sgt_warmup, sgt_window, sgt_top_k, sgt_max_layers)
                              if sgt else None)
        self.elastic = ElasticConfig(**elastic) if elastic is not None else None
        if self.elastic is not None:
            self.elastic.validate(depth, moe["n_experts"] if moe else 0, moe["top_k"] if moe else 0)
        self.active_depth: int | None = None  # elastic depth sub-model
        self.norm = RMSNorm(width)
        self.out_proj = nn.Linear(width, self.out_dim, bias=False)
        if self.words is not None:
            self.text_head = TextHead(width, self.words.VOCAB_SIZE, mtp_heads)
        if understand_input == "latent":
            self.latent_proj = nn.Linear(bits, width, bias=False)
        if understand_encoder == "conv":
            self.latent_stem = nn.Sequential(nn.Conv2d(bits, 2 * bits, 3, padding=1), nn.GELU(),
                                             nn.Conv2d(2 * bits, bits, 1))
        if reveal_scales:
            self.reveal_proj = nn.Linear(bits, width)  # its bias marks a token as revealed
        self._layouts: dict[tuple[int, int], GroupLayout] = {}
        self._init_weights()

    def _check_checkpoint(self, state: dict, folder: Path) -> None:
        # a sparse-FFN shape mismatch alone would name no config field
        check_ffn_layout(self, state, folder)

    def _universal_ffns(self, ffns: list, grad_checkpointing: bool) -> list:
        """MoUE: one pool (self.universal_pool) and a UniversalMoE per sparse layer."""
        c, kw = self.config, self.sparse_ffn
        if grad_checkpointing:
            raise ValueError("ffn='moue' carries a router state across layers; it cannot use grad_checkpointing")
        slots = [i for i, f in enumerate(ffns) if f is not None]
        E = kw["n_experts"]
        stride = c.moue_stride or max(1, E // 2)
        hidden = kw["expert_hidden"] or default_expert_hidden(ffn_hidden(c.width, c.mlp_ratio), kw["top_k"], kw["n_shared"])
        self.universal_pool = UniversalPool(c.width, c.moue_pool or max(E, stride * len(slots)), hidden, slots, E, stride,
                                       kw["bias_rate"])
        for slot, i in enumerate(slots):
            ffns[i] = UniversalMoE(self.universal_pool, slot, c.width, kw["top_k"], kw["n_shared"], c.moue_traj_dim,
                                   kw["aux_alpha"], kw["kernel"])
        return ffns

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if p.ndim >= 2:
                # GPT-2 style: residual-branch outputs scaled down with depth.
                std = 0.02 / math.sqrt(2 * self.config.depth) if name.endswith(("o_proj.weight", "down_proj.weight", "w_down")) else 0.02
                nn.init.normal_(p, std=std)
        nn.init.normal_(self.sos, std=0.02)
        if self.text_encoder is not None:
            nn.init.normal_(self.cond_pad, std=0.02)
        nn.init.zeros_(self.out_proj.weight)  # start at chance: every bit logit 0 -> loss ln 2

    def _depth_options(self, layer: int) -> dict:
        cfg = self.config
        if cfg.sgt and layer > 0:  # SGT never loops layer 0
            return {"sgt": {"keep_heads": cfg.sgt_keep_heads, "ema": cfg.sgt_ema}}
        if layer in (cfg.itt_layers or ()):
            return {"itt": {"steps": cfg.itt_steps, "frac": cfg.itt_frac}}
        if layer in (cfg.loop_layers or ()):
            return {"repeat": 2}
        return {}

    def sgt_loops(self) -> dict[int, SGTLoop]:
        """{layer: SGTLoop} of the layers SGT may loop (empty without sgt)."""
        return {i: b.sgt for i, b in enumerate(self.blocks) if b.sgt is not None}

    def sgt_step(self, step: int, total_steps: int) -> int | None:
        """Advance the SGT schedule once per optimiser step; returns a newly selected layer."""
        return self.sgt_scheduler.step(self.sgt_loops(), step, total_steps)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled and self.config.ffn == "moue":
            raise ValueError("ffn='moue' carries a router state across layers; it cannot use grad_checkpointing")
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

    # ------------------------------------------------------------------ sparse FFN: elastic sub-models, routing
    def set_submodel(self, depth: int | None = None, top_k: int | None = None, experts: int | None = None,
                     expert_mask: torch.Tensor | None = None) -> None:
        """Run an elastic sub-model from now on (no arguments = the full model).  Only settings the
        model was trained with (config ``elastic``) are accepted; ``expert_mask`` (bool [experts],
        training) overrides ``experts`` (keep the first N experts)."""
        cfg, el, ffn = self.config, self.elastic, self.sparse_ffn or {"n_experts": 0, "top_k": 0}
        asked = {k: v for k, v in (("depth", depth), ("top_k", top_k), ("experts", experts)) if v is not None}
        trained = {"depth": (el.depths if el else []) + [cfg.depth],
                   "top_k": (el.top_ks if el else []) + [ffn["top_k"]],
                   "experts": ([el.kept_experts(ffn["n_experts"])] if el and el.expert_fraction else []) + [ffn["n_experts"]]}
        for key, value in asked.items():
            if value not in trained[key]:
                raise ValueError(f"elastic {key}={value} was not trained; this model's config.elastic allows "
                                 f"{key} in {sorted(set(trained[key]))}")
        if expert_mask is None and experts is not None and experts < ffn["n_experts"]:
            expert_mask = torch.arange(ffn["n_experts"]) < experts
        self.active_depth = None if depth == cfg.depth else depth
        top_k = None if top_k == ffn["top_k"] else top_k
        set_submodel(self, top_k, expert_mask, depth_only=self.active_depth is not None)

    def _active_blocks(self):
        return self.blocks[:self.active_depth] if self.active_depth else self.blocks

    def routing_counts(self, masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Expert use of the last full-model forward per group of tokens: {name: Long [sparse layers,
        experts]} (top-k choices counted); {} for a dense model.  masks: {name: bool [B, L] or [L]}
        over that forward's sequence; None = the prefix ("text" or "class") and each scale's visual
        tokens ("scale0", ...)."""
        layers = [m for m in moe_layers(self) if m.last_choice is not None]
        if not layers:
            return {}
        B, L = layers[0].last_choice.shape[:2]
        if masks is None:
            layout = self.layout((L - self.prefix_len) // sum(h * w for h, w in self.scales))
            masks = {self.config.cond: torch.arange(L) < layout.prefix_len, **self.scale_masks(layout, L)}
        return {name: torch.stack([torch.bincount(m.last_choice[mask.to(m.last_choice.device).expand(B, L)].flatten(),
                                                  minlength=m.n_experts).cpu() for m in layers])
                for name, mask in masks.items()}

    def scale_masks(self, layout: GroupLayout, length: int | None = None) -> dict[str, torch.Tensor]:
        """{"scale0": bool [length], ...}: each scale's visual tokens in a sequence laid out as
        ``layout`` (its prefix and any text after the video belong to no scale), padded with False
        to ``length`` (default ``layout.length``)."""
        scale_id = nn.functional.pad(layout.scale_id, (0, (length or layout.length) - layout.length), value=-1)
        return {f"scale{k}": scale_id == k for k in range(len(self.scales))}

    # ------------------------------------------------------------------ layout & condition
    def layout(self, num_frames: int | None = None, text_len: int = 0) -> GroupLayout:
        """The (cached) GroupLayout for ``num_frames`` latent frames (default: config.num_frames),
        followed by ``text_len`` text tokens (a [video -> text] sequence of the unified model)."""
        key = int(num_frames or self.config.num_frames), int(text_len)
        if key not in self._layouts:
            self._layouts[key] = GroupLayout(self.prefix_len, key[0], self.scales, self.config.pos_mode,
                                             self.config.frame_window, text_len=key[1])
        return self._layouts[key]

    def condition_tokens(self, cond) -> torch.Tensor:
        """Validate a condition and return its prefix tokens [B, prefix_len(, dim)] on the model's device.

        class models: class ids (int list or Long [B]), id == num_classes is the null class.
        text models: list of prompts, or already encoded prefixes: byte tokens Long [B, max_text_len],
        or with a text encoder float [B, max_text_len, encoder dim] (zero vectors at padding).
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
            return self._check_encoded(cond).to(self.device)
        if isinstance(cond, str):
            cond = [cond]
        if not all(isinstance(c, str) for c in cond):
            raise TypeError("this VideoAR model is text-conditional; pass prompt strings, not class ids")
        if self.text_encoder is None:
            return (self.words or text_tokens).encode_batch(list(cond), cfg.max_text_len).to(self.device)
        self.text_encoder.model.to(self.device)
        return self.text_encoder.encode(list(cond), cfg.max_text_len).to(self.device)

    def _check_encoded(self, cond: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if self.text_encoder is None:
            if cond.dtype != torch.long or cond.ndim != 2 or cond.shape[1] != cfg.max_text_len:
                raise ValueError(f"text tokens must be Long [B, {cfg.max_text_len}], got {cond.dtype} {tuple(cond.shape)}")
        elif not cond.is_floating_point() or tuple(cond.shape[1:]) != (cfg.max_text_len, self.text_encoder.dim):
            raise ValueError(f"encoded prompts must be float [B, {cfg.max_text_len}, {self.text_encoder.dim}], "
                             f"got {cond.dtype} {tuple(cond.shape)}")
        return cond

    def null_condition(self, batch_size: int) -> torch.Tensor:
        """Prefix tokens of the unconditional input (CFG): null class, empty prompt, or (a text
        encoder with text_null="learned") all padding."""
        if self.text_encoder is not None:
            if self.config.text_null == "empty":
                return self.condition_tokens([""] * batch_size)
            return torch.zeros(batch_size, self.prefix_len, self.text_encoder.dim, device=self.device)
        fill = self.config.num_classes if self.config.cond == "class" else (self.words or text_tokens).PAD_ID
        return torch.full((batch_size, self.prefix_len), fill, dtype=torch.long, device=self.device)

    def embed_condition(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prefix tokens (:meth:`condition_tokens`) -> prefix embeddings [B, P, width]."""
        if self.text_encoder is None:
            return self.cond_embed(tokens)
        x = self.cond_embed(tokens.to(self.cond_pad.dtype))
        real = tokens.ne(0).any(-1, keepdim=True)  # padding positions are exact zero vectors
        return torch.where(real, x, self.cond_pad.to(x.dtype))

    def prompt_token_counts(self, prompts: Sequence[str]) -> list[int]:
        """Prefix tokens each prompt needs (more than ``max_text_len`` = truncated by a text encoder)."""
        if self.text_encoder is None:
            return [len(split_words(p)) if self.words else len(p) for p in prompts]
        return [self.text_encoder.token_count(p) for p in prompts]

    # ------------------------------------------------------------------ training captions
    def _caption_memory_init(self, captions) -> torch.Tensor | None:
        if not captions or self.text_encoder is None:
            return None
        return torch.zeros(len(captions), self.text_encoder.dim, dtype=torch.float16)

    def remember_captions(self, captions: Sequence[str]) -> None:
        """Record the (unique) training captions and their sentence embeddings in the model."""
        if self.text_encoder is None:
            return
        unique = sorted(set(captions))
        emb = self.text_encoder.sentence_embeddings(unique, self.config.max_text_len).half()
        self.register_to_config(train_captions=unique)
        self.register_buffer("caption_memory", emb.to(self.device), persistent=True)

    def nearest_captions(self, prompts: Sequence[str]) -> list[tuple[str, float]] | None:
        """(nearest training caption, cosine similarity of the sentence embeddings) per prompt;
        None when no training captions are recorded. Byte-level models measure with the
        pinned MiniLM encoder (embedding their few captions on the fly)."""
        names = self.config.train_captions
        if not names or self.config.cond != "text":
            return None
        encoder = self.text_encoder or load_text_encoder(MINILM)
        if self.caption_memory is not None:
            memory = self.caption_memory.float().cpu()
        else:
            memory = encoder.sentence_embeddings(names, SIMILARITY_TOKENS)
        emb = encoder.sentence_embeddings(list(prompts), SIMILARITY_TOKENS if self.text_encoder is None
                                          else self.config.max_text_len)
        best = (emb @ memory.T).max(dim=1)
        return [(names[int(i)], float(v)) for v, i in zip(best.values, best.indices)]

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
    def _embed_visual(self, feats: torch.Tensor, scale_id: torch.Tensor, sos_at: slice | None,
                      proj: nn.Linear | None = None) -> torch.Tensor:
        if feats.shape[-1] != self.config.bits:
            raise ValueError(f"visual inputs have {feats.shape[-1]} features, the model expects bits={self.config.bits}")
        proj = proj or self.in_proj
        x = proj(feats.to(proj.weight.dtype)) + self.scale_embed(scale_id)
        if sos_at is not None:  # group (0, 0) has no history: its input is the <SOS> embedding
            sos = (self.sos + self.scale_embed.weight[0]).to(x.dtype)
            x = x.clone()
            x[:, sos_at] = sos
        return x

    def latent_inputs(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """The tokenizer encoder's continuous latent ``[B, d, t, h, w]`` (before quantisation) as the
        video of understanding rows: per clip RMS 1 (clips differ in overall energy, not in what
        they show), through the residual ``latent_stem`` where there is one, area-resized to every
        scale, one ``[B, t, h_k, w_k, d]`` tensor per scale."""
        B, d, t, h, w = latent.shape
        z = latent.to(self.device, torch.float32)
        z = z / z.pow(2).mean((1, 2, 3, 4), keepdim=True).sqrt().clamp_min(1e-6)
        frames = z.transpose(1, 2).reshape(B * t, d, h, w)
        if self.config.understand_encoder == "conv":
            frames = frames + self.latent_stem(frames)
        out = []
        for size in self.scales:
            x = frames if (h, w) == size else nn.functional.interpolate(frames, size=size, mode="area")
            out.append(x.reshape(B, t, d, *size).permute(0, 1, 3, 4, 2))
        return out

    def _reveal(self, x: torch.Tensor, revealed: torch.Tensor | None) -> torch.Tensor:
        """Add the kept codes of revealed tokens (``revealed`` [B, L, d]: a token's code, 0 where not
        revealed) to their embeddings ``x`` [B, L, width]."""
        if revealed is None:
            return x
        if not self.config.reveal_scales:
            raise ValueError("this model was not trained with partial reveal (reveal_scales)")
        revealed = revealed.to(self.device, self.reveal_proj.weight.dtype)
        on = revealed.abs().amax(-1, keepdim=True) > 0
        return x + torch.where(on, self.reveal_proj(revealed), 0.0)

    def _embed_video(self, layout: GroupLayout, inputs: Sequence[torch.Tensor], latent: torch.Tensor | None,
                     understand: torch.Tensor | None, revealed: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Embedded visual groups [B, V, width]: ``inputs`` through ``in_proj`` (plus the revealed
        codes, see :meth:`forward`); with ``understand_input="latent"`` the rows where ``understand``
        (bool [B]) is set read ``latent`` through ``latent_proj`` instead."""
        P, V = layout.prefix_len, layout.num_visual
        scale_id, sos_at = layout.scale_id[P:P + V].to(self.device), layout.visual_slice(0, 0)
        x = self._embed_visual(layout.flatten_visual([i.to(self.device) for i in inputs]), scale_id, sos_at)
        x = self._reveal(x, None if revealed is None else layout.flatten_visual([r.to(self.device) for r in revealed]))
        if self.config.understand_input != "latent" or understand is None or not understand.any():
            return x
        if latent is None:
            raise ValueError("this model's understanding rows read the continuous latent "
                             "(understand_input='latent'): pass latent= (tokenizer.encode of the clip)")
        seen = self._embed_visual(layout.flatten_visual(self.latent_inputs(latent)), scale_id, sos_at, self.latent_proj)
        return torch.where(understand.to(self.device).view(-1, 1, 1), seen, x)

    def _rope(self, pos: torch.Tensor):
        return self.rope(pos.to(self.device))

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.norm(x)).float()

    # ------------------------------------------------------------------ training forward
    def forward(self, cond, inputs: Sequence[torch.Tensor], frame_keep: torch.Tensor | None = None,
                frame_offset: int = 0, text: torch.Tensor | None = None, latent: torch.Tensor | None = None,
                revealed: Sequence[torch.Tensor] | None = None):
        """Teacher-forced logits for every visual token.

        cond: see :meth:`condition_tokens` (prefix token ids Long [B, P] are accepted as-is).
        inputs: tokenizer.quantizer.next_scale_inputs(codes): list[K] of [B, t, h_k, w_k, bits].
        frame_keep: optional Random Frame Mask draw bool [B, t, t] (GroupLayout.sample_frame_keep).
        frame_offset: added to the frames' temporal RoPE positions (not the prefix's), so a short
          training clip can stand for frames far into a long windowed sample (0 = the plain layout).
        text: unified models, word ids Long [B, S] after the video; then the result is (visual logits,
        text logits per head: list of float32 [B, S, vocab], see :class:`mmgen.ar.unified.TextHead`).
          A row with text (first word not padding) is an understanding row, the others generate.
        latent: the clips' continuous latent [B, d, t, h, w] (tokenizer.encode), read by understanding
          rows instead of ``inputs`` when ``understand_input="latent"`` (see :meth:`latent_inputs`).
        revealed: partial reveal (``reveal_scales``): list[K] of [B, t, h_k, w_k, bits], each token's own
          code where it is revealed and 0 elsewhere.
        Returns float32 logits [B, L_visual, out_dim] in layout order (frame, scale, row, col).
        """
        layout = self.layout(inputs[0].shape[1], 0 if text is None else text.shape[1])
        prefix = self.embed_condition(self.condition_tokens(cond))
        P, V = layout.prefix_len, layout.num_visual
        understand = None if text is None else text[:, 0].to(self.device) != PAD
        parts = [prefix, self._embed_video(layout, inputs, latent, understand, revealed)]
        x = torch.cat(parts if text is None else [*parts, self.cond_embed(text.to(self.device))], dim=1)
        pos = layout.pos
        if frame_offset:
            pos = pos.clone()
            pos[P:P + V, 0] += frame_offset
        rope = self._rope(pos)
        mask = layout.attention_mask(frame_keep.cpu() if frame_keep is not None else None).to(self.device)
        groups = layout.group_id.to(self.device)
        for block in self._active_blocks():
            x = block(x, rope, mask, groups=groups)
        if text is not None:
            return self._output(x[:, P:P + V]), self.text_head(self.norm(x[:, P + V:]))
        return self._output(x[:, layout.prefix_len:])

    # ------------------------------------------------------------------ KV-cached decoding
    def decoding_window(self, window: int | None = None) -> int | None:
        """Frames of history kept while decoding: ``window`` if given, else the trained
        ``frame_window`` (``None`` = all). A window is only allowed when the model was trained
        with one, and never wider than that one: the model has not learned to look further."""
        trained = self.config.frame_window
        if window is None:
            return trained
        if trained is None:
            raise ValueError("this model was trained without a frame window (Random Frame Mask), so it needs "
                             "every past frame; for long videos chain continuations (VideoARPipeline.extend)")
        if window > trained:
            raise ValueError(f"window {window} exceeds the model's trained frame window {trained}")
        return int(window)

    def new_cache(self, batch_size: int, num_frames: int | None = None, window: int | None = None,
                  dtype: torch.dtype | None = None, text_len: int = 0) -> ARCache:
        """Empty decoding state for ``batch_size`` rows (cond and uncond rows of CFG count separately).

        window: frames of keys/values kept (see :meth:`decoding_window`; default the trained window).
        dtype: storage dtype of keys/values; default = the autocast dtype when autocast is on for
        the model's device, else the model's parameter dtype.
        text_len: room for text after the video (unified models: :meth:`feed_video`, :meth:`forward_text`);
          the text reads the whole video, so such a cache keeps every frame (no window).
        """
        window = None if text_len else self.decoding_window(window)
        n = int(num_frames or self.config.num_frames)
        # The window is enforced by eviction; the layout gives positions and the prefix's mask,
        # which a window does not change.
        layout = self.layout(n, text_len)
        if dtype is None:
            dev = self.device.type
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.dtype
        kept = n if window is None else min(n, window + 1)
        max_len = layout.prefix_len + kept * layout.tokens_per_frame + text_len
        head_dim = self.config.width // self.config.heads
        layers = [KVCache(batch_size, self.config.heads, max_len, head_dim, dtype, self.device)
                  for _ in self.blocks]
        return ARCache(layout, layers, batch_size, window)

    def _run_cached(self, cache: ARCache, x: torch.Tensor, rope, mask, groups=None) -> torch.Tensor:
        # groups: ITT routing groups of the chunk (None = one group: a visual group is one)
        for block, kv in zip(self._active_blocks(), cache.layers):
            x = block(x, rope, mask, kv_cache=kv, groups=groups)
        return x

    def _feed_chunk(self, cache: ARCache, x: torch.Tensor) -> torch.Tensor:
        """Run the next ``x.shape[1]`` tokens of ``cache.layout`` (masked as in training) through the cache."""
        layout, start = cache.layout, cache.length
        stop = start + x.shape[1]
        mask = layout.attention_mask().rows(slice(start, stop), stop).to(self.device)
        return self._run_cached(cache, x, self._rope(layout.pos[start:stop]), mask,
                                layout.group_id[start:stop].to(self.device))

    @torch.no_grad()
    def feed_video(self, cache: ARCache, cond, inputs: Sequence[torch.Tensor], latent: torch.Tensor | None = None) -> None:
        """Feed the prefix and a whole video (teacher-forced groups, ``inputs`` and ``latent`` as in
        :meth:`forward`, every row an understanding row) in one chunk into a fresh cache of
        :meth:`new_cache` with ``text_len``, ready for :meth:`forward_text`."""
        layout = cache.layout
        if cache.next_group != 0 or not layout.text_len:
            raise RuntimeError("feed_video needs a fresh cache from new_cache(..., text_len=N)")
        P = layout.prefix_len
        video = self._embed_video(layout, inputs, latent, torch.ones(cache.batch_size, dtype=torch.bool))
        self._feed_chunk(cache, torch.cat([self.embed_condition(self.condition_tokens(cond)), video], dim=1))
        cache.next_group = P + layout.num_frames * layout.num_scales

    @torch.no_grad()
    def forward_text(self, cache: ARCache, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Text-head logits (float32 [B, n, vocab] per head, as :meth:`forward`'s) of the next
        ``n`` word ids Long [B, n] after :meth:`feed_video` (and earlier text)."""
        if self.words is None or cache.next_group < cache.layout.num_groups - cache.layout.text_len:
            raise RuntimeError("forward_text: a unified model (text_vocab), after feed_video")
        h = self._feed_chunk(cache, self.cond_embed(tokens.to(self.device)))
        cache.next_group += tokens.shape[1]
        return self.text_head(self.norm(h))

    @torch.no_grad()
    def prefill(self, cache: ARCache, cond) -> None:
        """Feed the condition prefix (cond as in :meth:`condition_tokens`, batch = cache.batch_size)."""
        if cache.next_group != 0:
            raise RuntimeError("prefill: the cache already holds a prefix; create a new cache per video batch")
        tokens = self.condition_tokens(cond)
        if tokens.shape[0] != cache.batch_size:
            raise ValueError(f"prefill: condition batch {tokens.shape[0]} != cache batch {cache.batch_size}")
        layout, P = cache.layout, cache.layout.prefix_len
        # a class token needs no mask; a text prefix is causal (the layout's visibility of it)
        mask = layout.attention_mask().rows(slice(0, P), P).to(self.device) if P > 1 else None
        self._run_cached(cache, self.embed_condition(tokens), self._rope(layout.pos[:P]), mask,
                         layout.group_id[:P].to(self.device))
        cache.next_group = P

    def _start_frame(self, cache: ARCache, t: int) -> None:
        if cache.window is not None and cache.frames_cached > cache.window:
            cache.evict_oldest_frame()
        cache.frames_cached += 1
        frame = cache.layout.group_slice(t, 0).start
        cos, sin = self._rope(cache.layout.pos[frame:frame + cache.layout.tokens_per_frame])
        cache.frame_rope = cos, sin

    @torch.no_grad()
    def forward_group(self, cache: ARCache, inputs: torch.Tensor | None, t: int, k: int,
                      revealed: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, h_k*w_k, out_dim] (float32) of group (frame t, scale k).

        inputs: frame t's input at scale k, [B, h_k, w_k, bits] — ``next_scale_inputs(codes)[k][:, t]``
        during teacher forcing; while sampling: k > 0 -> ``down_to(sum of frame t's dequant_up so far, k)``,
        k = 0 -> ``down_to(previous frame's full latent, 0)``.  Ignored (may be None) for group (0, 0).
        revealed: [B, h_k, w_k, bits], the codes kept so far (0 = not revealed; ``reveal_scales``).
        Groups must come in layout order, after :meth:`prefill`; :meth:`rewind_group` takes the last
        one back, to run it again.
        """
        layout = cache.layout
        g = layout.group_index(t, k)
        if cache.next_group < layout.prefix_len:
            raise RuntimeError("forward_group: call prefill(cache, cond) first")
        if g != cache.next_group:
            expected = int(layout.group_frame[cache.next_group]), int(layout.group_scale[cache.next_group])
            raise RuntimeError(f"forward_group: groups must be fed in order; expected (frame, scale) = {expected}, got ({t}, {k})")
        h, w = layout.scales[k]
        B, d = cache.batch_size, self.config.bits
        if (t, k) == (0, 0):  # no history: the input is the <SOS> embedding
            x = (self.sos + self.scale_embed.weight[0]).expand(B, h * w, -1)
        else:
            if inputs is None or tuple(inputs.shape) != (B, h, w, d):
                got = None if inputs is None else tuple(inputs.shape)
                raise ValueError(f"forward_group({t}, {k}): inputs must be [{B}, {h}, {w}, {d}], got {got}")
            x = self.in_proj(inputs.reshape(B, h * w, d).to(self.device, self.in_proj.weight.dtype))
            x = x + self.scale_embed.weight[k]
        if revealed is not None:
            x = self._reveal(x, revealed.reshape(B, h * w, d))
        if k == 0:
            self._start_frame(cache, t)
        offset = layout.group_slice(t, k).start - layout.group_slice(t, 0).start
        cos, sin = (r[offset:offset + h * w] for r in cache.frame_rope)
        out = self._run_cached(cache, x, (cos, sin), None)
        cache.next_group = g + 1
        return self._output(out)

    def reveal_groups(self, steps: int) -> set[int]:
        """The scales drawn in ``steps`` passes (``SamplerSettings.reveal_steps``): ``reveal_scales``,
        none for one pass."""
        if steps > 1 and not self.config.reveal_scales:
            raise ValueError(f"reveal_steps={steps} needs a model trained with partial reveal (reveal_scales); "
                             "this one was not: use 1")
        return set(self.config.reveal_scales or ()) if steps > 1 else set()

    @torch.no_grad()
    def rewind_group(self, cache: ARCache, t: int, k: int) -> None:
        """Take group (t, k), the last one fed, out of the cache again (a later pass replaces it)."""
        layout = cache.layout
        if k == 0 or cache.next_group != layout.group_index(t, k) + 1:
            raise RuntimeError(f"rewind_group: ({t}, {k}) is not the last group fed, or starts a frame")
        n = layout.scales[k][0] * layout.scales[k][1]
        for kv in cache.layers:
            kv.pop(n)
        cache.next_group -= 1
