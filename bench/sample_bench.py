"""Sampling speed: KV-cached vs recomputed decoding, batch 1 vs 8 (and the VideoAR-L shape on CUDA).

    python bench/sample_bench.py [--repeats 2] [--device cpu|cuda] [--skip-large]

Prints one table. Rows:

* ``tiny``: the default model's generator shape (text prefix of 40 bytes, 5 latent frames x
  scales 1/2/4/8, width 128, depth 3) with random weights — or ``--model DIR`` to time a saved
  pipeline's transformer. Timed: token sampling only (the tokenizer decode is a separate row).
* ``videoar-l`` (CUDA only): the paper's L transformer (24 x 1536, 12 heads) with random
  weights on the UCF shape — class prefix, 5 latent frames of 8x8 with 6 scales
  (1, 2, 3, 4, 6, 8) = 30 groups, d = 48 bits — in bf16 autocast with a bf16 KV cache, CFG on
  (cond + uncond rows in one batch). Goal: <= 0.5 s per video at batch 1.

Columns: forward steps per video (1 prefix + frames x scales), seconds per batch, seconds per
video, videos/s, and the speed-up of the cache over recomputation measured in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchutil import sync

from mmgen.ar.model import VideoAR
from mmgen.ar.presets import preset_config
from mmgen.ar.sampling import SamplerSettings, forward_steps, sample_codes
from mmgen.tokenizer import BitwiseResidualQuantizer

TINY = dict(bits=16, scales=[[1, 1], [2, 2], [4, 4], [8, 8]], num_frames=5, width=128, depth=3, heads=4,
            cond="text", max_text_len=40)
L_SCALES = [[1, 1], [2, 2], [3, 3], [4, 4], [6, 6], [8, 8]]


def time_sampling(model: VideoAR, quantizer, cond, frames: int, settings: SamplerSettings, device, repeats: int,
                  autocast: bool) -> float:
    """Median seconds for one batched sample_codes call (after one warm-up call)."""
    times = []
    for i in range(repeats + 1):
        gens = [torch.Generator().manual_seed(i * 100 + j) for j in range(len(cond))]
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            sample_codes(model, quantizer, cond, frames, settings, gens)
        sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(name, model, quantizer, make_cond, frames, device, repeats, autocast, batches, recompute_batch=1):
    rows = []
    steps = forward_steps(frames, len(model.scales))
    guided = SamplerSettings(guidance=3.0)
    base = None
    if recompute_batch:
        cond = make_cond(recompute_batch)
        base = time_sampling(model, quantizer, cond, frames, SamplerSettings(guidance=3.0, use_cache=False),
                             device, max(1, repeats // 2), autocast)
        rows.append((name, "recompute", recompute_batch, steps, base, base / recompute_batch, recompute_batch / base, 1.0))
    for b in batches:
        t = time_sampling(model, quantizer, make_cond(b), frames, guided, device, repeats, autocast)
        speedup = base / t if (base is not None and b == recompute_batch) else float("nan")
        rows.append((name, "kv-cache", b, steps, t, t / b, b / t, speedup))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model", help="a saved pipeline folder whose transformer to time (default: random tiny)")
    p.add_argument("--skip-large", action="store_true", help="skip the VideoAR-L rows on CUDA")
    p.add_argument("--large-batches", default="1,8,16")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []

    if args.model:
        from mmgen.pipelines import VideoARPipeline

        pipe = VideoARPipeline.from_pretrained(args.model)
        model, quantizer = pipe.transformer, pipe.tokenizer.quantizer
        tokenizer = pipe.tokenizer
    else:
        model = VideoAR(**TINY, attn_backend="sdpa")
        quantizer = BitwiseResidualQuantizer(TINY["bits"], TINY["scales"])
        tokenizer = None
    model = model.to(device).eval()
    quantizer = quantizer.to(device)
    text = model.config.cond == "text"
    prompt = "a large red circle moving right"[: model.config.max_text_len]

    def tiny_cond(b):
        return [prompt] * b if text else list(range(b))

    rows += bench_model("tiny", model, quantizer, tiny_cond, model.config.num_frames, device, args.repeats,
                        autocast=False, batches=(1, 8))
    if tokenizer is not None:
        tokenizer = tokenizer.to(device).eval()
        codes = sample_codes(model, quantizer, tiny_cond(8), model.config.num_frames, SamplerSettings())
        with torch.no_grad():
            sync(device)
            t0 = time.perf_counter()
            tokenizer.decode(tokenizer.codes_to_latent(codes))
            sync(device)
            dt = time.perf_counter() - t0
        rows.append(("tiny", "+decode", 8, 0, dt, dt / 8, 8 / dt, float("nan")))

    if device.type == "cuda" and not args.skip_large:
        del model
        torch.cuda.empty_cache()
        cfg = preset_config("videoar-l", scales=L_SCALES, grad_checkpointing=False)
        with device:  # initialise the 0.9B weights on the GPU, not on the CPU first
            large = VideoAR(**cfg).eval()
        q = BitwiseResidualQuantizer(cfg["bits"], cfg["scales"]).to(device)
        batches = tuple(int(b) for b in args.large_batches.split(","))
        rows += bench_model("videoar-l", large, q, lambda b: list(range(b)), cfg["num_frames"], device,
                            args.repeats, autocast=True, batches=batches)

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"sampling benchmark on {card}, torch {torch.__version__}, CFG 3 (cond + uncond rows in one batch)")
    print(f"{'model':<10} {'decoding':<10} {'batch':>5} {'steps':>5} {'s/batch':>9} {'s/video':>9} "
          f"{'videos/s':>9} {'cache speed-up':>15}")
    for name, mode, b, steps, t, per, vps, speed in rows:
        speed_s = f"{speed:.2f}x" if speed == speed else "-"
        steps_s = str(steps) if steps else "-"
        print(f"{name:<10} {mode:<10} {b:>5} {steps_s:>5} {t:>9.3f} {per:>9.3f} {vps:>9.2f} {speed_s:>15}")


if __name__ == "__main__":
    main()
