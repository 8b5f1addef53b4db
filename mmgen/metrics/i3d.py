"""I3D video feature extractors for FVD.

Two ways to turn uint8 videos [B, C, T, H, W] into 400-d Kinetics features:

* :class:`TorchScriptI3D` — the reference path. ``i3d_torchscript.pt`` is the export of
  DeepMind's TF-Hub Kinetics-400 I3D that StyleGAN-V and most recent papers use. It
  rescales [0, 255] to [-1, 1] and resizes to 224x224 itself.
* :class:`PyTorchI3D` — :class:`InceptionI3d` written here, loading the pytorch-i3d
  state-dict layout (``rgb_imagenet.pt``, TATS/VideoGPT ``i3d_pretrained_400.pt``).
  Features are the pre-softmax logits averaged over time. ``rgb_imagenet.pt`` is *not*
  numerically the TF-Hub model: numbers from it are not comparable to published FVDs.

Weights are never downloaded: the file comes from ``--i3d PATH`` or ``MMGEN_I3D_PATH``.
"""
from __future__ import annotations

import math
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmgen.io import file_sha256

I3D_ENV = "MMGEN_I3D_PATH"
I3D_REFERENCE_FILE = "i3d_torchscript.pt"
I3D_REFERENCE_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"
FEATURE_DIM = 400

# ---------------------------------------------------------------------------------------
# InceptionI3d (pytorch-i3d layout)
# ---------------------------------------------------------------------------------------


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding for one axis: output = ceil(size / stride), extra at the end."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    t, h, w = x.shape[-3:]
    pt, ph, pw = (_same_pad(s, k, st) for s, k, st in zip((t, h, w), kernel, stride))
    # F.pad lists the last axis first.
    return F.pad(x, (*pw, *ph, *pt))


