"""The learning-rate schedule every trainer uses: linear warm-up, then cosine decay to a floor."""
from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, warmup: int, progress: float, floor: float) -> float:
    """LR factor at ``step``: ``(step + 1) / warmup`` during warm-up, then a cosine from 1 down to
    ``floor`` as ``progress`` (clamped to [0, 1]) goes from 0 to 1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, max(0.0, progress))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_schedule(opt: torch.optim.Optimizer, warmup: int, total: int,
                           floor: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR: warm-up over ``warmup`` steps, cosine to ``floor`` at step ``total``."""
    warmup = max(0, int(warmup))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: warmup_cosine(step, warmup, (step - warmup) / max(1, total - warmup), floor))
