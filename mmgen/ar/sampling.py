"""Group-by-group sampling of a VideoAR model (VideoAR section 7).

A video is decoded one *group* (all tokens of one scale of one latent frame) per
transformer step: ``1 + F*K`` forward calls for ``F`` latent frames of ``K`` scales (the
prefix is one call). For group (t, k) the model sees

* k = 0: the previous frame's full latent, down-sampled to scale 0 (zeros for frame 0);
* k > 0: the sum of frame t's scales so far, at full size, down-sampled to scale k,

which is exactly what ``quantizer.next_scale_inputs`` builds for teacher forcing.

Two interchangeable steppers produce the logits of one group, ``step(inputs, t, k, revealed=None)``,
and ``step.rewind(t, k)`` takes the last group back before a model with partial reveal runs it
again (``SamplerSettings.reveal_steps``):

* :func:`cached_stepper` — the fast path: the model's KV-cached decoding state, one forward
  over the new group only. The model owns the cache, the frame window and its eviction
  (:class:`~mmgen.ar.model.ARCache`); this module only drives the steps.
* :class:`RecomputeStepper` — the reference: the full teacher-forced forward over the
  whole sequence at every step (not-yet-generated groups are zeros; the group-causal mask
  makes them irrelevant). Parity tests compare the two sample for sample.

Classifier-free guidance runs conditional and unconditional rows in ONE batch of ``2B``
rows; the guided logits pick the bits, which then feed both halves.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mmgen.ar.guidance import GuidanceSchedule, TemperatureSchedule, apply_cfg, split_cfg_batch
from mmgen.ar.model import VideoAR

Generators = torch.Generator | Sequence[torch.Generator] | None


# --------------------------------------------------------------------------- bits
def _uniform(shape: tuple[int, ...], generator: Generators, device: torch.device) -> torch.Tensor:
    """Uniform draws in [0, 1); with one generator per row each row's draws do not depend
    on what else is in the batch, so a video is the same alone or in a batch of 8."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        rows = [torch.rand(shape[1:], generator=g, device=g.device) for g in generator]
        return torch.stack(rows).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def sample_bits(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0,
                generator: Generators = None) -> torch.Tensor:
    """Sample independent bits in {-1., +1.} from one logit per bit (``P(+1) = sigmoid``).

    Args:
        logits: ``[B, ...]`` bit logits (any trailing shape).
        temperature: divides the logits; ``0`` is greedy (``+1`` where ``logit >= 0``).
        top_p: nucleus sampling over a bit's two outcomes: when the likelier outcome alone
            holds ``>= top_p`` of the mass it is taken deterministically, so only uncertain
            bits are sampled. ``1`` disables it. (Top-k is not offered: with two outcomes
            per bit, k=1 is greedy = ``temperature=0`` and k=2 changes nothing.)
        generator: one ``torch.Generator``, one per row, or ``None`` (global RNG).

    Uniform draws are made for every bit whatever the settings, so the random stream — and
    therefore every later group — depends only on the seed and the shapes.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = logits.float()
    u = _uniform(tuple(logits.shape), generator, logits.device)
    greedy = logits >= 0
    if temperature == 0:
        bits = greedy
    else:
        p_one = torch.sigmoid(logits / temperature)
        bits = u < p_one
        if top_p < 1.0:
            confident = torch.maximum(p_one, 1.0 - p_one) >= top_p
            bits = torch.where(confident, greedy, bits)
    return bits.float() * 2.0 - 1.0


def sample_indices(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0,
                   generator: Generators = None) -> torch.Tensor:
    """Sample one code index per token from ``[B, ..., V]`` logits (index head, VQ tokenizer).

    ``temperature`` divides the logits (``0`` = argmax); ``top_p`` keeps the smallest set of most
    likely codes holding ``>= top_p`` of the mass. One uniform draw per token, inverted through
    the CDF, whatever the settings (so, as for bits, the random stream depends only on the seed
    and the shapes, and one generator per row keeps rows batch-independent).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = logits.float()
    u = _uniform(tuple(logits.shape[:-1]), generator, logits.device)
    if temperature == 0:
        return logits.argmax(-1)
    probs, order = torch.softmax(logits / temperature, dim=-1).sort(dim=-1, descending=True)
    if top_p < 1.0:
        before = probs.cumsum(-1) - probs  # mass of the likelier codes
        probs = probs.masked_fill(before >= top_p, 0.0)
    cdf = probs.cumsum(-1)
    pick = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1), right=True).clamp(max=cdf.shape[-1] - 1)
    return order.gather(-1, pick).squeeze(-1)


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SamplerSettings:
    """How to sample; every field is plain config (see :meth:`from_dict`).

    guidance: CFG schedule (:class:`GuidanceSchedule` or anything its ``parse`` takes).
    temperature: per-scale temperature (:class:`TemperatureSchedule` or its ``parse`` input).
    top_p: per-bit nucleus threshold (see :func:`sample_bits`).
    use_cache: KV-cached decoding (fast) or full recomputation per group (reference).
    window: frames of keys/values kept; ``None`` = the model's ``frame_window`` (all frames
        if the model has none). Must not exceed what the model was trained to see.
    reveal_steps: passes over each group of the model's ``reveal_scales`` (1 = one pass, as for
        every other group). After pass i of n, the first round(L * i / n) tokens by the probability
        of their drawn code are kept and shown to the next pass, which redraws the rest.
    """

    guidance: GuidanceSchedule = field(default_factory=GuidanceSchedule)
    temperature: TemperatureSchedule = field(default_factory=TemperatureSchedule)
    top_p: float = 1.0
    use_cache: bool = True
    window: int | None = None
    reveal_steps: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "guidance", GuidanceSchedule.parse(self.guidance))
        object.__setattr__(self, "temperature", TemperatureSchedule.parse(self.temperature))
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.window is not None and int(self.window) < 1:
            raise ValueError(f"window must be >= 1 or None, got {self.window}")
        if int(self.reveal_steps) < 1:
            raise ValueError(f"reveal_steps must be >= 1, got {self.reveal_steps}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "SamplerSettings":
        d = dict(d or {})
        unknown = sorted(set(d) - {"guidance", "temperature", "top_p", "use_cache", "window", "reveal_steps"})
        if unknown:
            raise ValueError(f"unknown sampler setting(s) {unknown}")
        return cls(**d)

    def to_dict(self) -> dict:
        return {"guidance": self.guidance.to_dict(), "temperature": self.temperature.to_dict(),
                "top_p": float(self.top_p), "use_cache": bool(self.use_cache), "window": self.window,
                "reveal_steps": int(self.reveal_steps)}


# --------------------------------------------------------------------------- steppers
def cached_stepper(model: VideoAR, cond_tokens: torch.Tensor, num_frames: int, window: int | None,
                   kv_dtype: torch.dtype | None = None) -> "CachedStepper":
    """The fast path: the model's own decoding state (KV cache, window, eviction; see
    :class:`~mmgen.ar.model.ARCache`), prefix fed once; each call runs one group."""
    cache = model.new_cache(cond_tokens.shape[0], num_frames, window, kv_dtype)
    model.prefill(cache, cond_tokens)
    return CachedStepper(model, cache)


class CachedStepper:
    """``step(inputs, t, k, revealed=None)`` -> logits of group (t, k) through the KV cache;
    ``rewind(t, k)`` takes the group back out before it is run again (partial reveal)."""

    def __init__(self, model: VideoAR, cache):
        self.model, self.cache = model, cache

    def __call__(self, inputs: torch.Tensor | None, t: int, k: int, revealed: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.forward_group(self.cache, inputs, t, k, revealed)

    def rewind(self, t: int, k: int) -> None:
        self.model.rewind_group(self.cache, t, k)


class RecomputeStepper:
    """Reference: the full teacher-forced forward over every group at each step."""

    def __init__(self, model: VideoAR, cond_tokens: torch.Tensor, num_frames: int, window: int | None = None):
        if window != model.config.frame_window:
            raise ValueError(f"the recompute reference decodes with the model's own frame window "
                             f"({model.config.frame_window}), not {window}")
        self.model, self.cond = model, cond_tokens
        rows, d = cond_tokens.shape[0], model.config.bits
        self.inputs = [torch.zeros(rows, num_frames, h, w, d, device=model.device) for h, w in model.scales]
        self.revealed = [torch.zeros_like(x) for x in self.inputs] if model.config.reveal_scales else None
        self.layout = model.layout(num_frames)

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, t: int, k: int, revealed: torch.Tensor | None = None) -> torch.Tensor:
        self.inputs[k][:, t] = inputs
        if revealed is not None:
            self.revealed[k][:, t] = revealed
        return self.model(self.cond, self.inputs, revealed=self.revealed)[:, self.layout.visual_slice(t, k)]

    def rewind(self, t: int, k: int) -> None:
        """Nothing to take back: every call recomputes the whole sequence."""


# --------------------------------------------------------------------------- decoding loop
FrameCallback = Callable[[int, list[torch.Tensor]], None]


def forward_steps(num_frames: int, num_scales: int) -> int:
    """Transformer calls per video: one for the prefix plus one per (frame, scale) group."""
    return 1 + num_frames * num_scales


@torch.no_grad()
def sample_codes(model: VideoAR, quantizer, cond, num_frames: int, settings: SamplerSettings | None = None,
                 generator: Generators = None, context: Sequence[torch.Tensor] | None = None,
                 context_scales: int = 0, on_frame: FrameCallback | None = None, keep_codes: bool = True,
                 progress: Callable[[int], None] | None = None,
                 kv_dtype: torch.dtype | None = None) -> list[torch.Tensor] | None:
    """Sample the codes of ``num_frames`` latent frames for a batch of conditions.

    Args:
        model: a :class:`VideoAR` with a bit head (bits, :func:`sample_bits`) or an index head
            (VQ code indices, :func:`sample_indices`).
        quantizer: the tokenizer's quantizer (bitwise or index): ``dequant_up`` / ``down_to``.
        cond: prompts or class ids (one per video), or prefix tokens Long [B, P].
        num_frames: latent frames to produce (context frames included).
        settings: :class:`SamplerSettings` (default: no CFG, temperature 1, cached).
        generator: one ``torch.Generator`` or one per video (reproducible per video).
        context: codes of the first ``t0`` latent frames (list[K] of [B, t0, h_k, w_k, d]) to
            continue from — teacher-forced, not sampled (video extension).
        context_scales: also teacher-force the first this many scales of the frame after the
            context (its coarse layout given, its details sampled); ``context[k]`` then holds
            ``t0 + 1`` frames for those scales.
        on_frame: called as ``on_frame(t, [codes of frame t per scale, each [B, 1, h_k, w_k, d]])``
            when frame t is complete (streaming).
        keep_codes: return all codes; ``False`` keeps nothing (streaming, bounded memory).
        progress: called with 1 after each transformer step.
        kv_dtype: storage dtype of the KV cache (default: the compute dtype; bf16 on GPU halves it).

    Returns:
        list[K] of ``{-1, +1}`` float codes ``[B, num_frames, h_k, w_k, d]`` (bit head) or long
        indices ``[B, num_frames, h_k, w_k]`` (index head), or ``None``.
    """
    settings = settings or SamplerSettings()
    bits_head = model.config.head == "bits"
    scales, K = model.scales, len(model.scales)
    if [tuple(s) for s in quantizer.scales] != scales:
        raise ValueError(f"quantizer scales {quantizer.scales} != model scales {scales}")
    window = model.decoding_window(settings.window)
    tokens = model.condition_tokens(cond)
    B = tokens.shape[0]
    use_cfg = not settings.guidance.is_disabled()
    rows = torch.cat([tokens, model.null_condition(B)]) if use_cfg else tokens
    context_frames = 0 if context is None else int(context[-1].shape[1])
    if context is not None:
        if len(context) != K or any(c.shape[0] != B for c in context):
            raise ValueError(f"context must be {K} code tensors with batch {B}")
        if context_frames + (context_scales > 0) > num_frames:
            raise ValueError(f"context has {context_frames} latent frames, more than the {num_frames} requested")
    if not 0 <= context_scales < K or (context_scales and context is None):
        raise ValueError(f"context_scales={context_scales}: expected 0..{K - 1}, and a context that holds them")
    if context_scales and any(c.shape[1] != context_frames + (k < context_scales) for k, c in enumerate(context)):
        raise ValueError(f"with context_scales={context_scales}, context[k] holds {context_frames + 1} frames for "
                         f"k < {context_scales} and {context_frames} for the rest")

    if settings.use_cache:
        step = cached_stepper(model, rows, num_frames, window, kv_dtype)
    else:
        step = RecomputeStepper(model, rows, num_frames, window)
    if progress:
        progress(1)

    d, (H, W) = quantizer.bits, scales[-1]
    device = model.device
    previous = torch.zeros(B, 1, d, H, W, device=device)  # full latent of frame t-1 ([B, t, d, h, w])
    codes: list[list[torch.Tensor]] = [[] for _ in range(K)]

    def draw(logits: torch.Tensor, t: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(code, guided logits) of group (t, k): bits [B, L, d] or indices [B, L]."""
        if use_cfg:
            logits = apply_cfg(*split_cfg_batch(logits, B), settings.guidance(t, k, num_frames, K))
        tau = settings.temperature(t, k, num_frames, K)
        sample = sample_bits if bits_head else sample_indices
        return sample(logits, tau, settings.top_p, generator), logits

    reveal = model.reveal_groups(settings.reveal_steps)
    for t in range(num_frames):
        f_hat = torch.zeros_like(previous)
        frame_codes = []
        for k in range(K):
            x = quantizer.down_to(previous if k == 0 else f_hat, k)[:, 0]  # [B, h_k, w_k, d]
            x = torch.cat([x, x]) if use_cfg else x
            h, w = scales[k]
            if t < context_frames or (t == context_frames and k < context_scales):
                step(x, t, k)
                code = context[k][:, t:t + 1].to(device)
                code = code.float() if bits_head else code.long()
            elif k in reveal:
                code = _draw_in_passes(step, x, t, k, draw, settings.reveal_steps, use_cfg).view(B, 1, h, w, d)
            else:
                code = draw(step(x, t, k), t, k)[0].view(B, 1, h, w, *([d] if bits_head else []))
            f_hat = f_hat + quantizer.dequant_up(code, k)
            frame_codes.append(code)
            if progress:
                progress(1)
        previous = f_hat
        if on_frame is not None:
            on_frame(t, frame_codes)
        if keep_codes:
            for k in range(K):
                codes[k].append(frame_codes[k])
    return [torch.cat(c, dim=1) for c in codes] if keep_codes else None


def _draw_in_passes(step, x: torch.Tensor, t: int, k: int, draw, passes: int, use_cfg: bool) -> torch.Tensor:
    """Bits [B, L, d] of group (t, k) drawn in ``passes`` passes (``SamplerSettings.reveal_steps``):
    each pass redraws the tokens not kept yet, seeing the kept ones' codes; after pass i the
    round(L * i / passes) tokens whose drawn code is likeliest (under the guided logits) are kept."""
    kept, code = None, None
    for i in range(passes):
        if i:
            step.rewind(t, k)
        revealed = None
        if kept is not None:
            shown = torch.where(kept.unsqueeze(-1), code, 0.0).view(code.shape[0], *x.shape[1:])
            revealed = torch.cat([shown, shown]) if use_cfg else shown  # cond and uncond rows alike
        drawn, guided = draw(step(x, t, k, revealed), t, k)
        code = drawn if kept is None else torch.where(kept.unsqueeze(-1), code, drawn)
        if i < passes - 1:
            score = torch.nn.functional.logsigmoid(guided * code).sum(-1)  # log P(drawn code) per token
            if kept is not None:
                score = score.masked_fill(kept, float("inf"))
            top = score.topk(round(code.shape[1] * (i + 1) / passes), dim=1).indices
            kept = torch.zeros_like(score, dtype=torch.bool).scatter(1, top, True)
    return code
