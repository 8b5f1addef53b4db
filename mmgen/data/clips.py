"""Turning a decoded video into a training clip: which frames, what size, what range."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from mmgen.io import resize_video

TEMPORAL_CROPS = ("random", "centre")
SHORT_POLICIES = ("pad", "skip")


class ShortVideoError(Exception):
    """The video has fewer frames than one clip needs and the policy is ``skip``."""


@dataclass(frozen=True)
class ClipConfig:
    """How clips are cut from videos.

    Args:
        num_frames: frames per clip (17 = 1 + 4*4 suits the 4x temporal tokenizer).
        stride: take every ``stride``-th frame (a clip spans ``(num_frames-1)*stride+1`` frames).
        temporal_crop: ``"random"`` start (training) or ``"centre"`` (evaluation).
        resolution: output ``(h, w)`` or an int for square; the video is resized so it
            covers the target, then centre cropped. ``None`` keeps the decoded size.
        short: a video shorter than one clip is ``"pad"``-ded by repeating its last frame,
            or ``"skip"``-ped (the dataset then serves another video). Both are counted.
    """

    num_frames: int = 17
    stride: int = 1
    temporal_crop: str = "random"
    resolution: int | tuple[int, int] | None = 64
    short: str = "pad"

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"ClipConfig.num_frames must be >= 1, got {self.num_frames}")
        if self.stride < 1:
            raise ValueError(f"ClipConfig.stride must be >= 1, got {self.stride}")
        if self.temporal_crop == "center":  # accept the US spelling
            object.__setattr__(self, "temporal_crop", "centre")
        if self.temporal_crop not in TEMPORAL_CROPS:
            raise ValueError(f"ClipConfig.temporal_crop={self.temporal_crop!r} is not one of {list(TEMPORAL_CROPS)}")
        if self.short not in SHORT_POLICIES:
            raise ValueError(f"ClipConfig.short={self.short!r} is not one of {list(SHORT_POLICIES)}")
        if self.resolution is not None and min(self.out_size) < 1:
            raise ValueError(f"ClipConfig.resolution must be positive, got {self.resolution}")

    @property
    def span(self) -> int:
        """Number of source frames one clip covers."""
        return (self.num_frames - 1) * self.stride + 1

    @property
    def out_size(self) -> tuple[int, int] | None:
        if self.resolution is None:
            return None
        if isinstance(self.resolution, int):
            return (self.resolution, self.resolution)
        return (int(self.resolution[0]), int(self.resolution[1]))


def clip_indices(num_available: int, config: ClipConfig, rng: random.Random | None = None) -> tuple[list[int], bool]:
    """Frame indices of one clip and whether it had to be padded.

    Raises :class:`ShortVideoError` for a short video when ``config.short == "skip"``.
    """
    if num_available < 1:
        raise ShortVideoError("video has no frames")
    if num_available >= config.span:
        room = num_available - config.span
        if config.temporal_crop == "centre":
            start = room // 2
        else:
            start = (rng or random).randint(0, room)
        return [start + k * config.stride for k in range(config.num_frames)], False
    if config.short == "skip":
        raise ShortVideoError(f"video has {num_available} frames, a clip needs {config.span}")
    return [min(k * config.stride, num_available - 1) for k in range(config.num_frames)], True


def resize_crop(video: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Resize uint8 ``[T, H, W, C]`` to cover ``out_size`` (aspect kept), then centre crop."""
    _, h, w, _ = video.shape
    th, tw = out_size
    scale = max(th / h, tw / w)
    covered = (max(th, round(h * scale)), max(tw, round(w * scale)))
    video = resize_video(video, covered)
    top = (covered[0] - th) // 2
    left = (covered[1] - tw) // 2
    return video[:, top : top + th, left : left + tw]


def to_model_range(video: torch.Tensor) -> torch.Tensor:
    """uint8 ``[T, H, W, C]`` -> float ``[C, T, H, W]`` in ``[-1, 1]``."""
    return video.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """float ``[C, T, H, W]`` in ``[-1, 1]`` -> uint8 ``[T, H, W, C]`` (the inverse of :func:`to_model_range`)."""
    return video.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0)
