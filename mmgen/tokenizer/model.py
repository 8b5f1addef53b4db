"""VideoTokenizer: causal 3D autoencoder + multi-scale residual quantizer (VideoAR section 1).

``VideoTokenizer()`` is the tiny default: 64x64 clips of 17 frames -> 5 latent frames of 8x8
(8x spatial: a 2x pixel-unshuffle stem and two stride-2 levels; 4x temporal), 32 bits per
token, scales 1, 2, 4, 8 per latent frame, about 0.7M parameters. Its residual blocks are
frame-wise (``time_kernel=1``) and time is mixed by the causal 3D convs of the resampling steps,
with DC-AE-style shortcuts (``shortcuts=True``): on 2 CPU cores this learns MovingShapes
several times faster than the all-3D layout without shortcuts (which the VideoAR-like configs
under ``configs/tokenizer/`` keep: ``time_kernel: 3``, ``shortcuts: false``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mmgen.nn.pretrained import PretrainedModel, register_to_config
from mmgen.tokenizer.autoencoder import Decoder3d, Encoder3d
from mmgen.tokenizer.layers import Norm, StreamState
from mmgen.tokenizer.quantizer import (
    BitwiseResidualQuantizer,
    IndexResidualQuantizer,
    QuantizerOutput,
    as_scale_pairs,
)

QUANTIZERS = ("bitwise", "index")


class VideoTokenizer(PretrainedModel):
    """Encode ``x [B, 3, 1 + s_t*k, H, W]`` in ``[-1, 1]`` to ``z [B, d, 1 + k, H/s, W/s]`` and back.

    Args (the saved config):
        in_channels: image channels (3).
        norm_type, norm_groups: "group" (per-frame GroupNorm with ``norm_groups`` groups; 0:
            none), "channel" (per-pixel LayerNorm over channels) or "none". The tiny default
            uses one group (a per-frame LayerNorm): with few channels and sparse frames (a small
            object on black), narrow groups normalise an object's response to the same value
            whatever its colour, which slows learning colour down markedly.
        shortcuts: DC-AE's parameter-free residual paths around every resampling step and the
            latent projection (see ``autoencoder``); needs the widest width divisible by
            ``latent_dim`` and ``4 * out`` divisible by ``in`` at every up-sampling.
        base_channels, channel_mult, num_res_blocks, mid_attention: autoencoder
            width/depth (VAR layout); ``decoder_res_blocks`` (default num_res_blocks + 1);
            ``patch_size``: pixel-unshuffle stem. Spatial compression is
            ``patch_size * 2 ** (len(channel_mult) - 1)``.
        temporal_downsample: per down-sampling step, whether it also halves time; temporal
            compression is ``2 ** sum(temporal_downsample)`` (all False: an image tokenizer).
        time_kernel: temporal size of every causal conv kernel (1 makes it frame-wise).
        latent_dim: d (bits per token for the bitwise quantizer).
        scales: per-frame scale schedule, ints (square) or (h, w); the last must equal the
            latent size at ``sample_size``.
        quantizer_type: "bitwise" (BSQ-like, default) or "index" (VAR-like VQ: ``codebook_size``,
            ``num_refiners``).
        entropy_inv_temperature, up_mode, magnitude_momentum: see ``BitwiseResidualQuantizer``.
        normalize_latent: BSQ's per-token L2 normalisation (times sqrt(d)) before quantising.
        sample_size, num_frames: the clip size the model was configured/trained for.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 16,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        temporal_downsample: Sequence[bool] = (True, True),
        time_kernel: int = 1,
        patch_size: int = 2,
        decoder_res_blocks: int | None = None,
        norm_groups: int = 1,
        norm_type: str = "group",
        shortcuts: bool = True,
        mid_attention: bool = False,
        latent_dim: int = 32,
        scales: Sequence[Any] = (1, 2, 4, 8),
        quantizer_type: str = "bitwise",
        codebook_size: int = 4096,
        num_refiners: int = 4,
        entropy_inv_temperature: float = 100.0,
        magnitude_momentum: float = 0.99,
        normalize_latent: bool = True,
        up_mode: str = "bilinear",
        sample_size: int = 64,
        num_frames: int = 17,
    ):
        super().__init__()
        if len(temporal_downsample) != len(channel_mult) - 1:
            raise ValueError(
                f"temporal_downsample has {len(temporal_downsample)} entries; it needs one per "
                f"down-sampling step, i.e. len(channel_mult) - 1 = {len(channel_mult) - 1}"
            )
        if quantizer_type not in QUANTIZERS:
            raise ValueError(f"quantizer_type={quantizer_type!r}: expected one of {QUANTIZERS}")
        latent_hw = sample_size // self.spatial_compression
        pairs = as_scale_pairs(scales)
        if pairs[-1] != (latent_hw, latent_hw):
            raise ValueError(
                f"scales {list(scales)!r} must end at the latent size {latent_hw}x{latent_hw} "
                f"(sample_size {sample_size} / spatial compression {self.spatial_compression})"
            )
        arch = dict(
            base_channels=base_channels,
            channel_mult=list(channel_mult),
            num_res_blocks=num_res_blocks,
            temporal_downsample=[bool(v) for v in temporal_downsample],
            norm=Norm(norm_type, norm_groups),
            mid_attention=mid_attention,
            time_kernel=time_kernel,
            patch_size=patch_size,
            shortcuts=shortcuts,
        )
        self.encoder = Encoder3d(in_channels, latent_dim, **arch)
        self.decoder = Decoder3d(in_channels, latent_dim, decoder_res_blocks=decoder_res_blocks, **arch)
        if quantizer_type == "bitwise":
            self.quantizer = BitwiseResidualQuantizer(
                latent_dim, pairs, up_mode, entropy_inv_temperature, magnitude_momentum, normalize_latent
            )
        else:
            self.quantizer = IndexResidualQuantizer(latent_dim, pairs, codebook_size, num_refiners)

    # ------------------------------------------------------------------ geometry
    @property
    def spatial_compression(self) -> int:
        return self.config.patch_size * 2 ** (len(self.config.channel_mult) - 1)

    @property
    def temporal_compression(self) -> int:
        return 2 ** sum(bool(v) for v in self.config.temporal_downsample)

    def latent_frames(self, num_frames: int) -> int:
        self._check_frames(num_frames)
        return 1 + (num_frames - 1) // self.temporal_compression

    def _check_frames(self, num_frames: int) -> None:
        s = self.temporal_compression
        if num_frames < 1 or (num_frames - 1) % s:
            raise ValueError(
                f"got {num_frames} frames; this tokenizer needs 1 + {s}k frames "
                f"(e.g. {1 + s * max(1, (num_frames - 1) // s)}): the first frame has its own latent"
            )

    def _check_video(self, x: Tensor) -> None:
        c = self.config.in_channels
        if x.dim() != 5 or x.shape[1] != c:
            raise ValueError(
                f"expected a video [B, {c}, T, H, W], got shape {tuple(x.shape)}"
                + (" (channels last? use [B, C, T, H, W])" if x.dim() == 5 and x.shape[-1] == c else "")
            )
        if not torch.is_floating_point(x):
            raise ValueError(f"expected a float video in [-1, 1], got dtype {x.dtype} (uint8? use x / 127.5 - 1)")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1.001 or hi > 1.001 or lo != lo or hi != hi:
            raise ValueError(f"video values must lie in [-1, 1], got min {lo:.3g} max {hi:.3g}")
        self._check_frames(x.shape[2])
        s = self.spatial_compression
        if x.shape[3] % s or x.shape[4] % s:
            raise ValueError(f"frame size {tuple(x.shape[3:])} must be divisible by the spatial compression {s}")

    def _chunks(self, n: int, chunk_frames: int, first_extra: int) -> list[tuple[int, int]]:
        bounds, start = [], 0
        end = min(n, first_extra + chunk_frames)
        while start < n:
            bounds.append((start, end))
            start, end = end, min(n, end + chunk_frames)
        return bounds

    # ------------------------------------------------------------------ public API
    def encode(self, x: Tensor, chunk_frames: int | None = None) -> Tensor:
        """Video ``[B, 3, T, H, W]`` in [-1, 1] -> continuous latent ``[B, d, t, h, w]``.

        ``chunk_frames`` (a multiple of the temporal compression): encode ``1 + chunk_frames``
        frames, then ``chunk_frames`` at a time, carrying causal state; identical result, less
        memory.
        """
        self._check_video(x)
        if chunk_frames is None or chunk_frames + 1 >= x.shape[2]:
            return self.encoder(x)
        if chunk_frames < 1 or chunk_frames % self.temporal_compression:
            raise ValueError(f"chunk_frames={chunk_frames} must be a positive multiple of {self.temporal_compression}")
        state = StreamState()
        parts = [self.encoder(x[:, :, a:b], state) for a, b in self._chunks(x.shape[2], chunk_frames, 1)]
        return torch.cat(parts, dim=2)

    def decode(self, z_q: Tensor, chunk_frames: int | None = 1, state: StreamState | None = None) -> Tensor:
        """Latent ``[B, d, t, h, w]`` -> video ``[B, 3, 1 + s_t(t-1), H, W]`` (not clamped).

        ``chunk_frames`` counts latent frames: decode ``1 + chunk_frames``, then ``chunk_frames``
        at a time with causal state; the result of one pass (``None``) with memory flat in the
        number of frames. The default, 1, is also the fastest per clip on CPU at batch > 1.
        ``state``: continue a stream: pass consecutive pieces of one latent with the same
        :class:`StreamState` (the first piece starts it); the frames are those of one pass.
        """
        d = self.config.latent_dim
        if z_q.dim() != 5 or z_q.shape[1] != d:
            raise ValueError(f"expected a latent [B, {d}, t, h, w], got shape {tuple(z_q.shape)}")
        if chunk_frames is not None and chunk_frames < 1:
            raise ValueError(f"chunk_frames={chunk_frames} must be >= 1 or None")
        n = z_q.shape[2]
        if state is None and (chunk_frames is None or chunk_frames + 1 >= n):
            return self.decoder(z_q)
        state = StreamState() if state is None else state
        parts = [self.decoder(z_q[:, :, a:b], state) for a, b in self._chunks(n, chunk_frames or n, 1)]
        return torch.cat(parts, dim=2)

    @torch.no_grad()
    def fast_decode(self, z_q: Tensor, chunk_frames: int | None = None, dtype: torch.dtype = torch.bfloat16) -> Tensor:
        """Inference decode on CUDA: ``dtype`` autocast and channels_last_3d activations.

        Converts the decoder's weights to channels_last_3d in place (plain :meth:`decode` still
        works with them). Off CUDA it is :meth:`decode` in float32. Returns float32.
        """
        if z_q.device.type != "cuda":
            return self.decode(z_q, chunk_frames)
        self.decoder.to(memory_format=torch.channels_last_3d)
        z_q = z_q.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast("cuda", dtype=dtype):
            return self.decode(z_q, chunk_frames).float()

    def quantize(self, z: Tensor) -> QuantizerOutput:
        return self.quantizer(z)

    def codes_to_latent(self, codes: Sequence[Tensor]) -> Tensor:
        return self.quantizer.codes_to_latent(codes)

    def tokenize(self, x: Tensor) -> list[Tensor]:
        """Video -> per-scale codes (see ``quantizer``)."""
        return self.quantize(self.encode(x)).codes

    def detokenize(self, codes: Sequence[Tensor]) -> Tensor:
        """Per-scale codes -> video in [-1, 1] (clamped)."""
        return self.decode(self.codes_to_latent(codes)).clamp(-1, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """Reconstruct: ``(x_rec, quantizer output)``; training uses this."""
        q = self.quantize(self.encode(x))
        return self.decode(q.z_q, chunk_frames=None), q  # one pass: training parallelises over time


def resolved_config(overrides: dict | None) -> dict:
    """The full VideoTokenizer config (defaults + ``overrides``) without building a model."""
    import inspect

    params = inspect.signature(VideoTokenizer.__init__).parameters
    unknown = sorted(k for k in overrides or {} if k not in params and not k.startswith("_"))
    if unknown:
        raise ValueError(f"unknown VideoTokenizer config fields: {unknown}")
    config = {k: p.default for k, p in params.items() if k != "self"}
    config.update({k: v for k, v in (overrides or {}).items() if not k.startswith("_")})
    return {k: _plain(v) for k, v in config.items()}


def config_mismatches(saved: dict, current: dict) -> list[str]:
    """Names (with both values) of config fields that differ; ignores private ``_`` keys."""
    keys = sorted(k for k in set(saved) | set(current) if not k.startswith("_"))
    out = []
    for k in keys:
        a, b = _plain(saved.get(k, "<missing>")), _plain(current.get(k, "<missing>"))
        if a != b:
            out.append(f"{k}: checkpoint {a!r} vs model {b!r}")
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
