"""Causal 3D building blocks of the tokenizer's encoder and decoder.

Causality: output frame ``i`` depends only on input frames ``<= i`` (at the layer's own frame
rate). Every temporal operation is a :class:`CausalConv3d` (padded with copies of the first
frame, never with future frames) or frame-local (per-frame GroupNorm, per-pixel ChannelNorm, spatial resampling).

Streaming: every layer's ``forward(x, state=None)`` takes an explicit :class:`StreamState`
(like the generator's KV cache). Given one, each causal layer keeps in it the tail of its input
that the next chunk's first output window still needs, so feeding a video chunk by chunk with
the same state gives exactly the outputs of one full pass (the strided case included: the tail
is "everything from the start of the next output window", whatever the chunk lengths). The
modules themselves hold no per-stream state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


class StreamState:
    """Causal state of one chunk-by-chunk pass over a batch of videos: per layer, the input tail
    the next chunk still needs and whether the first chunk has passed. One per stream; pass it
    with every chunk, in order."""

    def __init__(self):
        self._layers: dict[int, dict] = {}

    def of(self, layer: nn.Module) -> dict:
        return self._layers.setdefault(id(layer), {})


def _starting(layer: nn.Module, state: StreamState | None) -> bool:
    """True for a whole-video call or the first streamed chunk (then later chunks are not)."""
    if state is None:
        return True
    mine = state.of(layer)
    first = not mine.get("started", False)
    mine["started"] = True
    return first


def per_frame(x: Tensor, fn) -> Tensor:
    """Apply a 2D op ``fn`` ([N, C, H, W] -> [N, C', H', W']) to every frame of ``x [B, C, T, H, W]``."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


def run_blocks(blocks: nn.Sequential, x: Tensor, state: StreamState | None) -> Tensor:
    """``blocks`` in order, each given the stream state."""
    for block in blocks:
        x = block(x, state)
    return x


class CausalConv3d(nn.Module):
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

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        if state is None:
            return self._conv(self._pad_past(x))
        mine = state.of(self)
        tail = mine.get("tail")
        x = self._pad_past(x) if tail is None else torch.cat([tail, x], dim=2)
        n_out = (x.shape[2] - self.time_kernel) // self.time_stride + 1
        if n_out < 1:
            raise ValueError(
                f"streaming chunk too short for a causal conv with temporal kernel {self.time_kernel} "
                f"and stride {self.time_stride}; use chunks of a multiple of the temporal compression"
            )
        mine["tail"] = x[:, :, n_out * self.time_stride :]
        return self._conv(x)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over (channels, h, w) of each frame separately: no statistics across time."""

    def forward(self, x: Tensor) -> Tensor:
        return per_frame(x, super().forward)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each (frame, pixel) separately.

    Unlike a per-frame GroupNorm it keeps every pixel's own statistics: on sparse frames (a small
    object on black) a frame-wide norm rescales an object's response by the object's own
    energy, which hides how bright or which colour the object was and slows learning colour.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


NORM_TYPES = ("group", "channel", "none")


@dataclass(frozen=True)
class Norm:
    """Which normalisation the autoencoder uses; called with a width it builds one layer.

    ``kind``: "group" (per-frame GroupNorm with up to ``groups`` groups; ``groups=0`` means
    none), "channel" (:class:`ChannelNorm`) or "none".
    """

    kind: str = "group"
    groups: int = 32

    def __post_init__(self) -> None:
        if self.kind not in NORM_TYPES:
            raise ValueError(f"norm type {self.kind!r}: expected one of {NORM_TYPES}")

    def __call__(self, channels: int) -> nn.Module:
        if self.kind == "none" or (self.kind == "group" and self.groups == 0):
            return nn.Identity()
        if self.kind == "channel":
            return ChannelNorm(channels)
        g = self.groups
        while channels % g:
            g //= 2
        return FrameGroupNorm(g, channels, eps=1e-6)


class ResBlock3d(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1 if needed) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = Norm(), time_kernel: int = 3):
        super().__init__()
        self.norm1 = norm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, (time_kernel, 3, 3))
        self.norm2 = norm(out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, (time_kernel, 3, 3))
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)), state)
        h = self.conv2(F.silu(self.norm2(h)), state)
        return self.shortcut(x) + h


class FrameAttention(nn.Module):
    """Single-head self-attention over the h*w positions of each frame (causal: frame-local)."""

    def __init__(self, channels: int, norm: Norm = Norm()):
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj = nn.Conv3d(channels, channels, 1)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:  # frame-local: no state
        b, c, t, h, w = x.shape
        qkv = self.qkv(self.norm(x)).permute(0, 2, 3, 4, 1).reshape(b * t, h * w, 3, c)
        q, k, v = qkv.unbind(dim=2)
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        y = y.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + self.proj(y)


def _keep_even_frames(x: Tensor, first_chunk: bool) -> Tensor:
    """Frames 0, 2, 4, ... (1 + 2m -> 1 + m): the frames the strided causal conv's last tap sees.

    Subsampling rather than averaging keeps an inflated 2D checkpoint exactly frame-wise.
    """
    if first_chunk:
        if x.shape[2] % 2 == 0:
            raise ValueError("temporal down-sampling needs 1 + 2m frames in the first chunk")
        return x[:, :, 0::2]
    if x.shape[2] % 2:
        raise ValueError("temporal down-sampling needs 2m frames in every chunk after the first")
    return x[:, :, 1::2]


class Downsample(nn.Module):
    """Stride-2 causal conv: halves h and w, and time too when ``temporal`` (1 + 2m -> 1 + m).

    ``shortcut`` adds a parameter-free path (DC-AE's space-to-channel averaging, which for an
    unchanged width is 2x2 average pooling; in time, the frames on the conv's output grid), so
    the block learns a residual on top of a plain down-sampled copy of its input.
    """

    def __init__(self, channels: int, temporal: bool, shortcut: bool = False):
        super().__init__()
        self.temporal, self.shortcut = temporal, shortcut
        self.conv = CausalConv3d(channels, channels, 3, stride=(2 if temporal else 1, 2, 2))

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        y = self.conv(x, state)
        if not self.shortcut:
            return y
        b, c, t, h, w = x.shape
        s = x.reshape(b, c, t, h // 2, 2, w // 2, 2).mean((4, 6))
        if self.temporal:
            s = _keep_even_frames(s, first_chunk=_starting(self, state))
        return y + s


class Upsample(nn.Module):
    """Nearest x2 in h, w (and in time when ``temporal``: 1 + m -> 1 + 2m), then a causal conv.

    Temporal up-sampling repeats every frame twice except the very first one, which stays single
    (it is the image latent); in streaming mode only the first chunk is trimmed. ``shortcut`` adds
    DC-AE's parameter-free channel-to-space path: the input's channels, duplicated to
    ``4 * out_channels``, are spread over the 2x2 sub-pixels (needs ``4 * out`` divisible by ``in``).
    """

    def __init__(self, in_channels: int, out_channels: int, temporal: bool, shortcut: bool = False):
        super().__init__()
        if shortcut and (4 * out_channels) % in_channels:
            raise ValueError(f"an up-sampling shortcut from {in_channels} to {out_channels} channels needs "
                             f"4 * {out_channels} divisible by {in_channels}")
        self.temporal, self.shortcut = temporal, shortcut
        self.repeats = 4 * out_channels // in_channels
        self.conv = CausalConv3d(in_channels, out_channels, 3)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        up = per_frame(x, lambda f: F.interpolate(f, scale_factor=2.0, mode="nearest"))
        s = None
        if self.shortcut:
            s = per_frame(x, lambda f: F.pixel_shuffle(f.repeat_interleave(self.repeats, dim=1), 2))
        if self.temporal:
            trim = 1 if _starting(self, state) else 0
            up = up.repeat_interleave(2, dim=2)[:, :, trim:]
            s = None if s is None else s.repeat_interleave(2, dim=2)[:, :, trim:]
        y = self.conv(up, state)
        return y if s is None else y + s
