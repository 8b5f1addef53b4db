"""Sampling far past the training length: motion adherence and peak memory, 17 vs 129 frames.

    python bench/long_sample_bench.py [--model mmgen/assets/default] [--frames 17 129] [--seeds 0 100]

Each frame count runs in a fresh process (peak RSS is per process): the pipeline is loaded,
one warm-up video sampled, then the prompts (one object per motion direction, several
colours) at each seed. Reported: wall time, peak RSS and peak RSS above the loaded
pipeline's (the sampling's own memory), both as ratios to the first frame count, and motion
adherence from the analytic MovingShapes benchmark (videos and sidecars in ``--out``, so
``mmgen eval shapes --videos OUT/f129_s0`` reproduces a row), over the whole video, over its
first ``--head`` frames, and per window: the video cut into consecutive ``--head``-frame windows
(the training clip's length), each scored alone, averaged. The windows say whether motion keeps
going: a clip moves half the frame side in training, so a long sample's object reaches an edge
within a few seconds, and an object that stops there reads "static" in every later window
(MovingShapes ``edges="wrap"`` trains it to go on through the edge), while the whole-video column
also counts a little drift across the motion as a second moving axis.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [f"a large {c} circle moving {m}" for c in ("red", "white") for m in ("left", "right", "up", "down")]

CHILD = r"""
import json, os, resource, sys, time
import torch
from mmgen.pipelines.outputs import sidecar, write_sample
from mmgen.pipelines.videoar import VideoARPipeline, to_uint8_videos
torch.set_grad_enabled(False)
model, frames, seed, out, prompts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
pipe = VideoARPipeline.from_pretrained(model)
pipe(prompt=prompts[:1], num_frames=5, seed=0, progress=False)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
os.makedirs(out, exist_ok=True)
settings = pipe.resolve_settings()
for i, p in enumerate(prompts):  # one video at a time: the memory of one long sample
    video = to_uint8_videos(pipe(prompt=[p], num_frames=frames, seed=seed + i, progress=False).frames)[0]
    write_sample(os.path.join(out, f"{i:04d}.mp4"), video,
                 sidecar(prompt=p, class_id=None, seed=seed + i, model=model, num_frames=frames, fps=pipe.fps,
                         settings=settings), fps=pipe.fps)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall_s": wall, "peak_kib": peak, "base_kib": base}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "mmgen/assets/default"))
    p.add_argument("--frames", type=int, nargs="+", default=[17, 129])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 100])
    p.add_argument("--out", default="runs/long_sample_bench")
    p.add_argument("--head", type=int, default=17, help="frames scored by the 'first frames' motion column")
    args = p.parse_args()
    from mmgen.io import read_video
    from mmgen.metrics.shapes import evaluate_folder, prompts_for_folder, score_video

    def head_motion(folder: str) -> float:
        scores = [score_video(read_video(path)[:args.head], expected)["motion"]
                  for path, expected in prompts_for_folder(folder)[0]]
        return float(np.mean(scores))

    def window_motion(folder: str) -> float:
        scores = []
        for path, expected in prompts_for_folder(folder)[0]:
            video = read_video(path)
            scores += [score_video(video[i:i + args.head], expected)["motion"]
                       for i in range(0, len(video) - args.head + 1, args.head)]
        return float(np.mean(scores))

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows = []
    for frames in args.frames:
        runs = []
        for seed in args.seeds:
            out = os.path.join(args.out, f"f{frames}_s{seed}")
            res = subprocess.run([sys.executable, "-c", CHILD, args.model, str(frames), str(seed), out,
                                  json.dumps(PROMPTS)], env=env, capture_output=True, text=True)
            if res.returncode:
                print(res.stderr[-2000:], file=sys.stderr)
                return 1
            stats = json.loads(res.stdout.strip().splitlines()[-1])
            stats["motion"] = evaluate_folder(out, progress=False)["summary"]["motion"]["mean"]
            stats["head_motion"] = head_motion(out)
            stats["window_motion"] = window_motion(out)
            runs.append(stats)
        rows.append((frames, runs))
    ref_peak = np.mean([r["peak_kib"] for r in rows[0][1]])
    ref_own = np.mean([r["peak_kib"] - r["base_kib"] for r in rows[0][1]])
    print(f"model {args.model}; {len(PROMPTS)} prompts x seeds {args.seeds}; one video at a time")
    print(f"| frames | s / video | peak RSS MiB (x first) | sampling's own peak MiB (x first) | motion (spread) "
          f"| motion, first {args.head} frames | motion per {args.head}-frame window |")
    print("|---|---|---|---|---|---|---|")
    for frames, runs in rows:
        peak = np.mean([r["peak_kib"] for r in runs])
        own = np.mean([r["peak_kib"] - r["base_kib"] for r in runs])
        wall = np.mean([r["wall_s"] for r in runs]) / len(PROMPTS)
        motion = [r["motion"] for r in runs]
        head = np.mean([r["head_motion"] for r in runs])
        windows = np.mean([r["window_motion"] for r in runs])
        print(f"| {frames} | {wall:.2f} | {peak / 1024:.0f} ({peak / ref_peak:.2f}x) | {own / 1024:.0f} "
              f"({own / max(ref_own, 1):.2f}x) | {np.mean(motion):.2f} ({np.ptp(motion):.2f}) | {head:.2f} | {windows:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
