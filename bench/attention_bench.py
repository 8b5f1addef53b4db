"""Block-causal (group-causal) attention: FlexAttention with a BlockMask vs dense SDPA.

    python bench/attention_bench.py                      # CUDA: 17 latent frames x 8 scales (~9k tokens), bf16
    python bench/attention_bench.py --frames 5 --scales 1,2,4,8 --heads 4 --head-dim 64   # small, CPU

Rows (same q/k/v, same layout):
  dense (no mask)       SDPA without a mask — FlashAttention on CUDA; the baseline (ratio 1.00)
  sdpa + dense mask     SDPA with the materialised bool [L, L] group-causal mask (the reference path)
  flex + block mask     mmgen.nn.attention.flex: compiled on CUDA, skips masked tiles
Times are medians over --iters runs after warm-up, forward only or forward+backward (--backward).
The block mask is built once per layout (its build time is printed separately).
``--json PATH`` also writes the rows for bench/gpu_check.sh.
"""
from __future__ import annotations

import argparse
import time

import torch

from benchutil import median_seconds, sync, write_json

from mmgen.ar.layout import GroupLayout
from mmgen.nn import attention
from mmgen.nn.attention import flex


def main(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=17 if cuda else 3)
    p.add_argument("--scales", default="1,2,3,4,6,8,12,16" if cuda else "1,2,4,8")
    p.add_argument("--prefix", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=12 if cuda else 4)
    p.add_argument("--head-dim", type=int, default=128 if cuda else 32)
    p.add_argument("--iters", type=int, default=20 if cuda else 3)
    p.add_argument("--warmup", type=int, default=5 if cuda else 1)
    p.add_argument("--backward", action="store_true", help="time forward+backward")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    layout = GroupLayout(args.prefix, args.frames, [int(s) for s in args.scales.split(",")])
    L = layout.length
    mask = layout.attention_mask().to(device)
    t0 = time.perf_counter()
    mask.block_mask(device)
    sync(device)
    build_ms = (time.perf_counter() - t0) * 1e3
    mask.dense(device)  # cached: keep building the dense mask out of the timed runs
    q, k, v = (torch.randn(args.batch, args.heads, L, args.head_dim, device=device, dtype=dtype,
                           requires_grad=args.backward) for _ in range(3))
    grad = torch.randn_like(q) if args.backward else None

    def run(fn):
        def step():
            out = fn()
            if grad is not None:
                out.backward(grad)
        return step

    rows = [
        ("dense (no mask)", run(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))),
        ("sdpa + dense mask", run(lambda: attention(q, k, v, mask, backend="sdpa"))),
        ("flex + block mask", run(lambda: flex(q, k, v, mask))),
    ]
    with torch.no_grad():
        err = (flex(q, k, v, mask).float() - attention(q, k, v, mask, backend="sdpa").float()).abs().max()
    allowed = layout.allowed_pairs()
    print(f"device={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}) torch={torch.__version__} "
          f"dtype={dtype} L={L} ({args.frames} frames x scales {args.scales} + prefix {args.prefix}) "
          f"B={args.batch} H={args.heads} D={args.head_dim} pass={'fwd+bwd' if args.backward else 'fwd'}")
    print(f"allowed pairs {allowed} = {allowed / L / L:.1%} of dense; block mask built in {build_ms:.1f} ms "
          f"(once per layout); max |flex - sdpa| = {err:.2e}")
    print(f"{'kernel':<20} {'ms':>10} {'vs dense':>9}")
    base = None
    results = []
    for name, fn in rows:
        t = median_seconds(fn, device, args.iters, args.warmup)
        base = base or t
        print(f"{name:<20} {t * 1e3:>10.3f} {t / base:>8.2f}x")
        results.append({"kernel": name, "ms": t * 1e3, "vs_dense": t / base})
    if args.json:
        write_json(args.json, {
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "dtype": str(dtype), "L": L, "frames": args.frames,
            "scales": args.scales, "batch": args.batch, "heads": args.heads, "head_dim": args.head_dim,
            "pass": "fwd+bwd" if args.backward else "fwd", "allowed_fraction": allowed / L / L,
            "block_mask_build_ms": build_ms, "max_abs_err_flex_vs_sdpa": float(err), "rows": results})


if __name__ == "__main__":
    main()
