"""Decoding speed of the video backends: frames/s for decord vs PyAV (ratio = decord / PyAV).

Two access patterns, as data loading uses them: decode a whole video, and cut one 17-frame
clip from the middle of a longer one (random access). Test videos are MovingShapes clips
written with mmgen.io.write_video (H.264, yuv420p) into a temporary folder.

    python bench/io_bench.py [--frames 96] [--repeats 5] [--sizes 64 256]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mmgen.data import MovingShapes
from mmgen.io import available_backends, read_video, write_video


def make_video(directory: Path, size: int, num_frames: int) -> Path:
    frames = MovingShapes(1, size=size, num_frames=num_frames, seed=0, background="textured").sample(0).frames
    path = directory / f"shapes_{size}.mp4"
    write_video(path, frames, fps=25)
    return path


def frames_per_second(path: Path, backend: str, indices: list[int] | None, repeats: int) -> float:
    read_video(path, frames=indices, backend=backend)  # warm up (file cache, library init)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        video = read_video(path, frames=indices, backend=backend)
        times.append(time.perf_counter() - start)
    return video.shape[0] / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=96, help="frames per test video")
    parser.add_argument("--repeats", type=int, default=5, help="timed reads per cell (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    torch.set_num_threads(1)

    backends = [b for b in ("decord", "pyav") if b in available_backends()]
    if len(backends) < 2:
        raise SystemExit(f"needs decord and PyAV, found only {backends}")
    clip_start = (args.frames - 17) // 2
    patterns = {"whole video": None, "17-frame clip": list(range(clip_start, clip_start + 17))}

    print(f"decode speed, frames/s (median of {args.repeats}), {args.frames}-frame H.264 videos, 1 thread")
    header = f"{'size':>9} | {'pattern':<14} | {'decord':>9} | {'pyav':>9} | {'decord/pyav':>11}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = make_video(Path(tmp), size, args.frames)
            for name, indices in patterns.items():
                fps = {b: frames_per_second(path, b, indices, args.repeats) for b in backends}
                ratio = fps["decord"] / fps["pyav"]
                print(f"{size:>4}x{size:<4} | {name:<14} | {fps['decord']:>9.0f} | {fps['pyav']:>9.0f} | {ratio:>10.2f}x")


if __name__ == "__main__":
    main()
