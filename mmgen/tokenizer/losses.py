"""Tokenizer training losses: 3D discriminator (hinge), LeCAM regularisation, optional LPIPS.

LPIPS needs weights the user provides as local files (no downloads): a torchvision VGG-16
state dict and the LPIPS linear-layer state dict (``lin0..lin4.model.1.weight``, as shipped in
the ``lpips`` package's ``weights/v0.1/vgg.pth``); both are loaded with ``weights_only=True``
(or from ``.safetensors``).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class Discriminator3d(nn.Module):
    """A PatchGAN-style 3D conv discriminator (StyleGAN-flavoured: LeakyReLU, no norm)."""

    def __init__(self, in_channels: int = 3, channels: int = 32, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv3d(in_channels, channels, 3, padding=1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(num_layers):
            out = channels * min(2 ** (i + 1), 8)
            # Halve space, then time (a clip of any length works: stride-2 time conv, padding 1).
            layers += [nn.Conv3d(ch, out, (3, 4, 4), stride=(1, 2, 2), padding=1), nn.LeakyReLU(0.2)]
            layers += [nn.Conv3d(out, out, (3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0)), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv3d(ch, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def hinge_g_loss(fake: Tensor) -> Tensor:
    return -fake.mean()


class LeCAM(nn.Module):
    """LeCAM regularisation (Tseng et al. 2021): keep D's outputs near EMAs of the other side."""

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def forward(self, real: Tensor, fake: Tensor) -> Tensor:
        with torch.no_grad():
            self.ema_real.mul_(self.decay).add_((1 - self.decay) * real.mean())
            self.ema_fake.mul_(self.decay).add_((1 - self.decay) * fake.mean())
        return F.relu(real - self.ema_fake).pow(2).mean() + F.relu(self.ema_real - fake).pow(2).mean()


def _load_state(path: str, what: str) -> dict[str, Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{what} weights not found: {path!r}. LPIPS needs local files: a torchvision VGG-16 state "
            "dict (vgg16-397923af.pth from download.pytorch.org/models) and the lpips package's "
            "weights/v0.1/vgg.pth (github.com/richzhang/PerceptualSimilarity)"
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


class LPIPS(nn.Module):
    """LPIPS (VGG variant) evaluated per frame; frozen, weights from local files only."""

    _SLICES = (4, 9, 16, 23, 30)  # ends of VGG-16 feature blocks relu1_2 .. relu5_3
    _WIDTHS = (64, 128, 256, 512, 512)

    def __init__(self, vgg_weights: str, lin_weights: str):
        super().__init__()
        from torchvision.models import vgg16

        state = _load_state(vgg_weights, "VGG-16")
        lin_state = _load_state(lin_weights, "LPIPS linear-layer")
        features = vgg16().features
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        features.load_state_dict(state)
        self.blocks = nn.ModuleList()
        start = 0
        for end in self._SLICES:
            self.blocks.append(features[start:end])
            start = end
        self.lins = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in self._WIDTHS)
        for i, lin in enumerate(self.lins):
            key = f"lin{i}.model.1.weight"
            if key not in lin_state:
                raise KeyError(f"{lin_weights}: missing {key!r} (expected the lpips package's vgg.pth)")
            lin.weight.data.copy_(lin_state[key])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:  # always frozen in eval mode
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean LPIPS distance between videos ``[B, 3, T, H, W]`` in [-1, 1]."""
        b, c, t, h, w = x.shape
        x = x.transpose(1, 2).reshape(b * t, c, h, w)
        y = y.transpose(1, 2).reshape(b * t, c, h, w)
        hx, hy = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total = x.new_zeros(())
        for block, lin in zip(self.blocks, self.lins):
            hx, hy = block(hx), block(hy)
            d = (_unit(hx) - _unit(hy)) ** 2
            total = total + lin(d).mean()
        return total


def _unit(x: Tensor) -> Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
