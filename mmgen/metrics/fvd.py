"""Fréchet Video Distance: protocol-faithful evaluation of video folders, and a
``torchmetrics`` metric for logging during training.

Pipeline for one set: files -> protocol clips (:mod:`mmgen.metrics.videos`, skips
counted) -> uint8 [B, C, T, H, W] batches -> I3D features -> :class:`FeatureStats`.
Real-set statistics are cached in an .npz keyed by the protocol and the extractor file's
hash, so they are computed once. Every result records the protocol, counts, skips and
the extractor hash (see :func:`evaluate_fvd`).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torchmetrics
from tqdm import tqdm

from mmgen.io import atomic_path
from mmgen.metrics.frechet import FeatureStats, frechet_distance, frechet_distance_from_stats
from mmgen.metrics.i3d import FEATURE_DIM
from mmgen.metrics.protocols import FVDProtocol
from mmgen.metrics.videos import SkipReport, iter_clips, list_videos

CACHE_ENV = "MMGEN_CACHE_DIR"

Extractor = Callable[[torch.Tensor], torch.Tensor]  # uint8 [B,C,T,H,W] -> float [B, D]


class NotEnoughVideosError(ValueError):
    """A set has fewer usable videos than the protocol needs (and --allow-small was not given)."""


@dataclass
class SetStats:
    """Feature statistics of one set, with where they came from and what was skipped."""

    stats: FeatureStats
    source: str
    skipped: dict = field(default_factory=dict)
    resolution: list[int] | None = None
    stats_file: str | None = None

    def record(self) -> dict:
        return {"source": self.source, "n": self.stats.count, "resolution": self.resolution,
                "skipped": self.skipped, "stats_file": self.stats_file}


def _select_files(files: list[Path], seed: int) -> list[Path]:
    """Seeded shuffle, so a protocol that needs fewer clips than files takes a fair subset."""
    files = list(files)
    random.Random(seed).shuffle(files)
    return files


def compute_set_stats(
    folder: str | os.PathLike,
    protocol: FVDProtocol,
    extractor: Extractor,
    needed: int,
    role: str,
    allow_small: bool = False,
    batch_size: int = 8,
    file_list: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[SetStats, list[str]]:
    """Statistics of ``needed`` protocol clips from ``folder``; returns (stats, warnings)."""
    folder = Path(folder)
    files = list_videos(folder, file_list)
    warnings: list[str] = []
    if len(files) < needed and not allow_small:
        raise NotEnoughVideosError(
            f"{role} set {str(folder)!r} has {len(files)} videos; protocol {protocol.name!r} needs "
            f"{needed} (pass --allow-small to compute anyway; the result will carry a warning)"
        )
    report = SkipReport()
    stats = FeatureStats(FEATURE_DIM)
    clips = iter_clips(
        _select_files(files, protocol.seed), protocol.num_frames, protocol.stride, protocol.resolution,
        protocol.clip, protocol.seed, report, root=folder,
    )
    batch: list[torch.Tensor] = []
    resolution = None
    bar = tqdm(total=needed, desc=f"FVD {role}", unit="clip", disable=not progress)
    for _, frames in clips:
        resolution = [int(frames.shape[1]), int(frames.shape[2])]
        batch.append(frames.permute(3, 0, 1, 2))  # [T,H,W,C] -> [C,T,H,W]
        if len(batch) == batch_size or stats.count + len(batch) == needed:
            stats.update(extractor(torch.stack(batch)))
            bar.update(len(batch))
            batch = []
        if stats.count == needed:
            break
    if batch:
        stats.update(extractor(torch.stack(batch)))
        bar.update(len(batch))
    bar.close()
    if stats.count < needed:
        message = (
            f"{role} set {str(folder)!r}: {stats.count} usable clips, protocol {protocol.name!r} needs "
            f"{needed} (skipped: {report.summary()})"
        )
        if not allow_small:
            raise NotEnoughVideosError(message + "; pass --allow-small to compute anyway")
        warnings.append(message + " — computed with --allow-small; not comparable to published numbers")
    if stats.count < 2:
        raise NotEnoughVideosError(f"{role} set {str(folder)!r}: {stats.count} usable clips, need at least 2")
    return SetStats(stats, str(folder), report.as_dict(), resolution), warnings


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) / "fvd" if env else Path.home() / ".cache" / "mmgen" / "fvd"


def real_stats_cache_path(
    folder: str | os.PathLike, protocol: FVDProtocol, extractor_sha256: str,
    file_list: str | os.PathLike | None, cache_dir: str | os.PathLike,
) -> Path:
    """Cache file for a real folder: keyed by protocol, extractor and the folder's listing."""
    files = list_videos(folder, file_list)
    listing = hashlib.sha256()
    for path in files:
        st = path.stat() if path.exists() else None
        listing.update(f"{path}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    key = hashlib.sha256(
        f"{Path(folder).resolve()}|{extractor_sha256}|{listing.hexdigest()}".encode()
    ).hexdigest()[:16]
    return Path(cache_dir) / f"{protocol.key}-{key}.npz"


