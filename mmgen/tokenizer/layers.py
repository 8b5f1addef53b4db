"""Causal 3D building blocks of the tokenizer's encoder and decoder.

Causality: output frame ``i`` depends only on input frames ``<= i`` (at the layer's own frame
rate). Every temporal operation is a :class:`CausalConv3d` (padded with copies of the first
frame, never with future frames) or frame-local (per-frame GroupNorm, spatial resampling).

Streaming: inside ``with streaming(module):`` every causal layer keeps the tail of its input
that the next chunk's first output window still needs, so feeding a video chunk by chunk gives
exactly the outputs of one full pass (the strided case included: the tail is "everything from
the start of the next output window", whatever the chunk lengths).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


class _Streamable(nn.Module):
    """A layer with per-stream state; ``_state`` is None outside :func:`streaming`."""

    _state: dict | None = None


@contextlib.contextmanager
def streaming(module: nn.Module) -> Iterator[None]:
    """Run ``module`` chunk by chunk along time with exact causal state carried between calls."""
    layers = [m for m in module.modules() if isinstance(m, _Streamable)]
    for m in layers:
        m._state = {}
    try:
        yield
    finally:
        for m in layers:
            m._state = None


class CausalConv3d(_Streamable):
    """Conv3d that pads time only on the past side (replicating the first frame).

    Spatial padding is symmetric ("same" for odd kernels). With temporal stride ``s`` and kernel
    ``k`` a clip of ``1 + s*m`` frames gives ``1 + m`` frames: the first frame has its own output.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
        bias: bool = True,
    ):
        super().__init__()
        kt, kh, kw = _triple(kernel_size)
        self.time_kernel = kt
        self.time_stride = _triple(stride)[0]
        self.conv = nn.Conv3d(
            in_channels, out_channels, (kt, kh, kw), stride=stride, padding=(0, kh // 2, kw // 2), bias=bias
        )

    def _pad_past(self, x: Tensor) -> Tensor:
        if self.time_kernel == 1:
            return x
        return torch.cat([x[:, :, :1].expand(-1, -1, self.time_kernel - 1, -1, -1), x], dim=2)

    def _conv(self, x: Tensor) -> Tensor:
        # PyTorch's CPU heuristic sends batch-1 inputs with few frames (streaming chunks) to an
        # im2col conv3d that is ~10x slower and allocates a 27x column buffer; oneDNN handles
        # them well, so inference on such inputs calls it directly.
        if (
            x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] == 1
            and not torch.is_grad_enabled() and torch.backends.mkldnn.is_available()
        ):
            c = self.conv
            return torch.mkldnn_convolution(x.contiguous(), c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups)
        return self.conv(x)

    def forward(self, x: Tensor) -> Tensor:
        if self._state is None:
            return self._conv(self._pad_past(x))
        tail = self._state.get("tail")
        x = self._pad_past(x) if tail is None else torch.cat([tail, x], dim=2)
        n_out = (x.shape[2] - self.time_kernel) // self.time_stride + 1
        if n_out < 1:
            raise ValueError(
                f"streaming chunk too short for a causal conv with temporal kernel {self.time_kernel} "
                f"and stride {self.time_stride}; use chunks of a multiple of the temporal compression"
            )
        self._state["tail"] = x[:, :, n_out * self.time_stride :]
        return self._conv(x)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over (channels, h, w) of each frame separately: no statistics across time."""

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(1, 2)


def _norm(channels: int, groups: int) -> nn.Module:
    """Per-frame GroupNorm with up to ``groups`` groups; ``groups=0``: no normalisation."""
    if groups == 0:
        return nn.Identity()
    g = groups
    while channels % g:
        g //= 2
    return FrameGroupNorm(g, channels, eps=1e-6)


class ResBlock3d(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1 if needed) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32, time_kernel: int = 3):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = CausalConv3d(in_channels, out_channels, (time_kernel, 3, 3))
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = CausalConv3d(out_channels, out_channels, (time_kernel, 3, 3))
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class FrameAttention(nn.Module):
    """Single-head self-attention over the h*w positions of each frame (causal: frame-local)."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj = nn.Conv3d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        qkv = self.qkv(self.norm(x)).permute(0, 2, 3, 4, 1).reshape(b * t, h * w, 3, c)
        q, k, v = qkv.unbind(dim=2)
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        y = y.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + self.proj(y)


class Downsample(nn.Module):
    """Stride-2 causal conv: halves h and w, and time too when ``temporal`` (1 + 2m -> 1 + m)."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=(2 if temporal else 1, 2, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(_Streamable):
    """Nearest x2 in h, w (and in time when ``temporal``: 1 + m -> 1 + 2m), then a causal conv.

    Temporal up-sampling repeats every frame twice except the very first one, which stays single
    (it is the image latent); in streaming mode only the first chunk is trimmed.
    """

    def __init__(self, in_channels: int, out_channels: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.conv = CausalConv3d(in_channels, out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        x = F.interpolate(x.transpose(1, 2).reshape(b * t, c, h, w), scale_factor=2.0, mode="nearest")
        x = x.reshape(b, t, c, 2 * h, 2 * w).transpose(1, 2)
        if self.temporal:
            x = x.repeat_interleave(2, dim=2)
            first_chunk = self._state is None or not self._state.get("started", False)
            if first_chunk:
                x = x[:, :, 1:]
            if self._state is not None:
                self._state["started"] = True
        return self.conv(x)
