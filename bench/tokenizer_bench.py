"""Tokenizer speed and memory (``--part speed``, the default) and shape ceiling (``--part ceiling``).

    python bench/tokenizer_bench.py                       # default tiny model, 64 and 256 px, 17 frames
    python bench/tokenizer_bench.py --model runs/tokenizer_tiny/export --sizes 64 --repeats 5
    python bench/tokenizer_bench.py --part ceiling --model DIR --clips 16 [--background textured]
    python bench/tokenizer_bench.py --part ceiling --blur 0.75     # the metric on blurred clips

Ceiling: real one-object MovingShapes clips (64 px, 17 frames) of every shape x size, the i-th
clip of a cell in colour i mod 8 (all motions), tokenized and detokenized (the codes a generator would emit), then
scored by the analytic MovingShapes benchmark against their captions: a generator that draws
exactly the codes of real clips scores no better, so a shape the round trip loses cannot be
learned through this tokenizer. The clean clips are scored too (the metric's own error).

Speed:

Every (size, mode, op) cell runs in a fresh subprocess so its peak memory is its own: on CPU the
peak resident-set growth over the process's state before the first call (ru_maxrss minus the
RSS then; the decoder gets a random latent so no encoder peak is mixed in), on CUDA
``max_memory_allocated`` minus what was allocated before.
Chunked = encode 1 + 4 frames then 4 at a time, decode 1 + 1 latent frames then 1 at a time.
On CUDA a third mode times ``fast_decode`` (bf16 autocast + channels_last_3d). Ratios are
against the full pass of the same size, measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measure(args: argparse.Namespace) -> dict:
    import torch

    from mmgen.tokenizer import VideoTokenizer

    torch.manual_seed(0)
    device = torch.device(args.device)
    tok = (VideoTokenizer.from_pretrained(args.model, low_cpu_mem_usage=False) if args.model else VideoTokenizer())
    tok = tok.to(device).eval()
    s, f = args.size, args.frames
    x = torch.rand(1, 3, f, s, s, device=device) * 2 - 1
    chunk_enc = tok.temporal_compression if args.mode == "chunked" else None
    chunk_dec = 1 if args.mode == "chunked" else None
    # A random latent of the right shape: decoding cost does not depend on its values, and not
    # encoding here keeps the encoder's peak out of the decoder's measurement.
    z = torch.randn(1, tok.config.latent_dim, tok.latent_frames(f), s // tok.spatial_compression,
                    s // tok.spatial_compression, device=device)
    with torch.no_grad():
        if args.op == "encode":
            run = lambda: tok.encode(x, chunk_frames=chunk_enc)  # noqa: E731
        elif args.mode == "fast":
            run = lambda: tok.fast_decode(z, chunk_frames=chunk_dec)  # noqa: E731
        else:
            run = lambda: tok.decode(z, chunk_frames=chunk_dec)  # noqa: E731
        # Baseline before the first call: the CPU high-water mark then covers the op's peak.
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _rss_mb()
        run()  # warm-up (allocator, kernel selection)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
        if device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"ms": statistics.median(times), "peak_mb": max(peak, 0.0)}


CEILING_KEYS = ("shape", "color", "size", "motion")


def ceiling_clips(clips: int, seed: int = 7, background: str = "plain") -> dict[tuple[str, str], list]:
    """``clips`` one-object MovingShapes samples per (shape, size), the i-th in colour i mod 8."""
    from mmgen.data.moving_shapes import COLORS, SHAPES, SIZES, MovingShapes

    colors = list(COLORS)
    pool = MovingShapes(200 * clips * len(SHAPES), seed=seed, max_objects=1, background=background)
    cells: dict[tuple[str, str], list] = {(shape, size): [] for shape in SHAPES for size in SIZES}
    for i in range(len(pool)):
        sample = pool.sample(i)
        spec = sample.objects[0]
        cell = cells[(spec["shape"], spec["size"])]
        if len(cell) < clips and spec["color"] == colors[len(cell) % len(colors)]:
            cell.append(sample)
        if all(len(c) == clips for c in cells.values()):
            return cells
    raise RuntimeError(f"pool of {len(pool)} clips did not fill every cell with {clips} clips")


def tokenizer_ceiling(tokenizer, clips: int = 16, seed: int = 7, background: str = "plain", blur: float = 0.0) -> dict:
    """Round-trip adherence per (shape, size): ``{"shape/size": {"shape", "color", "size", "motion",
    "unquantized_shape", "clean_shape", "read_as": {shape: count}}}`` (fractions of clips): the
    clips tokenized and detokenized (the generator's path), ``unquantized_shape`` decoded from the
    continuous latent, ``clean_shape`` before any round trip (the metric's own error).
    ``tokenizer=None``: the "round trip" is a Gaussian blur of ``blur`` pixels (the metric's
    robustness to softened edges; both columns then hold the blurred clips' scores)."""
    from collections import Counter

    import torch

    from mmgen.data.clips import to_uint8
    from mmgen.metrics.shapes import detect_objects, expected_from_caption, score_video

    rows = {}
    for (shape, size), samples in ceiling_clips(clips, seed, background).items():
        frames = torch.stack([s.frames for s in samples])  # uint8 [N, T, H, W, C]
        if tokenizer is None:
            rec = rec_ae = [_blurred(f, blur) for f in frames]
        else:
            with torch.no_grad():
                z = tokenizer.encode(frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0)
                # What a generator's codes decode to, and the autoencoder alone (no quantizer).
                rec = [to_uint8(r.cpu()) for r in tokenizer.detokenize(tokenizer.quantize(z).codes)]
                rec_ae = [to_uint8(r.cpu()) for r in tokenizer.decode(z).clamp(-1, 1)]
        expected = [expected_from_caption(s.caption) for s in samples]
        scores = [score_video(r, e) for r, e in zip(rec, expected)]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        rows[f"{shape}/{size}"] = {
            **{k: mean([s[k] for s in scores]) for k in CEILING_KEYS},
            "unquantized_shape": mean([score_video(r, e)["shape"] for r, e in zip(rec_ae, expected)]),
            "clean_shape": mean([score_video(s.frames, e)["shape"] for s, e in zip(samples, expected)]),
            "read_as": dict(Counter(o["shape"] for r in rec for o in detect_objects(r))),
        }
    return rows


def _blurred(frames, sigma: float):
    """uint8 [T, H, W, C] frames, each blurred spatially by a Gaussian of ``sigma`` pixels."""
    import numpy as np
    import scipy.ndimage
    import torch

    out = scipy.ndimage.gaussian_filter(frames.numpy().astype(np.float32), (0, sigma, sigma, 0))
    return torch.from_numpy(np.clip(out.round(), 0, 255).astype(np.uint8))


def print_ceiling(rows: dict, title: str) -> None:
    print(title)
    print("| shape/size | " + " | ".join(CEILING_KEYS) + " | shape without quantizer | clean clips' shape "
          "| round trip read as |")
    print("|---" * (len(CEILING_KEYS) + 4) + "|")
    for cell, r in rows.items():
        read = ", ".join(f"{k} {v}" for k, v in sorted(r["read_as"].items(), key=lambda kv: -kv[1]))
        print(f"| {cell} | " + " | ".join(f"{r[k]:.3f}" for k in CEILING_KEYS) + f" | {r['unquantized_shape']:.3f} | {r['clean_shape']:.3f} | {read} |")
    worst = {k: min(r[k] for r in rows.values()) for k in CEILING_KEYS}
    print("worst cell: " + ", ".join(f"{k} {v:.3f}" for k, v in worst.items()))


def part_ceiling(args: argparse.Namespace) -> None:
    from importlib.resources import files

    from mmgen.tokenizer import VideoTokenizer

    if args.blur:
        model, tok = f"Gaussian blur of {args.blur} px instead of a tokenizer", None
    else:
        model = args.model or str(files("mmgen") / "assets" / "default" / "tokenizer")
        tok = VideoTokenizer.from_pretrained(model).eval()
    rows = tokenizer_ceiling(tok, args.clips, args.seed, args.background, args.blur)
    print_ceiling(rows, f"Tokenizer round trip ({model}): {args.clips} real clips per shape/size, "
                        f"colours cycled, {args.background} background")
    if args.json:
        from benchutil import write_json

        write_json(args.json, {"rows": rows, "args": vars(args)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("speed", "ceiling"), default="speed")
    p.add_argument("--model", default=None, help="pretrained folder (speed default: VideoTokenizer() with random "
                   "weights; ceiling default: the shipped tokenizer)")
    p.add_argument("--clips", type=int, default=16, help="ceiling: clips per shape/size")
    p.add_argument("--seed", type=int, default=7, help="ceiling: MovingShapes seed")
    p.add_argument("--background", choices=("plain", "textured"), default="plain", help="ceiling: clip background")
    p.add_argument("--blur", type=float, default=0.0, help="ceiling: blur the clips by this many pixels "
                   "instead of a tokenizer round trip (the metric's robustness)")
    p.add_argument("--json", default=None, help="ceiling: write the rows here")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per measurement")
    p.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--op", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part == "ceiling":
        part_ceiling(args)
        return
    if args.single:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(_measure(args)))
        return

    modes = ["full", "chunked"] + (["fast"] if args.device.startswith("cuda") else [])
    print(f"device={args.device} frames={args.frames} repeats={args.repeats} threads={args.threads} "
          f"model={args.model or 'VideoTokenizer() (tiny default)'}")
    header = f"{'size':>5} {'mode':>8} | {'enc ms':>9} {'dec ms':>9} | {'enc MB':>8} {'dec MB':>8} | " \
             f"{'enc t/full':>10} {'dec t/full':>10} {'enc m/full':>10} {'dec m/full':>10}"
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        results: dict[str, dict[str, dict]] = {}
        for mode in modes:
            results[mode] = {}
            for op in ("encode", "decode"):
                if mode == "fast" and op == "encode":
                    results[mode][op] = results["full"]["encode"]
                    continue
                cmd = [sys.executable, __file__, "--single", "--size", str(size), "--mode", mode, "--op", op,
                       "--frames", str(args.frames), "--repeats", str(args.repeats), "--device", args.device,
                       "--threads", str(args.threads)] + (["--model", args.model] if args.model else [])
                # mmap every block >= 64 KiB so freed tensors leave the RSS at once: the CPU
                # high-water mark then tracks live tensors instead of malloc's cached arenas.
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MALLOC_MMAP_THRESHOLD_": "65536"}
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode:
                    raise SystemExit(f"measurement {size}/{mode}/{op} failed:\n{out.stderr[-2000:]}")
                results[mode][op] = json.loads(out.stdout.strip().splitlines()[-1])
            full, r = results["full"], results[mode]
            ratio = lambda a, b: a / b if b > 0 else float("nan")  # noqa: E731
            print(f"{size:>5} {mode:>8} | {r['encode']['ms']:>9.1f} {r['decode']['ms']:>9.1f} | "
                  f"{r['encode']['peak_mb']:>8.1f} {r['decode']['peak_mb']:>8.1f} | "
                  f"{ratio(r['encode']['ms'], full['encode']['ms']):>10.2f} "
                  f"{ratio(r['decode']['ms'], full['decode']['ms']):>10.2f} "
                  f"{ratio(r['encode']['peak_mb'], full['encode']['peak_mb']):>10.2f} "
                  f"{ratio(r['decode']['peak_mb'], full['decode']['peak_mb']):>10.2f}")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
