"""Timing and result files shared by the bench scripts (imported as a sibling module: `python bench/x.py`)."""
from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mmgen.io import atomic_path


def sync(device: torch.device) -> None:
    """Wait for queued device work, so host clocks measure it (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> float:
    """Median wall time of ``fn()`` over ``iters`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` as JSON at ``path`` atomically (bench/gpu_check.sh collects these)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(payload, indent=1))
