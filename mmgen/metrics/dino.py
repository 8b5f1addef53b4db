"""DINO ViT-B/16, the image encoder of VBench's subject_consistency.

Written here (no timm) with the module names of the official DINO backbone checkpoint
``dino_vitbase16_pretrain.pth`` so that file loads strictly. The output is the final
LayerNorm's class token, as ``torch.hub.load('facebookresearch/dino:main',
'dino_vitb16')`` returns it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmgen.io import file_sha256
from mmgen.metrics.i3d import WeightsFileError, load_state_dict_file

DINO_ENV = "MMGEN_DINO_PATH"
DINO_FILE = "dino_vitbase16_pretrain.pth"
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, h*w, dim], row-major patches


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DinoViT(nn.Module):
    """Vision Transformer with DINO's layout; ``forward`` returns the normalised [CLS] token.

    Defaults are ViT-B/16 (768 wide, 12 blocks, 12 heads, trained at 224x224).
    """

    def __init__(self, patch_size: int = 16, dim: int = 768, depth: int = 12, heads: int = 12,
                 mlp_ratio: float = 4.0, train_size: int = 224):
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, dim)
        grid = train_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """Position embedding for an h x w patch grid.

        Mirrors DINO's ``interpolate_pos_encoding`` exactly, so non-square frames give the
        features VBench gets: bicubic resampling with scale factors ``(w + 0.1) / grid`` and
        ``(h + 0.1) / grid``, applied in DINO's (w, h) axis order.
        """
        n = self.pos_embed.shape[1] - 1
        if h * w == n and h == w:
            return self.pos_embed
        grid = int(math.sqrt(n))
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dim = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos, scale_factor=((w + 0.1) / grid, (h + 0.1) / grid), mode="bicubic", align_corners=False
        )
        if patch_pos.shape[-2:] != (w, h):
            raise RuntimeError(f"position grid {tuple(patch_pos.shape[-2:])} != {(w, h)}")
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, w * h, dim)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [B, 3, H, W], ImageNet-normalised -> [B, dim] class-token features."""
        b, _, height, width = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(height // self.patch_size, width // self.patch_size)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def resolve_dino_path(path: str | os.PathLike | None) -> Path:
    chosen = path if path is not None else os.environ.get(DINO_ENV)
    how_to = (f"subject_consistency needs the DINO ViT-B/16 backbone {DINO_FILE!r}, published at {DINO_URL} ; "
              f"download it yourself and pass --dino PATH or set {DINO_ENV} (mmgen never downloads weights).")
    if not chosen:
        raise FileNotFoundError(f"No DINO weights given. {how_to}")
    chosen = Path(chosen).expanduser()
    if not chosen.is_file():
        raise FileNotFoundError(f"DINO weights file not found: {str(chosen)!r}. {how_to}")
    return chosen


def dino_from_state_dict(state: dict[str, torch.Tensor]) -> DinoViT:
    """ViT-B/16 from the backbone file, or the teacher of a DINO training checkpoint
    (``module.`` / ``backbone.`` prefixes stripped, projection head dropped); strict."""
    if isinstance(state.get("teacher"), dict):
        state = state["teacher"]
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    model = DinoViT()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise WeightsFileError(f"not a DINO ViT-B/16 backbone state dict: {detail}") from None
    return model.eval()


def load_dino(path: str | os.PathLike | None = None) -> tuple[DinoViT, dict]:
    """DINO ViT-B/16 from a local checkpoint; returns (model in eval mode, file record)."""
    resolved = resolve_dino_path(path)
    model = dino_from_state_dict(load_state_dict_file(resolved))
    return model, {"file": str(resolved), "sha256": file_sha256(resolved)}
