"""Reconstruction quality: PSNR and SSIM of videos in [-1, 1] (computed on [0, 1])."""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-video PSNR (dB) of ``[B, C, T, H, W]`` videos in [-1, 1]; MSE over the whole clip."""
    mse = ((x.float().clamp(-1, 1) - y.float().clamp(-1, 1)) / 2).pow(2).mean(dim=(1, 2, 3, 4))
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-video SSIM (mean over frames, Gaussian window 11) of ``[B, C, T, H, W]`` in [-1, 1]."""
    b, c, t, h, w = x.shape
    a = ((x.float().clamp(-1, 1) + 1) / 2).transpose(1, 2).reshape(b * t, c, h, w)
    r = ((y.float().clamp(-1, 1) + 1) / 2).transpose(1, 2).reshape(b * t, c, h, w)
    per_frame = structural_similarity_index_measure(a, r, data_range=1.0, reduction="none")
    return per_frame.reshape(b, t).mean(dim=1)
