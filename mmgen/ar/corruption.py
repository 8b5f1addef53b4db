"""Cross-Frame Error Correction (VideoAR section 4): train on a corrupted history.

At inference the model conditions on its own (imperfect) samples; in training it would only see
perfect codes.  This module corrupts the teacher-forcing history so that the model learns to
continue — and correct — from errors:

* **Time-dependent bit flips** — every bit of frame t, scale k is flipped with probability
  p ~ U(p_min + delta*t, p_max + delta*t) (defaults 0, 0.25, 0.01), re-drawn per scale
  (and per sample).  ``time_dependent=False`` uses delta = 0.
* **Error inheritance** — frame t's first-scale ratio is drawn from U(p_prev, p_max + delta*t),
  p_prev being the ratio of frame t-1's last scale: errors never suddenly vanish at a frame
  boundary.  (``inherit=False``: the first scale is drawn like the others.)
* **Self-correction targets** — the flipped codes are what enters the running sum; the targets
  of later scales are re-quantised against that corrupted history through
  ``quantizer.residual_pass`` (Infinity's bitwise self-correction).  ``self_correct=False``
  keeps the clean targets and only corrupts the inputs.

For an index (VQ) quantizer a "flip" replaces the index by a uniformly random code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CorruptionConfig:
    enabled: bool = True
    p_min: float = 0.0
    p_max: float = 0.25
    delta: float = 0.01
    time_dependent: bool = True
    inherit: bool = True
    self_correct: bool = True

    def __post_init__(self):
        if not 0 <= self.p_min <= self.p_max <= 1:
            raise ValueError(f"corruption: need 0 <= p_min <= p_max <= 1, got p_min={self.p_min} p_max={self.p_max}")


def flip_ratios(cfg: CorruptionConfig, batch: int, frames: int, scales: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Per (sample, frame, scale) flip probability, float [B, t, K], drawn in decoding order."""
    delta = cfg.delta if cfg.time_dependent else 0.0
    p = torch.empty(batch, frames, scales)
    for t in range(frames):
        lo = torch.full((batch,), cfg.p_min + delta * t)
        hi = torch.full((batch,), cfg.p_max + delta * t)
        for k in range(scales):
            start = p[:, t - 1, -1] if (cfg.inherit and k == 0 and t > 0) else lo
            start = torch.minimum(start, hi)  # inherited ratio may exceed this frame's lower bound, never its top
            p[:, t, k] = start + (hi - start) * torch.rand(batch, generator=generator)
    return p.clamp(0.0, 1.0)


def _uniform(shape, device, generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the codes' device unless a (CPU) generator pins the stream for reproducibility.
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator).to(device)


def corrupt_codes(code: torch.Tensor, ratio: torch.Tensor, codebook_size: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Corrupt one scale's codes.  code: bits [B, t, h, w, d] in {-1, +1} or indices [B, t, h, w];
    ratio: [B, t] probability per (sample, frame)."""
    if code.is_floating_point():
        r = ratio[:, :, None, None, None].to(code.device)
        flip = _uniform(code.shape, code.device, generator) < r
        return torch.where(flip, -code, code)
    if codebook_size is None:
        raise ValueError("corrupt_codes: index codes need codebook_size")
    r = ratio[:, :, None, None].to(code.device)
    swap = _uniform(code.shape, code.device, generator) < r
    random = (_uniform(code.shape, code.device, generator) * codebook_size).long().clamp_(max=codebook_size - 1)
    return torch.where(swap, random, code)


@torch.no_grad()
def corrupted_history(quantizer, z: torch.Tensor, cfg: CorruptionConfig,
                      generator: torch.Generator | None = None):
    """Quantise latents z [B, d, t, h, w] with Cross-Frame Error Correction.

    Returns (targets, used): per-scale codes to predict, and the (corrupted) codes that form the
    model's teacher-forcing history (feed ``quantizer.next_scale_inputs(used)``).
    """
    codebook_size = getattr(quantizer, "codebook_size", None)
    if not cfg.enabled:
        targets, _ = quantizer.residual_pass(z)
        return targets, targets
    B, t = z.shape[0], z.shape[2]
    ratios = flip_ratios(cfg, B, t, len(quantizer.scales), generator)

    def corrupt(k, code):
        return corrupt_codes(code, ratios[:, :, k], codebook_size, generator)

    if cfg.self_correct:
        return quantizer.residual_pass(z, corrupt=corrupt)
    clean, _ = quantizer.residual_pass(z)
    return clean, [corrupt(k, c) for k, c in enumerate(clean)]
