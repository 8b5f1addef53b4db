"""TokenSR: super-resolve a region's hidden states (Blink's dynamic token resolution).

A region of ``size x size`` visual tokens of one decoder layer, arranged spatially as
[B, C, size, size], becomes ``(factor*size)^2`` new tokens.  TokenSR is three 3x3
convolutions with ReLU between them, the middle one widening to factor^2 sub-pixel channels
(pixel shuffle) — plus a bilinear skip, so with the last convolution zero-initialised a fresh
TokenSR equals Blink-interp and training learns the residual detail.  One module per Blink
layer (hidden states differ a lot between layers).

``interpolate_region`` is Blink-interp, the training-free variant (bilinear).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmgen.nn.pretrained import PretrainedModel, register_to_config


def interpolate_region(region: torch.Tensor, factor: int) -> torch.Tensor:
    """[B, C, s, s] -> [B, C, factor*s, factor*s] (bilinear, align_corners=False)."""
    return F.interpolate(region, scale_factor=factor, mode="bilinear", align_corners=False)


class TokenSR(nn.Module):
    """conv3x3(C->hidden) ReLU conv3x3(hidden->hidden*f^2) pixel-shuffle(f) ReLU conv3x3(hidden->C) + bilinear skip."""

    def __init__(self, dim: int, hidden: int = 32, factor: int = 2):
        super().__init__()
        self.factor = factor
        self.conv1 = nn.Conv2d(dim, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden * factor * factor, 3, padding=1)
        self.conv3 = nn.Conv2d(hidden, dim, 3, padding=1)
        nn.init.zeros_(self.conv3.weight)
        nn.init.zeros_(self.conv3.bias)

    def forward(self, region: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(region.float()))
        x = F.relu(F.pixel_shuffle(self.conv2(x), self.factor))
        return (interpolate_region(region.float(), self.factor) + self.conv3(x)).to(region.dtype)


class TokenSRBank(PretrainedModel):
    """The TokenSR modules of all Blink layers, saved/loaded as one model folder.
    ``bank[layer]`` -> the TokenSR of that decoder layer.  ``region``: the region side (tokens) it
    was trained on; TokenSR convolves over the whole region, so it serves that size only (None:
    not recorded, folders written before it was)."""

    @register_to_config
    def __init__(self, layers: tuple[int, ...] = (1, 2), dim: int = 64, hidden: int = 32, factor: int = 2,
                 region: int | None = None):
        super().__init__()
        self.srs = nn.ModuleDict({str(i): TokenSR(dim, hidden, factor) for i in layers})

    def __getitem__(self, layer: int) -> TokenSR:
        return self.srs[str(layer)]

    def __contains__(self, layer: int) -> bool:
        return str(layer) in self.srs
