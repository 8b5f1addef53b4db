"""Fréchet distance between feature sets, from streaming float64 statistics.

Statistics are running sums (count, Σx, Σxxᵀ), so any number of videos fits in memory,
shards from several processes add up, and a saved file can be extended. Covariance is
the biased one, E[xxᵀ] − μμᵀ, as in the FVD reference implementation.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import scipy.linalg

from mmgen.io import atomic_path

STATS_FORMAT = "mmgen-fvd-stats-v1"
_FIELDS = ("format", "protocol_key", "metadata", "count", "sum", "sum_outer")


class FeatureStats:
    """Running float64 sums of feature vectors of one set (real or generated)."""

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sum_outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, features) -> None:
        x = np.asarray(_to_numpy(features), dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be [N, {self.dim}], got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or Inf (broken extractor or input video)")
        self.count += x.shape[0]
        self.sum += x.sum(axis=0)
        self.sum_outer += x.T @ x

    def merge(self, other: FeatureStats) -> FeatureStats:
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dims {self.dim} and {other.dim}")
        self.count += other.count
        self.sum += other.sum
        self.sum_outer += other.sum_outer
        return self

    @property
    def mean(self) -> np.ndarray:
        self._require(1)
        return self.sum / self.count

    @property
    def cov(self) -> np.ndarray:
        self._require(2)
        mu = self.mean
        return self.sum_outer / self.count - np.outer(mu, mu)

    def _require(self, n: int) -> None:
        if self.count < n:
            raise ValueError(f"need at least {n} feature vectors, have {self.count}")

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike, protocol_key: str, metadata: dict) -> None:
        """Atomic .npz: the sums plus the protocol key and a JSON metadata record."""
        if Path(path).suffix != ".npz":  # np.savez would silently append it
            raise ValueError(f"statistics file name must end in .npz: {str(path)!r}")
        with atomic_path(path) as tmp:
            np.savez(
                tmp,
                format=np.array(STATS_FORMAT),
                protocol_key=np.array(protocol_key),
                metadata=np.array(json.dumps(metadata, sort_keys=True)),
                count=np.array(self.count, dtype=np.int64),
                sum=self.sum,
                sum_outer=self.sum_outer,
            )

    @classmethod
    def load(cls, path: str | os.PathLike, protocol_key: str) -> tuple[FeatureStats, dict]:
        """Load statistics saved for ``protocol_key``; refuse those of any other protocol."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"statistics file not found: {str(path)!r}")
        try:
            with np.load(path, allow_pickle=False) as data:
                fields = {key: data[key] for key in data.files}
            missing = sorted(set(_FIELDS) - set(fields))
            if missing:
                raise ValueError(f"missing {missing}")
            fmt = str(fields["format"])
        except (ValueError, OSError) as err:
            raise ValueError(f"{str(path)!r} is not an mmgen FVD statistics file ({err})") from None
        if fmt != STATS_FORMAT:
            raise ValueError(f"{str(path)!r} has format {fmt!r}, expected {STATS_FORMAT!r}")
        saved_key = str(fields["protocol_key"])
        if saved_key != protocol_key:
            raise ValueError(
                f"statistics in {str(path)!r} were computed for protocol {saved_key!r}, "
                f"not {protocol_key!r}; recompute them with this protocol"
            )
        stats = cls(int(fields["sum"].shape[0]))
        stats.count = int(fields["count"])
        stats.sum = fields["sum"].astype(np.float64)
        stats.sum_outer = fields["sum_outer"].astype(np.float64)
        return stats, json.loads(str(fields["metadata"]))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||μ1 − μ2||² + tr(Σ1 + Σ2 − 2·sqrtm(Σ1 Σ2)), float64, real part of the matrix root."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}")
    mean_term = np.square(mu1 - mu2).sum()
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.real(mean_term + np.trace(sigma1 + sigma2 - 2.0 * root)))


def frechet_distance_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def _to_numpy(x):
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        return x.detach().to("cpu").double().numpy()
    return x
