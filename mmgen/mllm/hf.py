"""Blink on a Hugging Face ``LlavaForConditionalGeneration`` (LLaVA-1.5 layout) or
``Qwen2VLForConditionalGeneration`` (:class:`Qwen2VLDecoder`: the same loop, M-RoPE positions), without forking them.

:class:`LlavaDecoder` implements :class:`~mmgen.mllm.blink.BlinkDecoder` by driving the language
model's own decoder layers one by one: we build the input embeddings (the image features put in
place of the ``<image>`` placeholder tokens, exactly as ``LlavaModel.forward`` does), the position
ids, the rotary table (the model's ``rotary_emb``), the attention mask and the cache, and call
``language_model.layers[i]`` with them, so the attention kernel stays whatever the model was loaded
with (sdpa or eager).  With nothing appended the loop is the HF forward pass (tested to 1e-5 in fp32).

Sequence layout: ``[prefix text | visual (gh x gw) | appended | question]``.  The prefix (the chat
template before ``<image>``) must be the same length in every sample of a batch; questions may be
right-padded (``attention_mask``).  Positions are LLaVA's 1-D ones: position ``t`` for token ``t``
of the prompt without appended tokens.  An appended token takes the position of the grid cell it
subdivides (LLaVA has no 2-D positions to interleave; this keeps the question's positions the same
whether or not anything is appended).  ``region_positions`` therefore returns grid-cell indices
[B, n] (row-major, relative to the visual block); the state turns them into position ids.

Saliency (``query_keys``): the layer's ``input_layernorm`` then ``self_attn.q_proj`` on the last
question token and ``k_proj`` on the visual tokens, rotated with the layer's own RoPE function;
grouped K/V heads are repeated to the query heads as the attention does.

Generation (``generate``): Blink runs on the prompt (prefill) with a ``DynamicCache``; every layer
caches the sequence it saw (with the appended tokens where they were active), and the answer
tokens are decoded greedily against that cache.  One sample at a time (a cache per layer of a
different length for each sample would need per-sample masks at every step).

TokenSR training (``tokensr_loss``): the frozen model's own hidden states at the Blink layer for a
zoomed view of the region (the region's pixels cropped and resized to the full input size, then
area-pooled from the full grid to the (factor*p)^2 SR grid) are the target of the TokenSR output
(mean squared error; the paper's "KL or a distance").

ViCrop (``vicrop``): the training-free baseline that re-runs the model: saliency at one layer picks
the top region, whose zoomed crop's visual tokens are appended at the input and the whole
prompt is run again.
"""
from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .blink import Blink, concentration, gather_region, region_scores, saliency, super_resolve


LLAVA_PROMPT = "USER: <image>\n{question} ASSISTANT:"  # LLaVA-1.5's conversation template
# Qwen2-VL's chat template for one image and one question (the processor expands the image pad)
QWEN2VL_PROMPT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
QWEN2VL_SIDE = 448  # pixels: 16 x 16 merged tokens for Qwen2-VL's 14-pixel patches merged 2 x 2
FAMILIES = {"llava": "LLaVA", "qwen2_vl": "Qwen2-VL"}  # config.json model_type -> the family Blink drives


def hf_model_type(path: str | Path | None) -> str | None:
    """The ``model_type`` of a local Hugging Face folder's config.json (None: no such folder, e.g. one of
    mmgen's own model folders)."""
    if path is None or not (Path(path) / "config.json").is_file():
        return None
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def load_hf(path: str | Path, device=None, dtype: torch.dtype | None = None, image_side: int = QWEN2VL_SIDE):
    """A local LLaVA or Qwen2-VL folder, told apart by its config's model_type -> (decoder, processor);
    ``image_side``: the square size Qwen2-VL images are resized to (see :class:`Qwen2VLDecoder`)."""
    kind = hf_model_type(path)
    if kind == "llava":
        return load_llava(path, device, dtype)
    if kind == "qwen2_vl":
        return load_qwen2vl(path, device, dtype, image_side)
    raise ValueError(f"{path} holds a Hugging Face model of type {kind!r}; Blink drives "
                     + " and ".join(f"{name} (model_type {t!r})" for t, name in FAMILIES.items()) + " folders")


