"""FVD speed: I3D feature extraction (videos/s) and the Fréchet distance at 400 dims.

    python bench/fvd_bench.py [--device cpu|cuda] [--frames 16] [--batches 1,4] [--repeats 3]

The PyTorch InceptionI3d runs with random weights (speed does not depend on them) on
uint8 [B, 3, T, 224, 224] clips, preprocessing included. Ratios are against the first
row of each table, measured in the same run. On CUDA a bf16 row is added.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchutil import sync

from mmgen.metrics.frechet import FeatureStats, frechet_distance_from_stats
from mmgen.metrics.i3d import PyTorchI3D


def time_extraction(device: torch.device, dtype: torch.dtype, batch: int, frames: int, repeats: int) -> float:
    """Seconds per batch (best of ``repeats`` after one warm-up)."""
    extractor = PyTorchI3D(None, device=device, dtype=dtype)
    videos = torch.randint(0, 256, (batch, 3, frames, 224, 224), dtype=torch.uint8)
    extractor(videos)  # warm-up (cuDNN autotune, allocator)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        extractor(videos)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def time_frechet(n: int, dim: int, repeats: int) -> tuple[float, float]:
    """(seconds to accumulate statistics of n features, seconds for the distance)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, dim)), rng.standard_normal((n, dim)) + 0.1
    accumulate, distance = float("inf"), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        sa, sb = FeatureStats(dim), FeatureStats(dim)
        sa.update(a)
        sb.update(b)
        accumulate = min(accumulate, time.perf_counter() - start)
        start = time.perf_counter()
        frechet_distance_from_stats(sa, sb)
        distance = min(distance, time.perf_counter() - start)
    return accumulate, distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    console = Console()

    configs = [(torch.float32, b) for b in map(int, args.batches.split(","))]
    if device.type == "cuda":
        configs += [(torch.bfloat16, b) for b in map(int, args.batches.split(","))]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    table = Table(title=f"I3D feature extraction — {device} ({where}), {args.frames}x224x224 clips")
    for column in ("dtype", "batch", "s / batch", "videos / s", "ratio vs first row"):
        table.add_column(column)
    baseline = None
    for dtype, batch in configs:
        seconds = time_extraction(device, dtype, batch, args.frames, args.repeats)
        rate = batch / seconds
        baseline = baseline or rate
        table.add_row(str(dtype).removeprefix("torch."), str(batch), f"{seconds:.3f}", f"{rate:.2f}",
                      f"{rate / baseline:.2f}x")
    console.print(table)

    table = Table(title="Fréchet distance, 400-d features (float64, scipy sqrtm)")
    for column in ("features per set", "accumulate stats (s)", "distance (s)", "distance ratio vs first row"):
        table.add_column(column)
    first = None
    for n in (2048, 10000):
        accumulate, distance = time_frechet(n, 400, args.repeats)
        first = first or distance
        table.add_row(str(n), f"{accumulate:.4f}", f"{distance:.4f}", f"{distance / first:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
