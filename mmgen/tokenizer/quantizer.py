"""Multi-scale residual quantizers applied per latent frame.

Each latent frame of ``z [B, d, t, h, w]`` gets its own 2D multi-scale residual pass over a
scale schedule ``[(h_1, w_1), ..., (h_K, w_K) = (h, w)]``, coarse to fine:

    r_k      = down(z - f_hat, (h_k, w_k))          # area down-sampling
    code_k   = quantise(r_k)
    f_hat   += up(dequant(code_k), (h, w))          # bilinear up-sampling (configurable)

Two quantisers share this loop and its public API:

* :class:`BitwiseResidualQuantizer` (default, Infinity/BSQ-like): every token of every scale is
  ``d`` bits; ``codes[k]`` is a ``{-1., +1.}`` tensor ``[B, t, h_k, w_k, d]``.
* :class:`IndexResidualQuantizer` (VAR-like): a shared codebook plus residual refinement convs;
  ``codes[k]`` is a long tensor of indices ``[B, t, h_k, w_k]``.

Layouts: latents handed in and out are ``[B, d, t, h, w]``; codes and per-scale features are
channels-last ``[B, t, h_k, w_k, d]`` (what a transformer consumes); full-size per-frame
contributions (``dequant_up``) are ``[B, t, d, h, w]``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

ScaleSpec = int | tuple[int, int] | Sequence[int]


@dataclass
class QuantizerOutput:
    """Result of :meth:`quantize`.

    ``z_q`` is the quantised latent ``[B, d, t, h, w]`` with a straight-through gradient to the
    (normalised) input; ``codes`` one entry per scale; ``losses`` scalar tensors (``commitment``,
    ``entropy`` for the bitwise quantiser, ``codebook`` for the index quantiser).
    """

    z_q: Tensor
    codes: list[Tensor]
    losses: dict[str, Tensor] = field(default_factory=dict)


def as_scale_pairs(scales: Sequence[ScaleSpec]) -> list[tuple[int, int]]:
    """Normalise a schedule given as ints (square) or (h, w) pairs; must be non-decreasing."""
    pairs: list[tuple[int, int]] = []
    for s in scales:
        if isinstance(s, int):
            pair = (s, s)
        else:
            pair = tuple(int(v) for v in s)
            if len(pair) != 2:
                raise ValueError(f"scale {s!r}: expected an int or an (h, w) pair")
        if min(pair) < 1:
            raise ValueError(f"scale {s!r}: sizes must be >= 1")
        if pairs and (pair[0] < pairs[-1][0] or pair[1] < pairs[-1][1]):
            raise ValueError(f"scale schedule {list(scales)!r} must be non-decreasing (coarse -> fine)")
        pairs.append(pair)  # type: ignore[arg-type]
    if not pairs:
        raise ValueError("scale schedule is empty")
    return pairs


def _frames(z: Tensor) -> Tensor:
    """[B, d, t, h, w] -> [B*t, d, h, w]: every latent frame is quantised on its own."""
    b, d, t, h, w = z.shape
    return z.permute(0, 2, 1, 3, 4).reshape(b * t, d, h, w)


def _unframes(x: Tensor, b: int) -> Tensor:
    """[B*t, d, h, w] -> [B, d, t, h, w]."""
    n, d, h, w = x.shape
    return x.reshape(b, n // b, d, h, w).permute(0, 2, 1, 3, 4)


def _to_codes_layout(x: Tensor, b: int) -> Tensor:
    """[B*t, C, h, w] -> [B, t, h, w, C]."""
    n, c, h, w = x.shape
    return x.reshape(b, n // b, c, h, w).permute(0, 1, 3, 4, 2)


class _MultiScaleResidualQuantizer(nn.Module):
    """The residual loop and the code <-> feature plumbing shared by both quantisers.

    Subclasses define how one scale's residual becomes a code (``_encode_scale``) and what a
    code contributes back (``_dequant``, at the scale's own size, and ``_refine``, applied
    after up-sampling to the full latent size).
    """

    def __init__(self, dim: int, scales: Sequence[ScaleSpec], up_mode: str = "bilinear"):
        super().__init__()
        if up_mode not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"up_mode={up_mode!r}: expected 'bilinear', 'bicubic' or 'nearest'")
        self.dim = int(dim)
        self.scales: list[tuple[int, int]] = as_scale_pairs(scales)
        self.up_mode = up_mode

    # ----------------------------------------------------------------- resampling helpers
    @property
    def latent_size(self) -> tuple[int, int]:
        return self.scales[-1]

    @property
    def num_scales(self) -> int:
        return len(self.scales)

    def _down(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode="area")

    def _up(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        if self.up_mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=self.up_mode, align_corners=False)

    def _check_latent(self, z: Tensor, what: str = "z") -> None:
        if z.dim() != 5:
            raise ValueError(f"{what}: expected a latent [B, d, t, h, w], got shape {tuple(z.shape)}")
        if z.shape[1] != self.dim:
            raise ValueError(f"{what}: latent has {z.shape[1]} channels, the quantizer expects d={self.dim}")
        if tuple(z.shape[-2:]) != self.latent_size:
            raise ValueError(
                f"{what}: latent spatial size {tuple(z.shape[-2:])} does not match the last scale "
                f"{self.latent_size} of the schedule {self.scales}"
            )

    # ----------------------------------------------------------------- subclass hooks
    def _normalize(self, zf: Tensor) -> Tensor:
        return zf

    def _encode_scale(self, r_k: Tensor, k: int) -> Tensor:
        """Residual [N, d, h_k, w_k] -> code in frame layout (bits [N,d,h_k,w_k] or ids [N,h_k,w_k])."""
        raise NotImplementedError

    def _dequant(self, code: Tensor, k: int) -> Tensor:
        """Code in frame layout -> feature [N, d, h_k, w_k]."""
        raise NotImplementedError

    def _refine(self, x: Tensor, k: int) -> Tensor:
        """Hook applied to the up-sampled contribution [N, d, h, w] (VAR's phi convs)."""
        return x

    def _code_to_frames(self, code: Tensor) -> Tensor:
        raise NotImplementedError

    def _code_from_frames(self, code: Tensor, b: int) -> Tensor:
        raise NotImplementedError

    def _contribution(self, code_frames: Tensor, k: int) -> Tensor:
        return self._refine(self._up(self._dequant(code_frames, k), self.latent_size), k)

    # ----------------------------------------------------------------- public API
    def codes_to_latent(self, codes: Sequence[Tensor]) -> Tensor:
        """Per-scale codes (all K scales, or a coarse prefix) -> latent z_q [B, d, t, h, w]."""
        if not 1 <= len(codes) <= self.num_scales:
            raise ValueError(f"expected 1..{self.num_scales} code tensors, got {len(codes)}")
        b = codes[0].shape[0]
        f_hat = None
        for k, code in enumerate(codes):
            c = self._contribution(self._code_to_frames(code), k)
            f_hat = c if f_hat is None else f_hat + c
        return _unframes(f_hat, b)

    def dequant_up(self, code_k: Tensor, k: int) -> Tensor:
        """One scale's code [B, t, h_k, w_k(, d)] -> its full-size contribution [B, t, d, h, w]."""
        b, t = code_k.shape[:2]
        c = self._contribution(self._code_to_frames(code_k), k)
        return c.reshape(b, t, *c.shape[1:])

    def down_to(self, f: Tensor, k: int) -> Tensor:
        """Full-size per-frame features ``[B, t, d, h, w]`` -> scale k's input ``[B, t, h_k, w_k, d]``."""
        if f.dim() != 5 or f.shape[2] != self.dim:
            raise ValueError(f"down_to expects [B, t, d={self.dim}, h, w], got {tuple(f.shape)}")
        b, t = f.shape[:2]
        x = self._down(f.reshape(b * t, *f.shape[2:]), self.scales[k])
        return _to_codes_layout(x, b)

    def next_scale_inputs(self, codes: Sequence[Tensor]) -> list[Tensor]:
        """Teacher-forcing inputs of the AR model, one ``[B, t, h_k, w_k, d]`` tensor per scale.

        Entry k > 0: the frame's own coarser scales, summed at full size, down-sampled to scale k.
        Entry 0: the previous frame's complete f_hat down-sampled to scale 0 (zeros for frame 0).
        """
        if len(codes) != self.num_scales:
            raise ValueError(f"expected {self.num_scales} code tensors, got {len(codes)}")
        b, t = codes[0].shape[:2]
        f_hat: Tensor | None = None
        inputs: list[Tensor] = []
        for k, code in enumerate(codes):
            if k > 0:
                inputs.append(_to_codes_layout(self._down(f_hat, self.scales[k]), b))
            c = self._contribution(self._code_to_frames(code), k)
            f_hat = c if f_hat is None else f_hat + c
        full = f_hat.reshape(b, t, *f_hat.shape[1:])
        previous = torch.cat([torch.zeros_like(full[:, :1]), full[:, :-1]], dim=1)
        inputs.insert(0, self.down_to(previous, 0))
        return inputs

    @torch.no_grad()
    def residual_pass(
        self, z: Tensor, corrupt: Callable[[int, Tensor], Tensor] | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Re-quantise ``z`` while (optionally) corrupting the codes that enter the running sum.

        For scale k: ``targets[k]`` quantises the residual against the history actually used so
        far; ``used[k] = corrupt(k, targets[k])`` (or ``targets[k]``) is what gets accumulated.
        This is bitwise self-correction: later targets correct earlier corrupted codes.
        """
        self._check_latent(z)
        b = z.shape[0]
        zf = self._normalize(_frames(z))
        f_hat = torch.zeros_like(zf)
        targets: list[Tensor] = []
        used: list[Tensor] = []
        for k, size in enumerate(self.scales):
            code = self._encode_scale(self._down(zf - f_hat, size), k)
            target = self._code_from_frames(code, b)
            applied = corrupt(k, target) if corrupt is not None else target
            targets.append(target)
            used.append(applied)
            f_hat = f_hat + self._contribution(self._code_to_frames(applied), k)
        return targets, used


class BitwiseResidualQuantizer(_MultiScaleResidualQuantizer):
    """Infinity/BSQ-style bitwise multi-scale residual quantiser.

    * Each latent token is L2-normalised over its ``d`` channels and multiplied by ``sqrt(d)``
      (RMS 1 per channel: BSQ's sphere, rescaled so features are O(1) for the transformer).
    * A scale's residual is sign-quantised: ``d`` bits per token, implicit vocabulary ``2^d``.
    * Code magnitude: bit ``b`` of scale k dequantises to ``b * m_k``. Infinity gives every
      scale a unit-norm code, so the residual does not shrink as scales are added. Here ``m_k``
      is the least-squares optimal step for the data (``m_k = <R, up(b)> / <up(b), up(b)>`` with
      R the full-size residual), tracked as an EMA in training mode (buffer ``magnitudes``).
      With a step at its least-squares value each scale can only lower the squared error, so
      adding scales monotonically lowers reconstruction error on the calibration distribution.
      Before any calibration the steps are ``0.8 * 0.5**k`` (about the optimum for smooth
      latents at the coarse scale).
    * Entropy penalty (Infinity): per-sample entropy minus codebook entropy, factorised per bit
      (each bit's soft assignment ``sigmoid(4 * beta * u_i / d)``, the softmax over the two
      codes ``+-1/sqrt(d)`` of the unit-sphere direction ``u / sqrt(d)`` at inverse temperature
      ``beta``), averaged over bits and scales.
    * Commitment: ``mean((z_norm - sg(z_q))^2)``; straight-through estimator for z_q.
    * ``normalize=False`` skips the L2 normalisation (the steps ``m_k`` then follow the latent's
      own scale, and the commitment is divided by ``mean(z^2)`` so it cannot be lowered by
      shrinking z). Why it exists: after normalisation two latents that differ only in length
      decode identically, so an encoder that starts out encoding, e.g., colour intensity in the
      length of z loses it, and the gradient that would turn it into a direction is weak.
    """

    def __init__(
        self,
        bits: int,
        scales: Sequence[ScaleSpec],
        up_mode: str = "bilinear",
        entropy_inv_temperature: float = 100.0,
        magnitude_momentum: float = 0.99,
        normalize: bool = True,
    ):
        super().__init__(bits, scales, up_mode)
        self.entropy_inv_temperature = float(entropy_inv_temperature)
        self.magnitude_momentum = float(magnitude_momentum)
        self.normalize = bool(normalize)
        init = torch.tensor([0.8 * 0.5**k for k in range(self.num_scales)])
        self.register_buffer("magnitudes", init)
        self.register_buffer("calibrated", torch.zeros(self.num_scales, dtype=torch.bool))

    @property
    def bits(self) -> int:
        return self.dim

    # ----------------------------------------------------------------- hooks
    def _normalize(self, zf: Tensor) -> Tensor:
        if not self.normalize:
            return zf
        return F.normalize(zf, dim=1, eps=1e-6) * math.sqrt(self.dim)

    def _encode_scale(self, r_k: Tensor, k: int) -> Tensor:
        return torch.where(r_k >= 0, 1.0, -1.0).to(r_k.dtype)

    def _dequant(self, code: Tensor, k: int) -> Tensor:
        return code * self.magnitudes[k].to(code.dtype)

    def _code_to_frames(self, code: Tensor) -> Tensor:
        if code.dim() != 5 or code.shape[-1] != self.dim:
            raise ValueError(f"bit codes must be [B, t, h_k, w_k, d={self.dim}], got {tuple(code.shape)}")
        b, t, h, w, d = code.shape
        return code.permute(0, 1, 4, 2, 3).reshape(b * t, d, h, w)

    def _code_from_frames(self, code: Tensor, b: int) -> Tensor:
        return _to_codes_layout(code, b)

    # ----------------------------------------------------------------- magnitude calibration
    @torch.no_grad()
    def _update_magnitude(self, residual: Tensor, bits_k: Tensor, k: int) -> None:
        u = self._up(bits_k, self.latent_size).float()
        stats = torch.stack([(residual.float() * u).sum(), (u * u).sum()])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        optimum = (stats[0] / stats[1].clamp_min(1e-12)).clamp_min(1e-6)
        if bool(self.calibrated[k]):
            m = self.magnitude_momentum
            self.magnitudes[k] = m * self.magnitudes[k] + (1 - m) * optimum
        else:
            self.magnitudes[k] = optimum
            self.calibrated[k] = True

    @torch.no_grad()
    def calibrate(self, z: Tensor) -> None:
        """Set every step ``m_k`` to its exact least-squares value for the latents ``z``."""
        self.calibrated.zero_()
        self._run(z, calibrate=True)

    # ----------------------------------------------------------------- forward
    def _entropy_penalty(self, r_k: Tensor) -> Tensor:
        u = F.normalize(r_k.float(), dim=1, eps=1e-6) * math.sqrt(self.dim)
        p = torch.sigmoid(4.0 * self.entropy_inv_temperature * u / self.dim)  # [N, d, h, w]
        p = p.permute(0, 2, 3, 1).reshape(-1, self.dim)
        per_sample = _binary_entropy(p).mean()
        codebook = _binary_entropy(p.mean(dim=0)).mean()
        return per_sample - codebook

    def _run(self, z: Tensor, calibrate: bool) -> QuantizerOutput:
        self._check_latent(z)
        b = z.shape[0]
        zf = self._normalize(_frames(z))
        f_hat = torch.zeros_like(zf)
        codes: list[Tensor] = []
        entropy = zf.new_zeros((), dtype=torch.float32)
        for k, size in enumerate(self.scales):
            r_k = self._down(zf - f_hat, size)
            bits_k = self._encode_scale(r_k, k).detach()
            if calibrate:
                self._update_magnitude(zf.detach() - f_hat, bits_k, k)
            if self.entropy_inv_temperature > 0 and torch.is_grad_enabled():
                entropy = entropy + self._entropy_penalty(r_k)
            f_hat = f_hat + self._contribution(bits_k, k)
            codes.append(self._code_from_frames(bits_k, b))
        f_hat = f_hat.detach()
        commitment = F.mse_loss(zf.float(), f_hat.float())
        if not self.normalize:
            # Relative to the latent's power: otherwise shrinking z would lower it for free.
            commitment = commitment / zf.detach().float().pow(2).mean().clamp_min(1e-6)
        losses = {"commitment": commitment, "entropy": entropy / self.num_scales}
        z_q = zf + (f_hat - zf).detach()  # straight-through
        return QuantizerOutput(_unframes(z_q, b), codes, losses)

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise ``z [B, d, t, h, w]``; in training mode also track the code magnitudes."""
        return self._run(z, calibrate=self.training)

    quantize = forward


def _binary_entropy(p: Tensor) -> Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


class _Phi(nn.Module):
    """VAR's residual refinement: x <- (1 - ratio) * x + ratio * conv3x3(x)."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.ratio = ratio

    def forward(self, x: Tensor) -> Tensor:
        return x.mul(1 - self.ratio) + self.conv(x).mul(self.ratio)


class IndexResidualQuantizer(_MultiScaleResidualQuantizer):
    """VAR-style multi-scale residual VQ: one shared codebook, ``num_refiners`` phi convs.

    Scale k uses phi number ``round(k / (K - 1) * (num_refiners - 1))`` (VAR shares a few
    refinement convs along the schedule). Codes are long indices ``[B, t, h_k, w_k]``;
    ``next_scale_inputs`` still returns ``d``-dim features. Losses: VQ codebook and
    commitment (weighted by ``beta``) at every scale, averaged, as in VAR.
    """

    def __init__(
        self,
        dim: int,
        scales: Sequence[ScaleSpec],
        codebook_size: int = 4096,
        num_refiners: int = 4,
        refine_ratio: float = 0.5,
        beta: float = 0.25,
        up_mode: str = "bicubic",
    ):
        super().__init__(dim, scales, up_mode)
        self.codebook_size = int(codebook_size)
        self.beta = float(beta)
        self.codebook = nn.Embedding(self.codebook_size, self.dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / self.codebook_size, 1.0 / self.codebook_size)
        self.refiners = nn.ModuleList(_Phi(self.dim, refine_ratio) for _ in range(max(1, num_refiners)))

    def _refiner_index(self, k: int) -> int:
        n = len(self.refiners)
        if self.num_scales == 1:
            return 0
        return round(k / (self.num_scales - 1) * (n - 1))

    def _encode_scale(self, r_k: Tensor, k: int) -> Tensor:
        flat = r_k.permute(0, 2, 3, 1).reshape(-1, self.dim).float()
        e = self.codebook.weight.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]
        n, _, h, w = r_k.shape
        return dist.argmin(dim=1).reshape(n, h, w)

    def _dequant(self, code: Tensor, k: int) -> Tensor:
        return self.codebook(code).permute(0, 3, 1, 2)

    def _refine(self, x: Tensor, k: int) -> Tensor:
        return self.refiners[self._refiner_index(k)](x)

    def _code_to_frames(self, code: Tensor) -> Tensor:
        if code.dim() != 4 or code.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"index codes must be integer [B, t, h_k, w_k], got {tuple(code.shape)} {code.dtype}")
        b, t, h, w = code.shape
        return code.reshape(b * t, h, w).long()

    def _code_from_frames(self, code: Tensor, b: int) -> Tensor:
        n, h, w = code.shape
        return code.reshape(b, n // b, h, w)

    def forward(self, z: Tensor) -> QuantizerOutput:
        self._check_latent(z)
        b = z.shape[0]
        zf = _frames(z)
        f_hat = torch.zeros_like(zf)
        codes: list[Tensor] = []
        commitment = zf.new_zeros((), dtype=torch.float32)
        codebook = zf.new_zeros((), dtype=torch.float32)
        for k, size in enumerate(self.scales):
            idx = self._encode_scale(self._down(zf.detach() - f_hat.detach(), size), k)
            f_hat = f_hat + self._contribution(idx, k)
            codes.append(self._code_from_frames(idx, b))
            # VAR: codebook/phi pulled towards z, encoder pulled towards the running sum.
            codebook = codebook + F.mse_loss(f_hat.float(), zf.detach().float())
            commitment = commitment + F.mse_loss(zf.float(), f_hat.detach().float())
        losses = {"codebook": codebook / self.num_scales, "commitment": self.beta * commitment / self.num_scales}
        z_q = zf + (f_hat - zf).detach()
        return QuantizerOutput(_unframes(z_q, b), codes, losses)

    quantize = forward

    @property
    def bits(self) -> int:
        """Feature width of the codes' dequantised features (the AR input width)."""
        return self.dim
