"""Causal 3D encoder and decoder: the VAR/Infinity 2D convolutional autoencoder inflated to 3D.

Layout per level i (channels ``base_channels * channel_mult[i]``): ``num_res_blocks`` residual
blocks, then (except at the last level) a stride-2 down-sampling; a middle section of two
residual blocks (optionally with per-frame attention between them); per-frame GroupNorm, SiLU
and a causal conv to the latent width. The decoder mirrors it with one more residual block per
level (as in VAR; ``decoder_res_blocks`` overrides); unlike VAR, the conv after each
up-sampling already maps to the next (narrower) width, which keeps the widest convs off the
finer grids. ``patch_size`` > 1 adds a per-frame
pixel-unshuffle stem (and pixel-shuffle head), a cheap first 2x spatial compression for small
models: no convolution then runs at full resolution. ``temporal_downsample[i]`` says whether down-sampling i also halves time;
the decoder's matching up-sampling doubles it back (1 + m -> 1 + 2m).

``shortcuts`` adds DC-AE's parameter-free residual paths around every resampling step and
around the latent projection (channel averaging into the latent, channel duplication out of
it): the convolutions then learn corrections to a plain resampled copy of the signal, which
trains a highly compressing autoencoder much faster (see ``VideoTokenizer``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmgen.tokenizer.layers import (
    CausalConv3d,
    Downsample,
    FrameAttention,
    Norm,
    ResBlock3d,
    StreamState,
    Upsample,
    per_frame,
    run_blocks,
)


def space_to_depth(x: Tensor, p: int) -> Tensor:
    """[B, C, T, H, W] -> [B, C*p*p, T, H/p, W/p] (per-frame pixel-unshuffle; p = 1: identity)."""
    return x if p == 1 else per_frame(x, lambda f: F.pixel_unshuffle(f, p))


def depth_to_space(x: Tensor, p: int) -> Tensor:
    """Inverse of :func:`space_to_depth`."""
    return x if p == 1 else per_frame(x, lambda f: F.pixel_shuffle(f, p))


def _groups(wide: int, narrow: int, where: str) -> int:
    if wide % narrow:
        raise ValueError(f"the {where} shortcut needs the widest width {wide} divisible by latent_dim {narrow}")
    return wide // narrow


def _mid(channels: int, norm: Norm, attention: bool, time_kernel: int) -> nn.Sequential:
    layers: list[nn.Module] = [ResBlock3d(channels, channels, norm, time_kernel)]
    if attention:
        layers.append(FrameAttention(channels, norm))
    layers.append(ResBlock3d(channels, channels, norm, time_kernel))
    return nn.Sequential(*layers)


class Encoder3d(nn.Module):
    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        base_channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        temporal_downsample: Sequence[bool],
        norm: Norm = Norm(),
        mid_attention: bool = False,
        time_kernel: int = 3,
        patch_size: int = 1,
        shortcuts: bool = False,
    ):
        super().__init__()
        widths = [base_channels * m for m in channel_mult]
        self.patch_size = patch_size
        self.conv_in = CausalConv3d(in_channels * patch_size**2, widths[0], (time_kernel, 3, 3))
        self.levels = nn.ModuleList()
        ch = widths[0]
        for i, width in enumerate(widths):
            blocks: list[nn.Module] = []
            for _ in range(num_res_blocks):
                blocks.append(ResBlock3d(ch, width, norm, time_kernel))
                ch = width
            if i < len(widths) - 1:
                blocks.append(Downsample(ch, temporal_downsample[i], shortcuts))
            self.levels.append(nn.Sequential(*blocks))
        self.mid = _mid(ch, norm, mid_attention, time_kernel)
        self.norm_out = norm(ch)
        self.conv_out = CausalConv3d(ch, latent_channels, (time_kernel, 3, 3))
        self.shortcut_groups = _groups(ch, latent_channels, "encoder output") if shortcuts else 0

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        h = self.conv_in(space_to_depth(x, self.patch_size), state)
        for level in self.levels:
            h = run_blocks(level, h, state)
        h = run_blocks(self.mid, h, state)
        z = self.conv_out(F.silu(self.norm_out(h)), state)
        if self.shortcut_groups:
            b, c, t, hh, ww = h.shape
            z = z + h.reshape(b, c // self.shortcut_groups, self.shortcut_groups, t, hh, ww).mean(2)
        return z


class Decoder3d(nn.Module):
    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        base_channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        temporal_downsample: Sequence[bool],
        norm: Norm = Norm(),
        mid_attention: bool = False,
        time_kernel: int = 3,
        patch_size: int = 1,
        decoder_res_blocks: int | None = None,
        shortcuts: bool = False,
    ):
        super().__init__()
        widths = [base_channels * m for m in channel_mult]
        ch = widths[-1]
        self.patch_size = patch_size
        self.conv_in = CausalConv3d(latent_channels, ch, (time_kernel, 3, 3))
        self.shortcut_repeats = _groups(ch, latent_channels, "decoder input") if shortcuts else 0
        self.mid = _mid(ch, norm, mid_attention, time_kernel)
        self.levels = nn.ModuleList()
        for i in reversed(range(len(widths))):
            blocks: list[nn.Module] = []
            for _ in range(num_res_blocks + 1 if decoder_res_blocks is None else decoder_res_blocks):
                blocks.append(ResBlock3d(ch, widths[i], norm, time_kernel))
                ch = widths[i]
            if i > 0:
                blocks.append(Upsample(ch, widths[i - 1], temporal_downsample[i - 1], shortcuts))
                ch = widths[i - 1]
            self.levels.append(nn.Sequential(*blocks))
        self.norm_out = norm(ch)
        self.conv_out = CausalConv3d(ch, out_channels * patch_size**2, (time_kernel, 3, 3))

    def forward(self, z: Tensor, state: StreamState | None = None) -> Tensor:
        h = self.conv_in(z, state)
        if self.shortcut_repeats:
            h = h + z.repeat_interleave(self.shortcut_repeats, dim=1)
        h = run_blocks(self.mid, h, state)
        for level in self.levels:
            h = run_blocks(level, h, state)
        return depth_to_space(self.conv_out(F.silu(self.norm_out(h)), state), self.patch_size)