def load_real_stats(path: str | os.PathLike, protocol: FVDProtocol, extractor_sha256: str) -> SetStats:
    """Saved real statistics; refused when protocol or extractor file differ."""
    stats, meta = FeatureStats.load(path, protocol.key)
    saved_sha = meta.get("extractor", {}).get("sha256")
    if saved_sha != extractor_sha256:
        raise ValueError(
            f"statistics in {str(path)!r} were computed with extractor sha256 {saved_sha}, "
            f"not the given one ({extractor_sha256}); recompute them"
        )
    return SetStats(stats, meta.get("source", str(path)), meta.get("skipped", {}), meta.get("resolution"),
                    stats_file=str(path))


def save_real_stats(path: str | os.PathLike, set_stats: SetStats, protocol: FVDProtocol, extractor_info: dict) -> None:
    meta = {"protocol": protocol.as_dict(), "extractor": extractor_info, "source": set_stats.source,
            "skipped": set_stats.skipped, "resolution": set_stats.resolution}
    set_stats.stats.save(path, protocol.key, meta)
    set_stats.stats_file = str(path)


def evaluate_fvd(
    real: str | os.PathLike,
    fake: str | os.PathLike,
    protocol: FVDProtocol,
    extractor,
    allow_small: bool = False,
    batch_size: int = 8,
    real_list: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    save_real_stats_to: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """FVD of the ``fake`` folder against ``real`` (a folder, or an .npz of saved statistics).

    ``extractor`` is an I3D extractor from :func:`mmgen.metrics.i3d.load_i3d` (it carries
    ``info``: kind, file, sha256). Returns the JSON-ready result record.
    """
    info = extractor.info.as_dict()
    warnings: list[str] = []
    if info["kind"] != protocol.extractor:
        warnings.append(
            f"extractor {info['kind']} ({info['file']}) is not the protocol's {protocol.extractor}: "
            "the number is not comparable to published FVDs"
        )
    real = Path(real)
    if real.is_file():
        real_stats = load_real_stats(real, protocol, info["sha256"])
        if real_stats.stats.count < protocol.num_real:
            msg = (f"real statistics {str(real)!r} hold {real_stats.stats.count} clips, "
                   f"protocol needs {protocol.num_real}")
            if not allow_small:
                raise NotEnoughVideosError(msg + "; pass --allow-small to compute anyway")
            warnings.append(msg + " — computed with --allow-small")
    else:
        cache = real_stats_cache_path(real, protocol, info["sha256"], real_list, cache_dir or default_cache_dir())
        real_stats = None
        if cache.is_file():
            real_stats = load_real_stats(cache, protocol, info["sha256"])
            if real_stats.stats.count < protocol.num_real and not allow_small:
                real_stats = None  # a cache made with --allow-small does not serve a full run
        if real_stats is None:
            real_stats, real_warn = compute_set_stats(
                real, protocol, extractor, protocol.num_real, "real", allow_small, batch_size, real_list, progress
            )
            warnings += real_warn
            save_real_stats(cache, real_stats, protocol, info)
        elif real_stats.stats.count < protocol.num_real:
            warnings.append(f"real statistics from cache hold {real_stats.stats.count} < {protocol.num_real} clips")
        if save_real_stats_to is not None:
            save_real_stats(save_real_stats_to, real_stats, protocol, info)
    fake_stats, fake_warn = compute_set_stats(
        fake, protocol, extractor, protocol.num_fake, "fake", allow_small, batch_size, None, progress
    )
    warnings += fake_warn
    if real_stats.resolution and fake_stats.resolution and real_stats.resolution != fake_stats.resolution:
        warnings.append(
            f"real clips are {real_stats.resolution} and fake clips {fake_stats.resolution}: "
            "set a protocol resolution to compare at one size"
        )
    value = frechet_distance_from_stats(real_stats.stats, fake_stats.stats)
    return {
        "metric": "fvd",
        "value": value,
        "protocol": protocol.name,
        "protocol_key": protocol.key,
        "protocol_fields": protocol.as_dict(),
        "n_real": real_stats.stats.count,
        "n_fake": fake_stats.stats.count,
        "frames": protocol.num_frames,
        "stride": protocol.stride,
        "resolution": {"protocol": protocol.resolution, "real": real_stats.resolution, "fake": fake_stats.resolution},
        "split": protocol.split,
        "real_list": str(real_list) if real_list else None,
        "seed": protocol.seed,
        "extractor": info,
        "real": real_stats.record(),
        "fake": fake_stats.record(),
        "warnings": warnings,
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------
# torchmetrics wrapper (training-time logging; DDP-safe: every state is a sum)
# ---------------------------------------------------------------------------------------


def to_uint8_video(videos: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] or uint8 [B, C, T, H, W] -> uint8 [B, C, T, H, W]."""
    if videos.dtype == torch.uint8:
        return videos
    if not torch.is_floating_point(videos):
        raise ValueError(f"videos must be uint8 or float in [-1, 1], got {videos.dtype}")
    return ((videos.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class FrechetVideoDistance(torchmetrics.Metric):
    """FVD as a ``torchmetrics.Metric``.

    ``update(videos, real=...)`` takes [B, C, T, H, W] uint8 or float in [-1, 1] (the
    model layout); features come from ``extractor`` (uint8 in, [B, D] out). States are
    float64 sums (count, Σx, Σxxᵀ per set), reduced across processes by ``sum``; so
    sharded updates give exactly the single-process result. Pass ``real_stats`` (e.g.
    loaded from a cached .npz) to compare against a fixed real set; then only generated
    videos are updated and ``reset`` keeps the real statistics.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, extractor: Extractor, feature_dim: int = FEATURE_DIM,
                 real_stats: FeatureStats | None = None, **kwargs):
        super().__init__(**kwargs)
        self.extractor = extractor
        self.feature_dim = feature_dim
        self.fixed_real = real_stats
        for prefix in ("real", "fake"):
            self.add_state(f"{prefix}_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{prefix}_sum", torch.zeros(feature_dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(
                f"{prefix}_sum_outer", torch.zeros(feature_dim, feature_dim, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(self, videos: torch.Tensor, real: bool) -> None:
        if real and self.fixed_real is not None:
            raise ValueError("this metric was given fixed real statistics; update it with generated videos only")
        feats = self.extractor(to_uint8_video(videos)).to(self.real_sum.device, torch.float64)
        if feats.ndim != 2 or feats.shape[1] != self.feature_dim:
            raise ValueError(f"extractor returned {tuple(feats.shape)}, expected [B, {self.feature_dim}]")
        prefix = "real" if real else "fake"
        setattr(self, f"{prefix}_count", getattr(self, f"{prefix}_count") + feats.shape[0])
        setattr(self, f"{prefix}_sum", getattr(self, f"{prefix}_sum") + feats.sum(0))
        setattr(self, f"{prefix}_sum_outer", getattr(self, f"{prefix}_sum_outer") + feats.T @ feats)

    def forward(self, videos: torch.Tensor, real: bool) -> None:
        """Accumulate only: a per-batch FVD (what ``Metric.forward`` would return) is
        meaningless with a handful of videos and costs a 400x400 matrix root per step."""
        self.update(videos, real)

    def _stats(self, prefix: str) -> FeatureStats:
        stats = FeatureStats(self.feature_dim)
        stats.count = int(getattr(self, f"{prefix}_count").item())
        stats.sum = getattr(self, f"{prefix}_sum").cpu().numpy().copy()
        stats.sum_outer = getattr(self, f"{prefix}_sum_outer").cpu().numpy().copy()
        return stats

    def compute(self) -> torch.Tensor:
        real = self.fixed_real if self.fixed_real is not None else self._stats("real")
        fake = self._stats("fake")
        return torch.tensor(frechet_distance(real.mean, real.cov, fake.mean, fake.cov), dtype=torch.float64)


def write_json_atomic(path: str | os.PathLike, record: dict) -> None:
    """Write a result record atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=2) + "\n")
