"""How much memory a sampling run needs, checked before anything is allocated.

The estimate is deliberately simple and on the high side: the KV cache (every layer keeps keys
and values of the prefix plus the kept frames, for the conditional and the unconditional rows of
CFG), the sampled codes, and the tokenizer's decode of the whole clip (the widest decoder
activation at full resolution, a few alive at once). It is compared with the memory free on the
device; a run that would not fit is refused with the estimate and the ways around it
(``mmgen extend`` chains short windows; a frame window bounds the cache).
"""
from __future__ import annotations

import os

from mmgen.cli_utils import UserError

# Decoder activations alive at once at full resolution (input, output, residual, norm).
_DECODE_LIVE = 4
# Share of the free memory a run may plan to use (the rest: allocator slack, the model, Python).
_USABLE = 0.8


def estimate_bytes(pipe, batch_size: int, num_frames: int, window: int | None, guided: bool) -> dict[str, int]:
    """Bytes of the big allocations of ``pipe(...)`` for ``batch_size`` videos of ``num_frames``
    frames: {"kv_cache", "codes", "decode"}. ``window``: frames of history kept (None = all)."""
    model, tok = pipe.transformer, pipe.tokenizer
    cfg = model.config
    latent_frames = 1 + max(0, -(-(num_frames - 1) // pipe.temporal_factor))
    layout = model.layout(1)  # tokens per frame and prefix length do not depend on the frame count
    kept = latent_frames if window is None else min(latent_frames, window + 1)
    rows = batch_size * (2 if guided else 1)
    kv_bytes = 2 if pipe.device.type == "cuda" else 4  # bf16 cache on CUDA, fp32 elsewhere
    kv = cfg.depth * 2 * rows * (layout.prefix_len + kept * layout.tokens_per_frame) * cfg.width * kv_bytes
    codes = batch_size * latent_frames * layout.tokens_per_frame * cfg.bits * 4 * 2
    h, w = pipe.frame_size
    widest = tok.config.base_channels * max(tok.config.channel_mult)
    frames = 1 + (latent_frames - 1) * pipe.temporal_factor
    decode = batch_size * frames * h * w * widest * 4 * _DECODE_LIVE
    return {"kv_cache": kv, "codes": codes, "decode": decode}


def free_bytes(device) -> int | None:
    """Memory free on ``device`` (CUDA: the driver's count; CPU: available RAM); None if unknown."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(pipe, batch_size: int, num_frames: int, window: int | None, guided: bool) -> None:
    """Raise UserError with the estimate and the alternatives when sampling would not fit."""
    parts = estimate_bytes(pipe, batch_size, num_frames, window, guided)
    free = free_bytes(pipe.device)
    need = sum(parts.values())
    if free is None or need <= _USABLE * free:
        return
    gib = 2 ** 30
    detail = ", ".join(f"{k.replace('_', ' ')} {v / gib:.1f}" for k, v in parts.items())
    window_hint = ("a smaller frame window (--window)" if pipe.transformer.config.frame_window is not None
                   else "a model trained with a frame window (bounded cache)")
    raise UserError(
        f"{batch_size} video(s) of {num_frames} frames need about {need / gib:.1f} GiB ({detail}) but "
        f"{free / gib:.1f} GiB are free on {pipe.device.type}; generate fewer frames (or --batch-size 1) and "
        f"continue them with `mmgen extend --video V --seconds S`, or use {window_hint}")
