"""Tokenizer speed and memory: encode / decode ms per clip and peak memory, full vs chunked.

    python bench/tokenizer_bench.py                       # default tiny model, 64 and 256 px, 17 frames
    python bench/tokenizer_bench.py --model runs/tokenizer_tiny/export --sizes 64 --repeats 5

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="pretrained folder (default: VideoTokenizer() with random weights)")
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