class Unit3D(nn.Module):
    """Conv3d with TF "same" padding, then BatchNorm (eps 1e-3) and ReLU.

    Attribute names ``conv3d`` / ``bn`` give the pytorch-i3d state-dict keys.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        activation: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max pooling with TF "same" padding (zero padding is harmless: inputs are post-ReLU)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels: 1x1; 1x1->3x3; 1x1->3x3; pool->1x1."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


# (name, in_channels, branch widths) of the Inception blocks; pools sit between them.
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """Inflated Inception-v1 (Carreira & Zisserman 2017) in the pytorch-i3d module layout.

    Input: float [B, 3, T, H, W] in [-1, 1]. ``forward`` returns per-time logits
    [B, num_classes, T']; :meth:`features` averages them over time ([B, num_classes]),
    the FVD feature of the TATS/VideoGPT convention.

    The final average pool is [2, 7, 7] (stride 1) as in the original; on inputs smaller
    than 224x224 / 16 frames its window is clipped to the feature map, which is
    identical at the standard size and lets small inputs run (tests, toy data).
    """

    # Layers in forward order (the endpoint names of the original model).
    TRUNK = (
        "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
        "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
        "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
    )

    def __init__(self, num_classes: int = FEATURE_DIM, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, kernel=(7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=(3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionBlock(*_MIXED["Mixed_3b"])
        self.Mixed_3c = InceptionBlock(*_MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionBlock(*_MIXED["Mixed_4b"])
        self.Mixed_4c = InceptionBlock(*_MIXED["Mixed_4c"])
        self.Mixed_4d = InceptionBlock(*_MIXED["Mixed_4d"])
        self.Mixed_4e = InceptionBlock(*_MIXED["Mixed_4e"])
        self.Mixed_4f = InceptionBlock(*_MIXED["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionBlock(*_MIXED["Mixed_5b"])
        self.Mixed_5c = InceptionBlock(*_MIXED["Mixed_5c"])
        self.logits = Unit3D(1024, num_classes, batch_norm=False, activation=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.TRUNK:
            x = getattr(self, name)(x)
        kernel = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        x = F.avg_pool3d(x, kernel, stride=1)
        # Dropout of the original is inactive at inference and has no weights: omitted.
        return self.logits(x).mean(dim=(3, 4))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).mean(dim=2)

    def load_pytorch_i3d_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Strict load of a pytorch-i3d / TATS state dict.

        Files saved by old PyTorch lack BatchNorm's ``num_batches_tracked`` (a counter
        unused in eval mode); those keys are filled with zeros instead of loosening
        ``strict`` for every other key.
        """
        state = {k.removeprefix("module."): v for k, v in state.items()}
        for key, value in self.state_dict().items():
            if key.endswith("num_batches_tracked") and key not in state:
                state[key] = torch.zeros_like(value)
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as err:
            detail = " ".join(str(err).split())[:300]
            raise WeightsFileError(f"not a pytorch-i3d / TATS InceptionI3d state dict: {detail}") from None


# ---------------------------------------------------------------------------------------
# Extractors: uint8 [B, C, T, H, W] -> float [B, 400]
# ---------------------------------------------------------------------------------------


def resolve_i3d_path(path: str | os.PathLike | None = None) -> Path:
    """The I3D weights file from the flag, else ``MMGEN_I3D_PATH``; a clear error otherwise."""
    how_to = (
        f"The reference FVD extractor is {I3D_REFERENCE_FILE!r}, published with StyleGAN-V at "
        f"{I3D_REFERENCE_URL} ; download it yourself and pass --i3d PATH or set {I3D_ENV}=PATH "
        "(mmgen never downloads weights)."
    )
    chosen = path if path is not None else os.environ.get(I3D_ENV)
    if not chosen:
        raise FileNotFoundError(f"No I3D weights given ({I3D_REFERENCE_FILE}). {how_to}")
    chosen = Path(chosen).expanduser()
    if not chosen.is_file():
        source = "--i3d" if path is not None else I3D_ENV
        raise FileNotFoundError(f"I3D weights file not found: {str(chosen)!r} (from {source}). {how_to}")
    return chosen


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """TorchScript archives are zips holding compiled code; state dicts saved by torch.save hold none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


class WeightsFileError(ValueError):
    """A weights file that is neither a TorchScript archive nor a tensors-only state dict."""


def _not_weights(path: Path, err: BaseException) -> WeightsFileError:
    # torch's own message for a file weights_only refuses recommends retrying with
    # weights_only=False, i.e. running whatever code the file holds: never pass it on.
    kind = type(err).__name__
    return WeightsFileError(
        f"{str(path)!r} is not a valid TorchScript archive or state dict ({kind}); it may be truncated, "
        "corrupt or a pickle holding code, which mmgen never loads. Use the original weights file "
        "(or re-save its tensors with torch.save(model.state_dict(), ...) or safetensors)"
    )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file without unpickling code: safetensors or ``weights_only`` torch.load.
    Anything else raises :class:`WeightsFileError`."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise _not_weights(path, err) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} does not hold a state dict (got {type(state).__name__})")
    return state


@dataclass
class ExtractorInfo:
    """What a feature extractor is: every field but ``file`` decides its features.
    ``proxy`` marks extractors that are not I3D: their Fréchet distance is not an FVD."""

    kind: str  # "i3d_torchscript" | "i3d_pytorch" | "efficientnet-lite0"
    file: str
    sha256: str
    preprocess: str = ""
    feature_dim: int = FEATURE_DIM
    proxy: bool = False

    def as_dict(self) -> dict:
        return {"kind": self.kind, "file": self.file, "sha256": self.sha256, "preprocess": self.preprocess,
                "feature_dim": self.feature_dim, "proxy": self.proxy}


class TorchScriptI3D:
    """The reference FVD extractor: the StyleGAN-V TorchScript export of the TF-Hub I3D.

    ``torch.jit.load`` reads a TorchScript archive (code + tensors), not a pickle.
    """

    kind = "i3d_torchscript"

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        with warnings.catch_warnings():
            # TorchScript is deprecated in recent torch, but this file exists only as TorchScript.
            warnings.filterwarnings("ignore", category=FutureWarning)
            try:
                self.model = torch.jit.load(str(path), map_location=self.device).eval()
            except (RuntimeError, ValueError, OSError) as err:
                raise _not_weights(Path(path), err) from None
        self.info = ExtractorInfo(self.kind, str(path), file_sha256(path),
                                  "uint8 in; rescale=True, resize=True inside the TorchScript model")

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        _check_uint8_video(videos)
        feats = self.model(videos.to(self.device), rescale=True, resize=True, return_features=True)
        return feats.float()


class PyTorchI3D:
    """:class:`InceptionI3d` with pytorch-i3d / TATS weights.

    Preprocessing (VideoGPT/TATS convention): shorter side resized to 224 (bilinear,
    longer side rounded up), centre crop 224x224, [0, 255] -> [-input_scale, input_scale].
    ``input_scale=1`` is the range I3D was trained on (and TATS feeds it);
    VideoGPT's original FVD code fed [-0.5, 0.5] (``input_scale=0.5``), one of the
    undocumented differences behind irreproducible FVDs. The choice is recorded.
    """

    kind = "i3d_pytorch"

    def __init__(
        self,
        path: str | os.PathLike | None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        size: int = 224,
        input_scale: float = 1.0,
    ):
        self.device, self.dtype, self.size, self.input_scale = torch.device(device), dtype, size, input_scale
        self.model = InceptionI3d()
        preprocess = f"shorter side {size} bilinear, centre crop, [-{input_scale:g}, {input_scale:g}]"
        if path is not None:
            self.model.load_pytorch_i3d_state_dict(load_state_dict_file(path))
            self.info = ExtractorInfo(self.kind, str(path), file_sha256(path), preprocess)
        else:  # random weights: for speed benchmarks and tests only
            self.info = ExtractorInfo(self.kind, "<random>", "random", preprocess)
        self.model.eval().to(self.device, self.dtype)

    def preprocess(self, videos: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = videos.shape
        x = videos.to(self.device).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).float()
        scale = self.size / min(h, w)
        nh, nw = max(self.size, math.ceil(h * scale)), max(self.size, math.ceil(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        x = x[:, :, top : top + self.size, left : left + self.size]
        x = (x / 127.5 - 1.0) * self.input_scale
        return x.reshape(b, t, c, self.size, self.size).permute(0, 2, 1, 3, 4).to(self.dtype)

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        _check_uint8_video(videos)
        return self.model.features(self.preprocess(videos)).float()


def _check_uint8_video(videos: torch.Tensor) -> None:
    if videos.dtype != torch.uint8 or videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(
            f"I3D expects uint8 videos [B, 3, T, H, W]; got {videos.dtype} {tuple(videos.shape)}"
        )


def load_i3d(path: str | os.PathLike | None = None, device: str | torch.device = "cpu", input_scale: float = 1.0):
    """The I3D extractor for a weights file (flag or ``MMGEN_I3D_PATH``), by its format.
    ``input_scale`` applies to state-dict files only (see :class:`PyTorchI3D`)."""
    resolved = resolve_i3d_path(path)
    if is_torchscript_archive(resolved):
        return TorchScriptI3D(resolved, device)
    return PyTorchI3D(resolved, device, input_scale=input_scale)
