"""VideoAR training throughput: tokens/s and model FLOPs utilisation (MFU).

    python bench/train_bench.py                                   # CPU: tiny preset
    python bench/train_bench.py --preset videoar-l --batch 4,8,16 --peak-tflops 989   # CUDA: Flex + bf16

One training step = forward + bitwise BCE + backward + AdamW (fused on CUDA) on synthetic
next-scale inputs and random bit targets (the tokenizer is not timed: train from a latent
cache).  On CUDA the step runs under bf16 autocast with the group-causal FlexAttention
(block mask built once per layout).  tokens/s counts every sequence token (prefix + visual);
model FLOPs per token come from mmgen.ar.flops (attention only over allowed pairs, training =
3x forward, checkpoint recomputation not counted).  MFU = achieved model FLOP/s / --peak-tflops
(dense bf16 peak of the card; e.g. H100/H200 SXM: 989).  Rows after the first show the ratio of
their tokens/s to the first row, measured in the same run.  ``--json PATH`` also writes the rows
(out-of-memory batches included, as status "oom") for bench/gpu_check.sh.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchutil import median_seconds, write_json

from mmgen.ar import VideoAR
from mmgen.ar.flops import forward_flops
from mmgen.ar.presets import preset_config


def bench(preset: str, batch: int, device: torch.device, steps: int, warmup: int, backend: str,
          compile_blocks: bool, grad_ckpt: bool, num_frames: int | None) -> dict:
    cfg = preset_config(preset, attn_backend=backend, grad_checkpointing=grad_ckpt)
    if num_frames:
        cfg["num_frames"] = num_frames
    torch.manual_seed(0)
    model = VideoAR(**cfg).to(device).train()
    if compile_blocks:
        for block in model.blocks:
            block.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                            fused=device.type == "cuda")
    layout = model.layout()
    inputs = [torch.randn(batch, layout.num_frames, h, w, cfg["bits"], device=device) for h, w in layout.scales]
    target = (torch.rand(batch, layout.num_visual, cfg["bits"], device=device) > 0.5).float()
    cond = (torch.randint(0, cfg["num_classes"], (batch,)) if cfg["cond"] == "class"
            else ["a small red circle moving left"] * batch)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            logits = model(cond, inputs)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = median_seconds(step, device, steps, warmup)
    flops = forward_flops(model.config)
    tokens = batch * flops["tokens"]
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"step_s": t, "tokens_s": tokens / t, "tflops": tokens * flops["train_per_token"] / t / 1e12,
            "L": flops["tokens"], "mem_gib": peak_mem}


def main(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="videoar-l" if cuda else "tiny")
    p.add_argument("--batch", default="8" if cuda else "2", help="comma-separated batch sizes")
    p.add_argument("--num-frames", type=int, default=None, help="latent frames (default: the preset's)")
    p.add_argument("--steps", type=int, default=10 if cuda else 3)
    p.add_argument("--warmup", type=int, default=3 if cuda else 1)
    p.add_argument("--backend", default="auto", help="attention backend (auto = Flex on CUDA, SDPA on CPU)")
    p.add_argument("--compare-sdpa", action="store_true", help="also run the SDPA dense-mask backend")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense peak of the device for MFU")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    rows = []

    def save():
        # Rewritten after every row, so a run stopped by a timeout still leaves the rows it finished.
        if args.json:
            write_json(args.json, {"device": name, "torch": torch.__version__, "preset": args.preset,
                                   "compile": args.compile, "grad_ckpt": args.grad_ckpt,
                                   "peak_tflops": args.peak_tflops, "rows": rows})

    print(f"device={device} ({name}) torch={torch.__version__} preset={args.preset} "
          f"dtype={'bf16 autocast' if device.type == 'cuda' else 'fp32'} compile={args.compile} grad_ckpt={args.grad_ckpt}")
    backends = [args.backend] + (["sdpa"] if args.compare_sdpa else [])
    print(f"{'backend':<8} {'batch':>5} {'L':>6} {'step ms':>9} {'tokens/s':>11} {'TFLOP/s':>8} {'MFU':>7} "
          f"{'mem GiB':>8} {'ratio':>6}")
    base = None
    for backend in backends:
        for b in [int(x) for x in args.batch.split(",")]:
            try:
                r = bench(args.preset, b, device, args.steps, args.warmup, backend, args.compile,
                          args.grad_ckpt, args.num_frames)
            except torch.cuda.OutOfMemoryError:
                print(f"{backend:<8} {b:>5}  out of memory")
                rows.append({"backend": backend, "batch": b, "status": "oom"})
                torch.cuda.empty_cache()
                save()
                continue
            base = base or r["tokens_s"]
            mfu = f"{r['tflops'] / args.peak_tflops:.1%}" if args.peak_tflops else "n/a"
            print(f"{backend:<8} {b:>5} {r['L']:>6} {r['step_s'] * 1e3:>9.1f} {r['tokens_s']:>11.0f} "
                  f"{r['tflops']:>8.2f} {mfu:>7} {r['mem_gib']:>8.1f} {r['tokens_s'] / base:>5.2f}x")
            rows.append({"backend": backend, "batch": b, "status": "ok", **r,
                         "mfu": r["tflops"] / args.peak_tflops if args.peak_tflops else None})
            save()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
