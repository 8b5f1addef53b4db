"""Sparse FFNs on MovingShapes text-to-video: dense vs MoE vs MoUE vs MoHD, loss-free balance, elastic.

    OMP_NUM_THREADS=1 python bench/moe_bench.py --steps 100 --batch 6 --seeds 0,1,2 --workers 2 \
        --log runs/moe_bench/results.jsonl

Every variant trains the same tiny VideoAR (width 64, 4 layers) with ARModule + Lightning on
the same latent cache (MovingShapes clips encoded once by the shipped tokenizer,
mmgen/assets/default/tokenizer; the first of 5 latent frames, to fit a shared 2-core CPU), for
the same number of steps and batch (equal training tokens).  All sparse variants use the bias
rate 1e-2: in a run of a few hundred steps the papers' 1e-3 / 1e-4 cannot move the bias far
enough to matter.  Sparse variants are sized to the dense model's ACTIVE FFN parameters (MoE / MoUE:
top-2 of 8 experts + 1 shared expert of 88 dims vs a 256-dim SwiGLU; MoHD: 128 shared + 4 of 12
routed groups of 32 dims).  Reported per variant over seeds (mean +- std):

* held-out bit loss: bitwise BCE (nats per bit) on held-out clips, teacher forcing;
* train tok/s: sequence tokens per second of the whole fit (1 thread per run; runs share the
  machine, so ratios are rough);
* MaxVio: max expert load / mean load - 1 on the last held-out batch (32 clips), mean over
  sparse layers (MoUE: per layer over its window);
* active / total parameters (FFN active = what one token runs).

The balance row repeats the MoE with the bias rate 0 (no balancing, same run length).
Elastic rows train the MoE with ERNIE 5.0's elastic sampling (depth 3 of 4, top-1, half of
the experts, each kept at full 80% of the time) and evaluate the full model and each
sub-model: held-out loss and sampling latency (4 videos of 1 latent frame, KV cache, 1 thread).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "mmgen/assets/default/tokenizer"
FRAMES = 1
BASE = dict(bits=32, scales=[[1, 1], [2, 2], [4, 4], [8, 8]], num_frames=FRAMES, width=64, depth=4, heads=4,
            cond="text", max_text_len=88, attn_backend="sdpa", moe_bias_rate=1e-2)
ELASTIC = dict(depths=[3], top_ks=[1], expert_fraction=0.5)
VARIANTS = {
    "dense": dict(),
    "moe": dict(ffn="moe"),
    "moue": dict(ffn="moue"),
    "mohd": dict(ffn="mohd"),
    "moe-nobias": dict(ffn="moe", moe_bias_rate=0.0),
    "moe-elastic": dict(ffn="moe", elastic=ELASTIC),
}
SUBMODELS = {"full": {}, "depth=3": {"depth": 3}, "top_k=1": {"top_k": 1}, "experts=4": {"experts": 4},
             "depth=3,top_k=1": {"depth": 3, "top_k": 1}}


def build_cache(out: Path, n_train: int, n_val: int) -> None:
    from mmgen.data.latents import tokenize_dataset
    from mmgen.ar.training import load_tokenizer
    from mmgen.data import MovingShapes

    tok = load_tokenizer(str(TOKENIZER))
    for name, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        if not (out / name / "meta.json").is_file():
            tokenize_dataset(MovingShapes(num_samples=n, size=64, num_frames=17, seed=seed), tok, out / name, batch_size=16)


class FirstFrames:
    """A LatentCache cut to its first ``n`` latent frames."""

    def __init__(self, cache, n: int):
        self.cache, self.n = cache, n

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.cache[i])
        item["latent"] = item["latent"][:, :self.n]
        return item


def _held_out(module, loader) -> float:
    import torch

    module.eval()
    losses = []
    with torch.no_grad():
        for batch in loader:
            losses.append(module._step(batch, train=False)[0].item())
    return sum(losses) / len(losses)


def _max_vio(model) -> float:
    from mmgen.nn.moe import max_violation

    counts = model.routing_counts()
    if not counts:
        return float("nan")
    per_layer = sum(counts.values())
    return sum(max_violation(c) for c in per_layer) / len(per_layer)


def save_pipeline(model, out: Path) -> None:
    """transformer/ + the shipped tokenizer/: a folder `mmgen ar routing --model` reads."""
    import shutil

    from mmgen.io import atomic_dir

    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp / "transformer")
        shutil.copytree(TOKENIZER, tmp / "tokenizer")


def run(variant: str, seed: int, steps: int, batch: int, cache: str, save: str | None = None) -> dict:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    from mmgen.data.latents import LatentCache
    from mmgen.ar.flops import forward_flops
    from mmgen.ar.sampling import sample_codes
    from mmgen.ar.training import ARModule

    torch.set_num_threads(1)
    pl.seed_everything(seed, verbose=False)
    module = ARModule(preset=None, generator={**BASE, **VARIANTS[variant]}, tokenizer=str(TOKENIZER), lr=1e-3,
                      warmup_steps=20, corruption={"enabled": True, "p_max": 0.25, "delta": 0.01})
    train = DataLoader(FirstFrames(LatentCache(f"{cache}/train"), FRAMES), batch_size=batch, shuffle=True,
                       drop_last=True, generator=torch.Generator().manual_seed(seed))
    val = DataLoader(FirstFrames(LatentCache(f"{cache}/val"), FRAMES), batch_size=32)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0)
    t0 = time.perf_counter()
    trainer.fit(module, train)
    seconds = time.perf_counter() - t0
    model = module.model
    if save and seed == 0 and model.sparse_ffn is not None:
        save_pipeline(model, Path(save) / variant)
    flops = forward_flops(model.config)
    ffn_total = sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n or n.startswith("universal_pool"))
    out = {"variant": variant, "seed": seed, "steps": steps, "tokens_per_s": steps * batch * flops["tokens"] / seconds,
           "params": sum(p.numel() for p in model.parameters()), "ffn_params": ffn_total,
           "forward_flops_per_token": flops["per_token"]}
    subs = SUBMODELS if model.elastic is not None else {"full": {}}
    for name, setting in subs.items():
        model.set_submodel(**setting)
        out[f"loss[{name}]"] = _held_out(module, val)
        if name == "full":
            out["maxvio"] = _max_vio(model)
        if model.elastic is not None:
            q = module.tokenizer.quantizer
            with torch.no_grad():
                t0 = time.perf_counter()
                sample_codes(model, q, ["a small red circle moving left"] * 4, num_frames=FRAMES,
                             generator=torch.Generator().manual_seed(0))
                out[f"latency[{name}]"] = time.perf_counter() - t0
        model.set_submodel()
    return out


def _fmt(values: list[float], digits: int = 4) -> str:
    if not values or any(math.isnan(v) for v in values):
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} +- {sd:.{digits}f}"


def table(rows: list[dict]) -> str:
    by = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    dense_tps = statistics.mean(r["tokens_per_s"] for r in by.get("dense", rows[:1]))
    lines = ["| variant | seeds | held-out bit loss | train tok/s (x dense) | MaxVio | params (FFN) | fwd MFLOP/token |",
             "|---|---|---|---|---|---|---|"]
    for v in VARIANTS:
        rs = by.get(v)
        if not rs:
            continue
        tps = statistics.mean(r["tokens_per_s"] for r in rs)
        lines.append(f"| {v} | {len(rs)} | {_fmt([r['loss[full]'] for r in rs])} | {tps:.0f} ({tps / dense_tps:.2f}) "
                     f"| {_fmt([r['maxvio'] for r in rs], 3)} | {rs[0]['params'] / 1e3:.0f}k ({rs[0]['ffn_params'] / 1e3:.0f}k) "
                     f"| {rs[0]['forward_flops_per_token'] / 1e6:.3f} |")
    el = by.get("moe-elastic")
    if el:
        lines += ["", "| elastic sub-model (trained elastic) | held-out bit loss | vs full | sampling latency s (4 videos) |",
                  "|---|---|---|---|"]
        full = statistics.mean(r["loss[full]"] for r in el)
        for name in SUBMODELS:
            losses = [r[f"loss[{name}]"] for r in el]
            lines.append(f"| {name} | {_fmt(losses)} | {statistics.mean(losses) / full - 1:+.2%} "
                         f"| {_fmt([r[f'latency[{name}]'] for r in el], 2)} |")
        if by.get("moe"):
            base = statistics.mean(r["loss[full]"] for r in by["moe"])
            lines.append(f"\nelastic full model vs the same MoE trained without elasticity: {full / base - 1:+.2%} held-out loss")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default="runs/moe_bench/cache")
    ap.add_argument("--train-clips", type=int, default=512)
    ap.add_argument("--val-clips", type=int, default=64)
    ap.add_argument("--log", default="runs/moe_bench/results.jsonl", help="one JSON line per finished run (appended)")
    ap.add_argument("--save", default="runs/moe_bench/models", help="seed-0 sparse models are saved here (pipeline folders)")
    ap.add_argument("--table-only", action="store_true", help="print the table of an existing --log")
    args = ap.parse_args()
    log = Path(args.log)
    if not args.table_only:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        build_cache(Path(args.cache), args.train_clips, args.val_clips)
        log.parent.mkdir(parents=True, exist_ok=True)
        jobs = [(v, int(s)) for s in args.seeds.split(",") for v in args.variants.split(",")]
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run, v, s, args.steps, args.batch, args.cache, args.save) for v, s in jobs]
            for f in futures:
                row = f.result()
                with log.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    print(table(rows))


if __name__ == "__main__":
    main()