def _load_frozen(model_class, path: str | Path, device, dtype: torch.dtype | None, family: str):
    """(frozen model in eval mode on ``device``, processor) from a local folder; nothing is downloaded.
    dtype: float16 on CUDA, float32 otherwise."""
    from transformers import AutoProcessor

    device = torch.device(device or "cpu")
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    try:
        model = model_class.from_pretrained(str(path), local_files_only=True, use_safetensors=True, dtype=dtype)
        processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"cannot load the {family} folder {path} (it needs config.json, *.safetensors weights and "
                         f"the processor files): {str(e).splitlines()[0]}") from e
    model.requires_grad_(False)
    return model.to(device).eval(), processor


def load_llava(path: str | Path, device=None, dtype: torch.dtype | None = None):
    """A local LLaVA folder (safetensors weights + processor files; nothing is downloaded)
    -> (LlavaDecoder over the frozen model, processor).  dtype: float16 on CUDA, float32 otherwise."""
    from transformers import LlavaForConditionalGeneration

    model, processor = _load_frozen(LlavaForConditionalGeneration, path, device, dtype, "LLaVA")
    return LlavaDecoder(model), processor


def load_qwen2vl(path: str | Path, device=None, dtype: torch.dtype | None = None, image_side: int = QWEN2VL_SIDE):
    """A local Qwen2-VL folder -> (Qwen2VLDecoder for ``image_side`` x ``image_side`` images, processor)."""
    from transformers import Qwen2VLForConditionalGeneration

    model, processor = _load_frozen(Qwen2VLForConditionalGeneration, path, device, dtype, "Qwen2-VL")
    vc = model.config.vision_config
    cell = vc.patch_size * vc.spatial_merge_size
    if image_side % cell or image_side < cell:
        raise ValueError(f"--image-side {image_side} must be a multiple of this Qwen2-VL's merged token size ({cell} "
                         "pixels)")
    return Qwen2VLDecoder(model, (image_side // cell,) * 2), processor


def encode_prompts(processor, images, questions: list[str], template: str = LLAVA_PROMPT, device=None,
                   **processor_kwargs):
    """Images (uint8 [H, W, 3] arrays or PIL images) + questions -> (input_ids, attention_mask,
    pixel_values), right-padded (the layout :meth:`LlavaDecoder.prepare` needs)."""
    from PIL import Image

    pil = [im if isinstance(im, Image.Image) else Image.fromarray(im) for im in images]
    tok = getattr(processor, "tokenizer", None)
    if tok is not None:
        tok.padding_side = "right"
    enc = processor(text=[template.format(question=q) for q in questions], images=pil, padding=True,
                    return_tensors="pt", **processor_kwargs)
    return tuple(enc[k].to(device) if device is not None else enc[k]
                 for k in ("input_ids", "attention_mask", "pixel_values"))


def default_layers(num_layers: int) -> tuple[int, int]:
    """The paper's layers 12-18 of LLaVA-1.5-7B's 32, scaled to the model's depth."""
    return round(12 * num_layers / 32), max(round(18 * num_layers / 32), round(12 * num_layers / 32) + 1)


@dataclass
class LlavaState:
    """h [B, L, C]; pos Long [B, L] position ids; rope (cos, sin) [B, L, D]; mask additive [B, 1, L, L]
    or None (plain causal); prefix: tokens before the visual block; cells Long [B, n_extra] grid cells of
    the appended tokens; extra_active bool [B] or None; text_lengths Long [B] (real question tokens);
    cache: a transformers Cache (batch 1) or None."""

    h: torch.Tensor
    pos: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor] | None
    mask: torch.Tensor | None
    prefix: int
    n_visual: int
    n_extra: int
    cells: torch.Tensor | None
    extra_active: torch.Tensor | None
    text_lengths: torch.Tensor
    grid: tuple[int, int]
    cache: Any = None

    @property
    def text_start(self) -> int:
        return self.prefix + self.n_visual + self.n_extra

    @property
    def visual_h(self) -> torch.Tensor:
        return self.h[:, self.prefix:self.prefix + self.n_visual]

    @property
    def extra_h(self) -> torch.Tensor:
        return self.h[:, self.prefix + self.n_visual:self.text_start]

    @property
    def extra_pos(self) -> torch.Tensor:
        return self.cells

    def last_text_index(self) -> torch.Tensor:
        return self.text_start + self.text_lengths - 1


class LlavaDecoder:
    """A :class:`~mmgen.mllm.blink.BlinkDecoder` over a (frozen) ``LlavaForConditionalGeneration``."""

    def __init__(self, model, grid: tuple[int, int] | None = None):
        """grid: the visual token grid (gh, gw); default: the vision tower's image_size / patch_size."""
        self.model = model
        lm = model.model.language_model
        self.lm, self.layers, self.head = lm, lm.layers, model.lm_head
        self.num_layers = len(self.layers)
        self.text_config = model.config.text_config
        self.image_token_id = model.config.image_token_id
        attn = self.layers[0].self_attn
        # the layer's own rotary function (rotate-half for Llama/Mistral/Qwen2 language models)
        self._rope = importlib.import_module(type(attn).__module__).apply_rotary_pos_emb
        params = inspect.signature(self.layers[0].forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
        # sdpa / flash apply causality themselves when given no mask; eager needs it spelled out
        self._needs_mask = self.text_config._attn_implementation not in ("sdpa", "flash_attention_2")
        vc = model.config.vision_config
        self.grid = tuple(grid) if grid is not None else (vc.image_size // vc.patch_size,) * 2

    prompt = LLAVA_PROMPT

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def encode(self, processor, images, questions: list[str], device=None):
        """Images + questions in the family's prompt -> (input_ids, attention_mask, pixel_values)."""
        return encode_prompts(processor, images, questions, self.prompt, device)

    # ------------------------------------------------------------------ input
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The projected visual tokens [B, Nv, C] (the model's configured feature layer and strategy)."""
        out = self.model.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        return torch.stack(list(out.pooler_output))

    def prepare(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, visual: torch.Tensor | None = None,
                extra: torch.Tensor | None = None, extra_cells: torch.Tensor | None = None,
                cache=None) -> LlavaState:
        """Embed the prompt (one ``<image>`` block per sample, at the same index in every sample;
        right padding only).  ``visual`` [B, Nv, C] skips the vision tower; ``extra`` [B, Ne, C] at
        grid cells ``extra_cells`` [B, Ne] is appended after the visual block at the input."""
        is_img = input_ids == self.image_token_id
        counts = is_img.sum(1)
        if bool((counts == 0).any()) or bool((counts != counts[0]).any()):
            raise ValueError("every prompt needs exactly one <image> placeholder block of the same length")
        start = int(is_img.int().argmax(1)[0])
        nv = int(counts[0])
        if not bool(is_img[:, start:start + nv].all()):
            raise ValueError("the <image> placeholders must be one block at the same index in every prompt "
                             "(use right padding)")
        if attention_mask is not None and not bool(attention_mask[:, :start + nv].all()):
            raise ValueError("left padding is not supported: pad the prompts on the right")
        emb = self.lm.embed_tokens(input_ids)
        if visual is None:
            visual = self.image_features(pixel_values)
        if visual.shape[1] != nv:
            raise ValueError(f"the image gives {visual.shape[1]} tokens, the prompt has {nv} placeholders")
        if nv != self.grid[0] * self.grid[1]:
            raise ValueError(f"{nv} visual tokens do not form the vision tower's {self.grid[0]}x{self.grid[1]} grid "
                             "(LLaVA-1.5's 'default' feature strategy drops the CLS token)")
        B, L = input_ids.shape
        h = torch.cat([emb[:, :start], visual.to(emb.dtype), emb[:, start + nv:]], 1)
        pos = torch.arange(L, device=h.device).expand(B, L)
        lengths = (attention_mask[:, start + nv:].sum(1) if attention_mask is not None
                   else torch.full((B,), L - start - nv, device=h.device))
        state = LlavaState(h, pos, None, None, start, nv, 0, None, None, lengths.long(), self.grid, cache)
        if extra is not None:
            return self.set_extra(state, extra, extra_cells)
        return self._finish(state)

    def _finish(self, state: LlavaState) -> LlavaState:
        """Position ids, rotary table and mask for the current sequence."""
        B, L = state.h.shape[:2]
        device = state.h.device
        pos = self._position_ids(state)
        hidden = None
        if state.extra_active is not None and not bool(state.extra_active.all()):
            slot = torch.zeros(L, dtype=torch.bool, device=device)
            slot[state.prefix + state.n_visual:state.text_start] = True
            hidden = slot[None, :] & ~state.extra_active[:, None]  # [B, L]: slots nobody may read
        mask = None
        if hidden is not None or self._needs_mask:
            allowed = torch.ones(L, L, dtype=torch.bool, device=device).tril()[None].expand(B, L, L)
            if hidden is not None:  # a hidden slot still sees what precedes it, so its own row stays finite
                allowed = allowed & ~hidden[:, None, :]
            mask = torch.zeros(B, 1, L, L, dtype=state.h.dtype, device=device)
            mask.masked_fill_(~allowed[:, None], torch.finfo(state.h.dtype).min)
        return replace(state, pos=pos, rope=self.lm.rotary_emb(state.h, pos), mask=mask)

    def _position_ids(self, state: LlavaState) -> torch.Tensor:
        """LLaVA's 1-D position ids [B, L]: token t of the prompt without appended tokens at t; an appended
        token at its cell's position."""
        B, L = state.h.shape[:2]
        device = state.h.device
        base = torch.arange(state.prefix + state.n_visual, device=device)
        text = state.prefix + state.n_visual + torch.arange(L - state.text_start, device=device)
        parts = [base.expand(B, -1)]
        if state.n_extra:
            parts.append(state.prefix + state.cells)
        return torch.cat([*parts, text.expand(B, -1)], 1)

    # ------------------------------------------------------------------ BlinkDecoder
    def set_extra(self, state: LlavaState, extra: torch.Tensor | None, extra_pos: torch.Tensor | None,
                  extra_active: torch.Tensor | None = None) -> LlavaState:
        """Replace the appended block by ``extra`` [B, Ne, C] at grid cells ``extra_pos`` [B, Ne] (None removes it)."""
        if state.cache is not None and state.h.shape[0] != 1:
            raise ValueError("Blink with a cache (generation) runs one sample at a time")
        head, tail = state.h[:, :state.prefix + state.n_visual], state.h[:, state.text_start:]
        if extra is None:
            return self._finish(replace(state, h=torch.cat([head, tail], 1), n_extra=0, cells=None, extra_active=None))
        if extra_active is None:
            extra_active = torch.ones(state.h.shape[0], dtype=torch.bool, device=state.h.device)
        return self._finish(replace(state, h=torch.cat([head, extra.to(head.dtype), tail], 1),
                                    n_extra=extra.shape[1], cells=extra_pos.long(), extra_active=extra_active))

    def region_positions(self, r0: torch.Tensor, c0: torch.Tensor, size: int, factor: int) -> torch.Tensor:
        """Grid cells (row-major index in the visual block) of the (size*factor)^2 sub-cells of a region
        whose top-left cells are (r0, c0) [B]: each sub-cell sits at the cell it subdivides -> Long [B, n]."""
        n = size * factor
        y, x = torch.meshgrid(torch.arange(n, device=r0.device), torch.arange(n, device=r0.device), indexing="ij")
        rows = r0[:, None] + (y.reshape(-1) // factor)
        cols = c0[:, None] + (x.reshape(-1) // factor)
        return rows * self.grid[1] + cols

    def position_embedding(self, pos: torch.Tensor) -> float:
        return 0.0  # RoPE only

    def run_layer(self, i: int, state: LlavaState) -> LlavaState:
        kw = {self._cache_kw: state.cache, "use_cache": True} if state.cache is not None else {}
        out = self.layers[i](state.h, attention_mask=state.mask, position_ids=self._layer_positions(state.pos),
                             position_embeddings=state.rope, **kw)
        return replace(state, h=out[0] if isinstance(out, tuple) else out)

    def _layer_positions(self, pos: torch.Tensor) -> torch.Tensor | None:
        """The ``position_ids`` a decoder layer is called with (the rotary table is passed separately)."""
        return pos

    def query_keys(self, i: int, state: LlavaState, with_rope: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """-> q [B, H, D] of the last question token, k [B, H, Nv, D] of the visual tokens (layer i's input)."""
        layer = self.layers[i]
        attn = layer.self_attn
        B, nv = state.h.shape[0], state.n_visual
        ar = torch.arange(B, device=state.h.device)
        idx = state.last_text_index()
        D = attn.head_dim
        q = attn.q_proj(layer.input_layernorm(state.h[ar, idx][:, None])).view(B, 1, -1, D).transpose(1, 2)
        k = attn.k_proj(layer.input_layernorm(state.visual_h)).view(B, nv, -1, D).transpose(1, 2)
        if with_rope:
            cos, sin = state.rope
            vis = slice(state.prefix, state.prefix + nv)
            q = self._rope(q, q, cos[ar, idx][:, None], sin[ar, idx][:, None])[0]
            k = self._rope(k, k, cos[:, vis], sin[:, vis])[0]
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped K/V heads -> one per query head
        return q[:, :, 0], k

    def readout(self, state: LlavaState) -> torch.Tensor:
        """Next-token logits [B, V] at each sample's last prompt token."""
        ar = torch.arange(state.h.shape[0], device=state.h.device)
        return self.head(self.lm.norm(state.h[ar, state.last_text_index()])).float()

    def select(self, state: LlavaState, index: torch.Tensor) -> LlavaState:
        if state.cache is not None:
            raise ValueError("Blink with a cache (generation) runs one sample at a time")
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return self._finish(replace(state, h=state.h[index], cells=pick(state.cells),
                                    extra_active=pick(state.extra_active), text_lengths=state.text_lengths[index]))

    def merge(self, states: list[LlavaState]) -> LlavaState:
        first = states[0]
        if any(s.h.shape[1] != first.h.shape[1] or s.n_extra != first.n_extra for s in states):
            raise ValueError("merge needs states with the same sequence layout")
        cat = lambda ts: None if ts[0] is None else torch.cat(ts)  # noqa: E731
        return self._finish(replace(first, h=torch.cat([s.h for s in states]), cells=cat([s.cells for s in states]),
                                    extra_active=cat([s.extra_active for s in states]),
                                    text_lengths=torch.cat([s.text_lengths for s in states])))

    # ------------------------------------------------------------------ running
    def run(self, state: LlavaState, blink: Blink | None = None, trace=None) -> torch.Tensor:
        """All layers (with Blink's scan and edits when given) -> next-token logits [B, V]."""
        if blink is not None:
            return blink.run(self, state, trace)
        for i in range(self.num_layers):
            state = self.run_layer(i, state)
        return self.readout(state)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, max_new_tokens: int = 32,
                 blink: Blink | None = None, eos_token_id: int | None = None, trace=None) -> torch.Tensor:
        """Greedy answer tokens Long [1, n] for one prompt; Blink (if given) acts on the prompt pass."""
        from transformers import DynamicCache

        if input_ids.shape[0] != 1:
            raise ValueError("generate takes one prompt at a time")
        cache = DynamicCache(config=self.text_config)
        state = self.prepare(input_ids, pixel_values, cache=cache)
        logits = self.run(state, blink, trace)
        next_pos = int(state.pos[..., -1].max()) + 1  # question positions do not depend on appended tokens
        out = []
        for step in range(max_new_tokens):
            token = logits.argmax(-1, keepdim=True)  # [1, 1]
            out.append(token)
            if eos_token_id is not None and int(token) == eos_token_id or step == max_new_tokens - 1:
                break
            h = self.lm.embed_tokens(token)
            pos = torch.full((1, 1), next_pos + step, device=h.device)
            rope = self.lm.rotary_emb(h, pos)
            for layer in self.layers:  # one query row attends to everything its layer cached: no mask
                h = layer(h, attention_mask=None, position_ids=self._layer_positions(pos), position_embeddings=rope,
                          **{self._cache_kw: cache, "use_cache": True})
                h = h[0] if isinstance(h, tuple) else h
            logits = self.head(self.lm.norm(h[:, -1])).float()
        return torch.cat(out, 1)

    # ------------------------------------------------------------------ zoomed views
    def zoom_pixels(self, pixel_values: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor, size: int) -> torch.Tensor:
        """The pixels of region (r0, c0, size x size cells) [B] cropped and resized (bilinear) to the
        full input size (the processor's normalisation is per-channel affine, so cropping the
        normalised pixels equals normalising the crop)."""
        B, _, H, W = pixel_values.shape
        gh, gw = self.grid
        crops = []
        for b in range(B):
            y0, x0 = round(int(r0[b]) * H / gh), round(int(c0[b]) * W / gw)
            y1, x1 = round((int(r0[b]) + size) * H / gh), round((int(c0[b]) + size) * W / gw)
            crops.append(F.interpolate(pixel_values[b:b + 1, :, y0:y1, x0:x1].float(), size=(H, W),
                                       mode="bilinear", align_corners=False))
        return torch.cat(crops).to(pixel_values.dtype)

    def zoom_tokens(self, pixel_values, r0, c0, size: int, factor: int) -> torch.Tensor:
        """The zoomed region's visual tokens, area-pooled to the SR grid -> [B, (size*factor)^2, C]."""
        vis = self.image_features(self.zoom_pixels(pixel_values, r0, c0, size))
        return _pool_grid(vis, self.grid, size * factor)

    def hidden_at(self, state: LlavaState, layer: int) -> LlavaState:
        """The state at the input of ``layer`` (layers 0..layer-1 run)."""
        for i in range(layer):
            state = self.run_layer(i, state)
        return state


class Qwen2VLDecoder(LlavaDecoder):
    """A :class:`~mmgen.mllm.blink.BlinkDecoder` over a (frozen) ``Qwen2VLForConditionalGeneration``.

    The same loop as :class:`LlavaDecoder` (Qwen2-VL's decoder layers take the same arguments); what
    differs is the input and the positions.  Qwen2-VL reads images at their own resolution, but Blink
    tiles one grid per batch, so the decoder is made for one merged token grid ``grid`` (gh, gw):
    the processor must resize every image to (gh * m * patch) x (gw * m * patch) pixels (m = the
    vision tower's spatial merge, e.g. ``min_pixels = max_pixels`` = that area), and ``prepare``
    refuses another size.  ``pixel_values`` are the processor's flattened patches
    [B * (gh m) * (gw m), C * T * patch^2].

    Positions are M-RoPE's 3-D ids [3, B, L] (temporal, height, width), as ``get_rope_index`` builds
    them: prefix token t at (t, t, t); visual cell (r, c) at (P, P + r, P + c) with P = the prefix
    length; the question from P + max(gh, gw) on.  An appended SR token takes the 3-D position of the
    cell it subdivides, like :class:`LlavaDecoder`'s (integer ids, so it interleaves with nothing; the
    question's positions stay those of the prompt without appended tokens).
    """

    def __init__(self, model, grid: tuple[int, int]):
        super().__init__(model, grid)
        if "sliding_attention" in getattr(self.text_config, "layer_types", ()):
            raise ValueError("Qwen2VLDecoder drives full-attention layers only (this config has sliding-window layers)")
        vc = model.config.vision_config
        self.spatial_merge, self.patch, self.temporal = vc.spatial_merge_size, vc.patch_size, vc.temporal_patch_size

    prompt = QWEN2VL_PROMPT

    def encode(self, processor, images, questions: list[str], device=None):
        """Images resized to the decoder's pixel size (bicubic), then the processor at exactly that size."""
        from PIL import Image

        side = self.spatial_merge * self.patch
        h, w = self.grid[0] * side, self.grid[1] * side
        pil = [(im if isinstance(im, Image.Image) else Image.fromarray(im)).convert("RGB").resize((w, h), Image.BICUBIC)
               for im in images]
        return encode_prompts(processor, pil, questions, self.prompt, device,
                              size={"shortest_edge": h * w, "longest_edge": h * w})

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Flattened patches of B images of the decoder's size -> merged visual tokens [B, gh*gw, C]."""
        per_image = self.grid[0] * self.grid[1] * self.spatial_merge ** 2
        if pixel_values.ndim != 2 or pixel_values.shape[0] % per_image:
            raise ValueError(f"pixel_values {tuple(pixel_values.shape)} are not the patches of images giving the "
                             f"decoder's {self.grid[0]}x{self.grid[1]} token grid (resize the images to "
                             f"{self._pixels()} pixels)")
        thw = torch.tensor([[1, self.grid[0] * self.spatial_merge, self.grid[1] * self.spatial_merge]],
                           device=pixel_values.device).repeat(pixel_values.shape[0] // per_image, 1)
        out = self.model.model.get_image_features(pixel_values=pixel_values, image_grid_thw=thw, return_dict=True)
        return torch.stack(list(out.pooler_output))

    def _pixels(self) -> str:
        side = self.spatial_merge * self.patch
        return f"{self.grid[0] * side}x{self.grid[1] * side}"

    def _position_ids(self, state: LlavaState) -> torch.Tensor:
        B, L = state.h.shape[:2]
        device = state.h.device
        gh, gw = state.grid
        P = state.prefix
        prefix = torch.arange(P, device=device)[None].expand(3, -1)
        cells = torch.arange(gh * gw, device=device)

        def at(c: torch.Tensor) -> torch.Tensor:  # grid cells [..., n] -> 3-D ids [3, ..., n]
            return torch.stack([torch.full_like(c, P), P + c // gw, P + c % gw])

        text = (P + max(gh, gw) + torch.arange(L - state.text_start, device=device))[None].expand(3, -1)
        parts = [prefix[:, None].expand(3, B, -1), at(cells)[:, None].expand(3, B, -1)]
        if state.n_extra:
            parts.append(at(state.cells))
        return torch.cat([*parts, text[:, None].expand(3, B, -1)], 2)

    def _layer_positions(self, pos: torch.Tensor) -> None:
        return None  # Qwen2-VL's layers take 1-D text positions only for flash-attention's packing

    # ------------------------------------------------------------------ zoomed views
    def _unpatchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The processor's flattened patches -> images [B, C, H, W] (the first of the T repeated frames)."""
        m, p, T = self.spatial_merge, self.patch, self.temporal
        gh, gw = self.grid[0] * m, self.grid[1] * m
        x = pixel_values.reshape(-1, gh // m, gw // m, m, m, pixel_values.shape[1] // (T * p * p), T, p, p)
        # [B, h/m, w/m, m, m, C, T, p, p] -> [B, C, h/m, m, p, w/m, m, p] (frame 0)
        x = x[:, :, :, :, :, :, 0].permute(0, 5, 1, 3, 6, 2, 4, 7)
        return x.reshape(x.shape[0], x.shape[1], gh * p, gw * p)

    def _patchify(self, images: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_unpatchify` (the image repeated over the T frames, as the processor does)."""
        m, p, T = self.spatial_merge, self.patch, self.temporal
        B, C, H, W = images.shape
        x = images.reshape(B, C, H // (m * p), m, p, W // (m * p), m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x[:, :, :, :, :, :, None].expand(-1, -1, -1, -1, -1, -1, T, -1, -1)
        return x.reshape(-1, C * T * p * p)

    def zoom_pixels(self, pixel_values: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor, size: int) -> torch.Tensor:
        return self._patchify(super().zoom_pixels(self._unpatchify(pixel_values), r0, c0, size))


def _pool_grid(tokens: torch.Tensor, grid: tuple[int, int], n: int) -> torch.Tensor:
    """[B, gh*gw, C] -> area-pooled to an n x n grid [B, n*n, C]."""
    B, _, C = tokens.shape
    g = tokens.transpose(1, 2).reshape(B, C, *grid).float()
    return F.adaptive_avg_pool2d(g, n).flatten(2).transpose(1, 2).to(tokens.dtype)


def top_tiles(decoder: LlavaDecoder, state: LlavaState, layer: int, region: int) -> torch.Tensor:
    """The top-saliency tile [B] of ``state`` (the input of ``layer``), as Blink scores it."""
    q, k = decoder.query_keys(layer, state)
    return concentration(region_scores(saliency(q, k), state.grid, region))[1]


def tokensr_loss(decoder: LlavaDecoder, bank, layer: int, input_ids, pixel_values, region: int, factor: int,
                 attention_mask=None, tiles: torch.Tensor | None = None) -> torch.Tensor:
    """TokenSR's loss at one Blink layer: MSE between TokenSR's tokens for tiles [B] of the full view
    (default: the top-saliency tile, the one Blink would expand) and the frozen model's own hidden
    states of the zoomed tiles (pooled to the SR grid)."""
    with torch.no_grad():
        full = decoder.hidden_at(decoder.prepare(input_ids, pixel_values, attention_mask), layer)
        if tiles is None:
            tiles = top_tiles(decoder, full, layer, region)
        regions, r0, c0 = gather_region(full.visual_h, full.grid, region, tiles)
        zoom = decoder.prepare(input_ids, decoder.zoom_pixels(pixel_values, r0, c0, region), attention_mask)
        target = _pool_grid(decoder.hidden_at(zoom, layer).visual_h, full.grid, region * factor)
    sr, _ = super_resolve(decoder, bank[layer], regions.float(), r0, c0, factor)
    return F.mse_loss(sr.float(), target.float())


@torch.no_grad()
def vicrop(decoder: LlavaDecoder, input_ids, pixel_values, layer: int, region: int, factor: int,
           attention_mask=None) -> torch.Tensor:
    """ViCrop-style baseline: saliency at ``layer`` picks the top region; its zoomed crop's tokens
    are appended at the input and the prompt is run again -> logits [B, V]."""
    state = decoder.hidden_at(decoder.prepare(input_ids, pixel_values, attention_mask), layer)
    top = top_tiles(decoder, state, layer, region)
    per_row = state.grid[1] // region
    r0, c0 = (top // per_row) * region, (top % per_row) * region
    extra = decoder.zoom_tokens(pixel_values, r0, c0, region, factor)
    cells = decoder.region_positions(r0, c0, region, factor)
    return decoder.run(decoder.prepare(input_ids, pixel_values, attention_mask, extra=extra, extra_cells=cells))
