"""Fréchet Video Distance: protocol-faithful evaluation of video folders, and a
``torchmetrics`` metric for logging during training.

Pipeline for one set: files -> protocol clips (:mod:`mmgen.metrics.videos`, skips
counted) -> uint8 [B, C, T, H, W] batches -> I3D features -> :class:`FeatureStats`.
Real-set statistics are cached in an .npz keyed by the protocol, the extractor's weights
hash and every preprocessing choice, so they are computed once and never reused for a
different setting. Every result records the protocol, counts, skips and
the extractor hash (see :func:`evaluate_fvd`).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torchmetrics
from tqdm import tqdm

from mmgen.metrics.frechet import FeatureStats, frechet_distance, frechet_distance_from_stats
from mmgen.metrics.i3d import FEATURE_DIM
from mmgen.metrics.protocols import FVDProtocol
from mmgen.metrics.results import versions
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
    """Statistics of ``needed`` protocol clips from ``folder``; returns (stats, warnings).

    As StyleGAN-V: the first ``needed`` usable videos in sorted order; real clips start
    where ``protocol.clip`` says, generated ones where ``protocol.fake_clip`` says (frame 0
    by default). A real set with fewer usable videos is used whole, with a warning (the
    reference does not fail on smaller sets); a generated set that small is an error
    unless ``allow_small``, since more samples can always be generated.
    """
    folder = Path(folder)
    files = sorted(list_videos(folder, file_list), key=lambda p: str(p.relative_to(folder)))
    warnings: list[str] = []
    tolerant = allow_small or role == "real"
    if len(files) < needed and not tolerant:
        raise NotEnoughVideosError(
            f"{role} set {str(folder)!r} has {len(files)} videos; protocol {protocol.name!r} needs "
            f"{needed} (pass --allow-small to compute anyway; the result will carry a warning)"
        )
    report = SkipReport()
    info = extractor.info
    stats = FeatureStats(info.feature_dim)
    clips = iter_clips(
        files, protocol.num_frames, protocol.stride, protocol.resolution,
        protocol.clip if role == "real" else protocol.fake_clip, protocol.seed, report, root=folder,
        min_frames=protocol.min_frames,
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
    if stats.count < 2:
        raise NotEnoughVideosError(
            f"{role} set {str(folder)!r}: {stats.count} usable clips, need at least 2 (skipped: {report.summary()})"
        )
    if stats.count < needed:
        message = (
            f"{role} set {str(folder)!r}: {stats.count} usable clips, protocol {protocol.name!r} needs "
            f"{needed} (skipped: {report.summary()})"
        )
        if not tolerant:
            raise NotEnoughVideosError(message + "; pass --allow-small to compute anyway")
        how = "computed with --allow-small" if role != "real" else "the real set is used whole, as StyleGAN-V does"
        warnings.append(f"{message} — {how}; not comparable to published numbers")
    return SetStats(stats, str(folder), report.as_dict(), resolution), warnings


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) / "fvd" if env else Path.home() / ".cache" / "mmgen" / "fvd"


def extractor_identity(info: dict) -> dict:
    """Everything about an extractor that changes its features: the weights' hash, the
    kind and every preprocessing choice (not the file's location)."""
    return {k: v for k, v in info.items() if k != "file"}


def real_stats_cache_path(
    folder: str | os.PathLike, protocol: FVDProtocol, extractor_info: dict,
    file_list: str | os.PathLike | None, cache_dir: str | os.PathLike,
) -> Path:
    """Cache file for a real folder: keyed by protocol, extractor identity (weights and
    preprocessing) and the folder's listing."""
    files = list_videos(folder, file_list)
    listing = hashlib.sha256()
    for path in files:
        st = path.stat() if path.exists() else None
        listing.update(f"{path}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    identity = json.dumps(extractor_identity(extractor_info), sort_keys=True)
    key = hashlib.sha256(
        f"{Path(folder).resolve()}|{identity}|{listing.hexdigest()}".encode()
    ).hexdigest()[:16]
    return Path(cache_dir) / f"{protocol.key}-{key}.npz"


def load_real_stats(path: str | os.PathLike, protocol: FVDProtocol, extractor_info: dict) -> SetStats:
    """Saved real statistics; refused when the protocol, the extractor's weights or its
    preprocessing differ."""
    stats, meta = FeatureStats.load(path, protocol.key)
    saved = extractor_identity(meta.get("extractor", {}))
    wanted = extractor_identity(extractor_info)
    if saved.get("sha256") != wanted.get("sha256"):
        raise ValueError(
            f"statistics in {str(path)!r} were computed with extractor sha256 {saved.get('sha256')}, "
            f"not the given one ({wanted.get('sha256')}); recompute them"
        )
    differing = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differing:
        raise ValueError(
            f"statistics in {str(path)!r} were computed with other extractor settings ({', '.join(differing)}: "
            f"{[saved.get(k) for k in differing]} vs {[wanted.get(k) for k in differing]}); recompute them"
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

    ``extractor`` is an I3D extractor from :func:`mmgen.metrics.i3d.load_i3d`, or a proxy
    such as :class:`mmgen.metrics.efficientnet.EfficientNetLite0` (it carries ``info``:
    kind, file, sha256, preprocessing, feature size, proxy). Returns the JSON-ready record:
    ``fvd`` next to ``extractor`` and ``proxy`` (true when the features are not I3D's, so
    the number is not an FVD).
    """
    info = extractor.info.as_dict()
    warnings: list[str] = []
    if info["proxy"]:
        warnings.append(
            f"features from {info['kind']}, not I3D: a proxy Fréchet distance, not an FVD; "
            "compare it only with other numbers from the same extractor"
        )
    elif info["kind"] != protocol.extractor:
        warnings.append(
            f"extractor {info['kind']} ({info['file']}) is not the protocol's {protocol.extractor}: "
            "the number is not comparable to published FVDs"
        )
    real = Path(real)
    if real.is_file():
        real_stats = load_real_stats(real, protocol, info)
        if real_stats.stats.count < protocol.num_real:
            warnings.append(f"real statistics {str(real)!r} hold {real_stats.stats.count} clips, "
                            f"protocol needs {protocol.num_real}; not comparable to published numbers")
    else:
        cache = real_stats_cache_path(real, protocol, info, real_list, cache_dir or default_cache_dir())
        real_stats = None
        if cache.is_file():
            real_stats = load_real_stats(cache, protocol, info)
            if real_stats.stats.count < protocol.num_real:
                warnings.append(f"real statistics from cache hold {real_stats.stats.count} < "
                                f"{protocol.num_real} clips; not comparable to published numbers")
        if real_stats is None:
            real_stats, real_warn = compute_set_stats(
                real, protocol, extractor, protocol.num_real, "real", allow_small, batch_size, real_list, progress
            )
            warnings += real_warn
            save_real_stats(cache, real_stats, protocol, info)
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
        "metric": "fvd_proxy" if info["proxy"] else "fvd",
        "fvd": value,
        "proxy": info["proxy"],
        "extractor": info,
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
        "real": real_stats.record(),
        "fake": fake_stats.record(),
        "warnings": warnings,
        "versions": versions(),
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
