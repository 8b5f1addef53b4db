"""Video folders -> protocol clips, with every skipped file counted and reported.

Evaluation must not die on one broken file, nor silently score fewer videos than it
claims: unreadable files, videos shorter than the protocol's clip and videos whose size
differs from the set's are skipped, counted per reason, and the counts go into results.
"""
from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmgen.io import VideoReadError, read_video, video_info

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".gif"})


def list_videos(folder: str | os.PathLike, file_list: str | os.PathLike | None = None) -> list[Path]:
    """The videos of a set: those named in ``file_list``, else those of the folder's
    ``manifest.jsonl`` (``mmgen data synth``; keeps its preview grid out), else every
    video file under ``folder`` (recursive, sorted, hidden files skipped) — only those
    with a ``<name>.json`` sidecar when any has one (``mmgen sample`` output + grid).

    ``file_list`` has one path per line relative to ``folder``; anything after the first
    whitespace is ignored, so UCF-101's ``trainlist01.txt`` ("Class/v_x.avi 1") works as is.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder not found: {str(folder)!r}")
    manifest = folder / "manifest.jsonl"
    if file_list is not None:
        lines = Path(file_list).read_text().splitlines()
        files = [folder / line.split()[0] for line in lines if line.strip()]
    elif manifest.is_file():
        files = []
        for line_no, line in enumerate(manifest.read_text().splitlines(), 1):
            if line.strip():
                try:
                    files.append(folder / json.loads(line)["file"])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise ValueError(f"{manifest}:{line_no}: not a manifest row with a 'file' ({err})") from None
    else:
        files = sorted(
            p for p in folder.rglob("*")
            if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
        with_sidecar = [p for p in files if p.with_suffix(".json").is_file()]
        if with_sidecar:  # an `mmgen sample` folder: its samples, not the optional grid.mp4
            files = with_sidecar
    if not files:
        source = f"listed in {str(file_list)!r}" if file_list else f"({', '.join(sorted(VIDEO_SUFFIXES))})"
        raise FileNotFoundError(f"no video files in {str(folder)!r} {source}")
    return files


@dataclass
class SkipReport:
    """Every skipped file with its reason, counts per reason, and which decoder read the rest."""

    counts: dict[str, int] = field(default_factory=dict)
    files: list[dict] = field(default_factory=list)
    decoded_by: dict[str, int] = field(default_factory=dict)
    examined: int = 0

    def add(self, reason: str, path: str | os.PathLike, detail: str = "") -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.files.append({"file": str(path), "reason": reason, "detail": detail})

    def decoded(self, backend: str) -> None:
        self.decoded_by[backend] = self.decoded_by.get(backend, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {"examined": self.examined, "skipped": self.total, "counts": dict(self.counts),
                "files": [dict(f) for f in self.files], "decoded_by": dict(self.decoded_by)}

    def summary(self) -> str:
        if not self.counts:
            return "none skipped"
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))


def clip_indices(num_frames: int, stride: int, start: int) -> list[int]:
    return [start + i * stride for i in range(num_frames)]


def clip_start(num_available: int, window: int, policy: str, seed: int, name: str) -> int:
    """First frame of the clip: 0, or seeded-random per (seed, file name) within
    ``[0, num_available - window]``, order-independent."""
    if policy == "first" or num_available == window:
        return 0
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return int(rng.integers(0, num_available - window + 1))


def resize_square(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [T,H,W,C] -> [T,size,size,C]: shorter side to ``size`` (bilinear), centre crop."""
    t, h, w, c = frames.shape
    if (h, w) == (size, size):
        return frames
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def iter_clips(
    files: Sequence[Path],
    num_frames: int,
    stride: int = 1,
    resolution: int | None = None,
    clip_policy: str = "random",
    seed: int = 0,
    report: SkipReport | None = None,
    root: Path | None = None,
    min_frames: int | None = None,
) -> Iterator[tuple[Path, torch.Tensor]]:
    """Yield ``(file, uint8 [T,H,W,C])`` protocol clips, skipping (and counting) bad files.

    Videos shorter than ``max(span, min_frames)`` are skipped; a random start is drawn so
    that this whole window fits (see :class:`~mmgen.metrics.protocols.FVDProtocol`).

    With ``resolution`` clips are resized to ``resolution`` x ``resolution``. Without it the
    set's size is the most common one among the usable files (found by a metadata pass
    first, so one odd file cannot decide it) and files of other sizes are skipped.
    """
    report = report if report is not None else SkipReport()
    window = max((num_frames - 1) * stride + 1, min_frames or 0)
    usable: list[tuple[Path, int, tuple[int, int]]] = []
    for path in files:
        report.examined += 1
        try:
            info = video_info(path)
        except VideoReadError as err:
            report.add("unreadable", path, str(err).splitlines()[0][:200])
            continue
        if info.num_frames < window:
            report.add("too_short", path, f"{info.num_frames} frames < {window} needed")
            continue
        usable.append((path, info.num_frames, (info.height, info.width), info.backend))
    set_size = None
    if resolution is None and usable:
        set_size = Counter(size for _, _, size, _ in usable).most_common(1)[0][0]
    for path, length, size, backend in usable:
        if set_size is not None and size != set_size:
            report.add("mixed_resolution", path, f"{size[0]}x{size[1]} != set's {set_size[0]}x{set_size[1]}")
            continue
        name = str(path.relative_to(root)) if root is not None else path.name
        start = clip_start(length, window, clip_policy, seed, name)
        try:
            frames = read_video(path, frames=clip_indices(num_frames, stride, start))
        except (VideoReadError, ValueError) as err:
            report.add("unreadable", path, str(err).splitlines()[0][:200])
            continue
        if frames.shape[-1] != 3 or tuple(frames.shape[1:3]) != size:
            report.add("unreadable", path, f"decoded {tuple(frames.shape)} disagrees with its metadata")
            continue
        if resolution is not None:
            frames = resize_square(frames, resolution)
        report.decoded(backend)
        yield path, frames
