"""Depth where it pays: plain vs static block looping vs SGT vs ITT on MovingShapes text-to-video.

    mmgen ar tokenize --tokenizer mmgen/assets/default/tokenizer --out runs/depth/cache_train \\
        --dataset-args '{"num_samples": 1024, "size": 64, "num_frames": 17, "seed": 0}'
    mmgen ar tokenize --tokenizer mmgen/assets/default/tokenizer --out runs/depth/cache_val \\
        --dataset-args '{"num_samples": 128, "size": 64, "num_frames": 17, "seed": 1}'
    python bench/depth_bench.py --train runs/depth/cache_train --val runs/depth/cache_val \\
        --seeds 0,1,2 --json runs/depth/bench.json

Every run trains a small VideoAR (ARModule under a Lightning Trainer, the tokenizer shipped in
mmgen/assets/default, latents from the caches) for the same number of steps at the same batch
(equal training tokens) and reports:

* held-out bit loss: mean bitwise BCE (nats per bit) on the val cache, teacher-forced, no
  corruption and no condition dropout;
* extra training FLOPs (%): model FLOPs of the whole run over the plain model's
  (mmgen.ar.flops, summed step by step over SGT's changing state: all heads loop during a decay
  window, only the kept heads after it, plus the entropy probe);
* wall time: seconds of the training steps (start-up and evaluation excluded).

Variants: ``plain``; ``loop`` = static block looping: the whole block of the same layers SGT
selected in the same seed runs twice from step 0; ``sgt`` (windows scaled to the run:
--sgt-warmup/--sgt-window as fractions); ``itt`` (thinking steps on --itt-layers).  Each run is
its own process (OMP_NUM_THREADS=1), at most --parallel at a time.  Rows are mean +- std over
the seeds; ratios are against the plain runs of the same invocation.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("plain", "loop", "sgt", "itt")


def _generator(args, variant: str, loop_layers: list[int] | None) -> dict:
    g = dict(bits=32, scales=[[1, 1], [2, 2], [4, 4], [8, 8]], num_frames=args.frames, width=args.width,
             depth=args.depth, heads=args.heads, cond="text", max_text_len=88)
    if variant == "sgt":
        g.update(sgt=True, sgt_warmup=args.sgt_warmup, sgt_window=args.sgt_window)
    elif variant == "itt":
        g.update(itt_layers=[int(i) for i in args.itt_layers.split(",")], itt_steps=args.itt_steps,
                 itt_frac=args.itt_frac)
    elif variant == "loop":
        g.update(loop_layers=loop_layers)
    return g


class FirstFrames:
    """A latent cache cut to its first ``frames`` latent frames (shorter clips, cheaper runs)."""

    def __init__(self, cache, frames: int):
        self.cache, self.frames = cache, frames

    def __len__(self):
        return len(self.cache)

    def __getitem__(self, i):
        item = self.cache[i]
        return {**item, "latent": item["latent"][:, :self.frames]}


def run_one(args, variant: str, seed: int, loop_layers: list[int] | None) -> dict:
    """Train one variant with one seed in this process; returns its row."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    from mmgen.data.latents import LatentCache
    from mmgen.ar.flops import forward_flops, sgt_state
    from mmgen.ar.training import ARModule

    torch.set_num_threads(1)
    pl.seed_everything(seed, verbose=False)
    module = ARModule(preset=None, generator=_generator(args, variant, loop_layers), tokenizer=args.tokenizer,
                      lr=args.lr, warmup_steps=max(1, args.steps // 20), ema_decay=None)
    model = module.model
    record = {"flops": 0.0, "seconds": 0.0}

    class Meter(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            state = sgt_state(model) if model.sgt_scheduler is not None else {}
            f = forward_flops(model.config, **state)
            record["flops"] += batch["latent"].shape[0] * f["train_per_token"] * f["tokens"]
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            record["seconds"] += time.perf_counter() - self.t0
            if trainer.global_step % 20 == 0:
                print(f"step {trainer.global_step} loss {float(outputs['loss']):.4f} "
                      f"{record['seconds']:.0f}s", flush=True)

    trainer = pl.Trainer(accelerator="cpu", max_steps=args.steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Meter()],
                         gradient_clip_val=1.0, default_root_dir=str(Path(args.workdir) / f"{variant}-{seed}"))
    train = DataLoader(FirstFrames(LatentCache(args.train), args.frames), batch_size=args.batch, shuffle=True, drop_last=True,
                       generator=torch.Generator().manual_seed(seed))
    trainer.fit(module, train)

    module.eval()
    losses, weights = [], []
    with torch.no_grad():
        for batch in DataLoader(FirstFrames(LatentCache(args.val), args.frames), batch_size=16):
            loss, _ = module._step(batch, train=False)
            losses.append(loss.item())
            weights.append(len(batch["caption"]))
    row = {"variant": variant, "seed": seed, "val_bit_loss": sum(a * w for a, w in zip(losses, weights)) / sum(weights),
           "train_flops": record["flops"], "train_seconds": record["seconds"],
           "steps": args.steps, "batch": args.batch}
    if model.sgt_scheduler is not None:
        row["sgt_trace"] = model.sgt_scheduler.trace(model.sgt_loops())
        from mmgen.nn.sgt import plot_trace

        plot_trace(row["sgt_trace"], len(model.blocks), args.steps, Path(args.workdir) / f"sgt_trace_seed{seed}.png")
    if loop_layers is not None:
        row["loop_layers"] = loop_layers
    return row


def _spawn(args, variant, seed, loop_layers, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--one", variant, str(seed), "--out-row", str(out)] + args.passthrough
    if loop_layers is not None:
        cmd += ["--loop-layers", ",".join(map(str, loop_layers))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = open(out.with_suffix(".log"), "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _mean_std(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(rows: list[dict], variants) -> str:
    plain = [r for r in rows if r["variant"] == "plain"]
    by_seed = {r["seed"]: r for r in plain}
    lines = [f"{'variant':<7} {'runs':>4} {'held-out bit loss':>19} {'extra train FLOPs':>18} "
             f"{'wall s':>14} {'wall vs plain':>14}"]
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        if not rs:
            continue
        loss = _mean_std([r["val_bit_loss"] for r in rs])
        extra = [100 * (r["train_flops"] / by_seed[r["seed"]]["train_flops"] - 1) for r in rs if r["seed"] in by_seed]
        ratio = [r["train_seconds"] / by_seed[r["seed"]]["train_seconds"] for r in rs if r["seed"] in by_seed]
        wall = _mean_std([r["train_seconds"] for r in rs])
        e = f"{statistics.mean(extra):+.1f}%" if extra else "n/a"
        w = "{:.2f}x +- {:.2f}".format(*_mean_std(ratio)) if ratio else "n/a"
        lines.append(f"{v:<7} {len(rs):>4} {loss[0]:>11.4f} +- {loss[1]:.4f} {e:>18} "
                     f"{wall[0]:>7.0f} +- {wall[1]:<4.0f} {w:>14}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default="runs/depth/cache_train", help="latent cache for training")
    p.add_argument("--val", default="runs/depth/cache_val", help="held-out latent cache")
    p.add_argument("--tokenizer", default="mmgen/assets/default/tokenizer")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--frames", type=int, default=2, help="latent frames per clip (the caches hold 5)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--sgt-warmup", type=float, default=0.1, help="fraction of the run (or steps if >= 1)")
    p.add_argument("--sgt-window", type=float, default=0.1, help="fraction of the run (or steps if >= 1)")
    p.add_argument("--itt-layers", default="2,3,4")
    p.add_argument("--itt-steps", type=int, default=2)
    p.add_argument("--itt-frac", type=float, default=0.25)
    p.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--workdir", default="runs/depth/bench")
    p.add_argument("--json", default=None, help="also write all rows and the table here")
    p.add_argument("--one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("--out-row", help=argparse.SUPPRESS)
    p.add_argument("--loop-layers", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    if args.one:
        layers = [int(i) for i in args.loop_layers.split(",")] if args.loop_layers else None
        row = run_one(args, args.one[0], int(args.one[1]), layers)
        Path(args.out_row).write_text(json.dumps(row))
        return

    from benchutil import write_json

    args.passthrough = list(argv if argv is not None else sys.argv[1:])  # a run reads the same options
    variants = [v for v in args.variants.split(",") if v]
    seeds = [int(s) for s in args.seeds.split(",")]
    # "loop" reuses the layers SGT selected in the same seed, so it waits for that run.
    todo = [(v, s) for s in seeds for v in ("plain", "sgt", "itt", "loop") if v in variants]
    rows, running, failed = [], {}, []
    started = time.time()
    while todo or running:
        for key, (proc, out) in list(running.items()):
            if proc.poll() is not None:
                del running[key]
                if proc.returncode == 0:
                    rows.append(json.loads(out.read_text()))
                    r = rows[-1]
                    print(f"[{time.time() - started:6.0f}s] {key[0]:<5} seed {key[1]}: bit loss {r['val_bit_loss']:.4f} "
                          f"train {r['train_seconds']:.0f}s", flush=True)
                else:
                    failed.append(key)
                    print(f"[{time.time() - started:6.0f}s] {key[0]} seed {key[1]} FAILED (see {out.with_suffix('.log')})",
                          flush=True)
        sgt_layers = {r["seed"]: [t["layer"] for t in r["sgt_trace"]] for r in rows if r["variant"] == "sgt"}
        sgt_done = {k[1] for k in failed if k[0] == "sgt"} | set(sgt_layers)
        for job in list(todo):
            if len(running) >= args.parallel:
                break
            v, s = job
            if v == "loop" and "sgt" in variants and s not in sgt_done:
                continue
            layers = None
            if v == "loop":
                layers = sgt_layers.get(s) or list(range(args.depth - 3, args.depth))
            todo.remove(job)
            out = workdir / f"{v}-{s}.json"
            running[job] = (_spawn(args, v, s, layers, out), out)
        time.sleep(1)
    table = summarise(rows, variants)
    print(table)
    for r in rows:
        if "sgt_trace" in r:
            print(f"sgt seed {r['seed']}: " + "; ".join(f"layer {t['layer']} heads {t['heads']} from step {t['step']}"
                                                       for t in r["sgt_trace"]))
    if failed:
        print("failed runs:", ", ".join(f"{v} seed {s}" for v, s in failed))
    if args.json:
        write_json(args.json, {"rows": rows, "table": table, "failed": failed, "args": vars(args)})


if __name__ == "__main__":
    main()
