"""Sparse FFNs on MovingShapes text-to-video: dense vs MoE vs MoUE vs MoHD, loss-free balance, elastic.

    python bench/moe_bench.py --steps 100 --batch 6 --seeds 0,1,2          # quality (no wall times)
    /work/wt/heavy python bench/moe_bench.py --part timing --steps 30       # tok/s, sampling latency
    /work/wt/heavy python bench/moe_bench.py --part floor                   # bias floors of seed-0 models
    python bench/moe_bench.py --table-only                                  # the tables of --log

Every variant trains the same tiny VideoAR (width 64, 4 layers) with ARModule + Lightning on
the same latent cache (MovingShapes clips encoded once by the shipped tokenizer,
mmgen/assets/default/tokenizer; the first of 5 latent frames, to fit a shared 2-core CPU), for
the same number of steps and batch (equal training tokens).  All sparse variants use the bias
rate 1e-2: in a run of a few hundred steps the papers' 1e-3 / 1e-4 cannot move the bias far
enough to matter.  Sparse variants are sized to the dense model's ACTIVE FFN parameters (MoE / MoUE:
top-2 of 8 experts + 1 shared expert of 88 dims vs a 256-dim SwiGLU; MoHD: 128 shared + 4 of 12
routed groups of 32 dims).  Reported per variant over seeds (mean +- std):

* held-out bit loss: bitwise BCE (nats per bit) on the 64 held-out clips, teacher forcing;
* adherence: one video per held-out caption (``--prompts``; KV cache, no CFG, temperature 1)
  scored by the analytic MovingShapes benchmark (mmgen.metrics.shapes): colour and shape (one
  latent frame decodes to one frame: no motion);
* MaxVio (max expert load / mean load - 1) per sparse layer over ALL held-out tokens at once
  (DeepSeek's global measure), mean over layers and the worst layer; over all tokens, over real
  tokens (text padding left out) and over visual tokens; a curve on one held-out batch of 32
  clips every ``--curve-every`` steps;
* floor (``--part floor``): the lowest MaxVio the sign update alone reaches on a saved router's
  held-out affinities (is the imbalance the tokens' or the bias's?), and the MaxVio of the same
  model on training inputs (history corruption and condition dropout drawn as in training: the
  inputs the bias balanced; ``--no-corruption`` trains without the history corruption);
* train tok/s (``--part timing``): one process, 1 thread, variants one after the other, steady
  state after 5 warm-up steps; run it through /work/wt/heavy;
* active FFN / total parameters (FFN active = what one token runs).

moe-nobias repeats the MoE with the bias rate 0 and moe-cosine with ``moe_bias_schedule:
cosine`` (same run length).  moe-elastic trains the MoE with ERNIE 5.0's elastic sampling
(depth 3 of 4, top-1, half of the experts, each kept at full 80% of the time) and evaluates the
full model and each sub-model: held-out loss, and (timing part) sampling latency of 4 videos.
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

import lightning.pytorch as pl

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "mmgen/assets/default/tokenizer"
FRAMES = 1
BASE = dict(bits=32, scales=[[1, 1], [2, 2], [4, 4], [8, 8]], num_frames=FRAMES, width=64, depth=4, heads=4,
            cond="text", max_text_len=88, attn_backend="sdpa", moe_bias_rate=1e-2)
STEADY_RATES = (1e-2, 1e-3, 1e-4)
ELASTIC = dict(depths=[3], top_ks=[1], expert_fraction=0.5)
VARIANTS = {
    "dense": dict(),
    "moe": dict(ffn="moe"),
    "moue": dict(ffn="moue"),
    "mohd": dict(ffn="mohd"),
    "moe-nobias": dict(ffn="moe", moe_bias_rate=0.0),
    "moe-cosine": dict(ffn="moe", moe_bias_schedule="cosine"),
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


def _real_tokens(module, batch, cond=None) -> "torch.Tensor":
    """bool [B, L]: the tokens of the sequence that are not text padding (all visual tokens);
    ``cond``: the prefix tokens the forward used (default: the batch's captions)."""
    import torch

    from mmgen.ar.text import PAD_ID

    model = module.model
    prefix = (module.condition(batch, 0.0) if cond is None else cond).ne(PAD_ID)
    visual = model.layout(FRAMES).num_visual
    return torch.cat([prefix, prefix.new_ones(prefix.shape[0], visual)], 1)


def _add_counts(total: dict, model, real) -> None:
    """Add the last forward's expert counts per sparse layer: over all tokens, real tokens (no text
    padding) and visual tokens."""
    import torch

    from mmgen.nn.moe import moe_layers

    P = model.prefix_len
    for i, m in enumerate(layer for layer in moe_layers(model) if layer.last_choice is not None):
        choice = m.last_choice.cpu()
        for name, picked in (("all", choice), ("real", choice[real]), ("visual", choice[:, P:])):
            layers = total.setdefault(name, {})
            layers[i] = layers.get(i, 0) + torch.bincount(picked.flatten(), minlength=m.n_experts)
            if i == 0:
                total[f"tokens_{name}"] = total.get(f"tokens_{name}", 0) + picked.numel() // picked.shape[-1]


def balance(module, batches, train_inputs: bool = False, draws: int = 1) -> dict:
    """MaxVio (max load / mean load - 1) per sparse layer over every token of ``batches`` (eval,
    teacher forcing), the DeepSeek way: one global count per layer.  -> {"maxvio_<set>": mean
    over layers, "maxvio_<set>_max": worst layer, "tokens_<set>": tokens counted}.

    ``train_inputs``: the inputs the bias balanced in training instead (history corruption and
    condition dropout as ARModule draws them; ``draws`` passes, seeded 0..draws-1), the routing
    of the same weights and bias; the clean teacher-forced inputs otherwise."""
    import torch

    from mmgen.nn.moe import max_violation

    was_training = module.training
    module.eval()
    total: dict = {}
    with torch.no_grad():
        for draw in range(draws if train_inputs else 1):
            if train_inputs:
                torch.manual_seed(draw)
            for batch in batches:
                if train_inputs:
                    _, _, inputs, cond, keep = module._inputs(batch, True)
                    module.model(cond, inputs, keep)
                    real = _real_tokens(module, batch, cond)
                else:
                    module._step(batch, train=False)
                    real = _real_tokens(module, batch)
                _add_counts(total, module.model, real)
    module.train(was_training)
    out = {k: v for k, v in total.items() if k.startswith("tokens_")}
    for name, layers in total.items():
        if not name.startswith("tokens_"):
            v = [max_violation(c) for c in layers.values()]
            out.update({f"maxvio_{name}": sum(v) / len(v), f"maxvio_{name}_max": max(v)})
    return out


def bias_floor(module, batches, iters: int = 800) -> dict:
    """The lowest MaxVio an expert bias reaches for this router on these held-out tokens: each
    sparse layer's affinities (router outputs of a teacher-forced forward) stay fixed and the
    sign update runs on them alone for ``iters`` rounds, its step decaying 1e-2 -> 1e-4 (later
    layers' inputs are those of the trained bias).  Near the measured MaxVio: no bias does much
    better on these tokens; far below: the training run was too short for the bias.

    Also, on the same frozen affinities: ``maxvio_steady[r]``, the MaxVio a CONSTANT sign step r
    keeps (one step per batch of 6 clips, as in training; mean over the second half of the
    rounds): a coarse step makes the bias oscillate around the balance; and ``gap_median``, the
    median gap between a token's k-th and (k+1)-th biased affinity (a step above it flips many
    tokens at once)."""
    import torch

    from mmgen.nn.moe import SparseMoE, max_violation

    layers = [m for m in module.model.modules() if isinstance(m, SparseMoE)]
    logits: dict[int, list] = {i: [] for i in range(len(layers))}
    hooks = [m.router.register_forward_hook(lambda mod, inp, out, i=i: logits[i].append(out.detach().float()))
             for i, m in enumerate(layers)]
    module.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                module._step(batch, train=False)
    finally:
        for h in hooks:
            h.remove()
    clips = sum(len(b["caption"]) for b in batches)
    floors, gaps, steady = [], [], {r: [] for r in STEADY_RATES}
    for i, m in enumerate(layers):
        scores = torch.sigmoid(torch.cat(logits[i]).flatten(0, -2))
        bias, best = m.expert_bias.detach().clone().float(), float("inf")
        for t in range(iters):
            counts = torch.bincount((scores + bias).topk(m.top_k, dim=-1).indices.flatten(), minlength=m.n_experts)
            best = min(best, max_violation(counts))
            bias += 1e-2 * 0.01 ** (t / iters) * torch.sign(counts.float().mean() - counts.float())
        floors.append(best)
        top = (scores + m.expert_bias.float()).topk(m.top_k + 1, dim=-1).values
        gaps.append(float((top[:, -2] - top[:, -1]).median()))
        per_clip = scores.reshape(clips, -1, scores.shape[-1])
        for rate in STEADY_RATES:  # training's update: one sign step per batch of 6 clips, router frozen
            bias, seen = m.expert_bias.detach().clone().float(), []
            for t in range(iters):
                j = 6 * t % (clips - 5)
                step = torch.bincount((per_clip[j:j + 6] + bias).topk(m.top_k, dim=-1).indices.flatten(),
                                      minlength=m.n_experts).float()
                bias += rate * torch.sign(step.mean() - step)
                if t >= iters // 2:
                    counts = torch.bincount((scores + bias).topk(m.top_k, dim=-1).indices.flatten(), minlength=m.n_experts)
                    seen.append(max_violation(counts))
            steady[rate].append(sum(seen) / len(seen))
    out = {"maxvio_floor": sum(floors) / len(floors), "maxvio_floor_max": max(floors),
           "gap_median": sum(gaps) / len(gaps)}
    out.update({f"maxvio_steady[{r:g}]": sum(v) / len(v) for r, v in steady.items()})
    return out


def floors(save: str, cache: str) -> list[dict]:
    """:func:`bias_floor` (and the measured MaxVio) of the saved seed-0 models with SparseMoE layers."""
    from mmgen.ar import VideoAR

    rows = []
    for variant in VARIANTS:
        folder = Path(save) / variant / "transformer"
        if variant == "moue" or not folder.is_dir():
            continue
        module = make_module(variant, 0)
        module.model.load_state_dict(VideoAR.from_pretrained(str(folder)).state_dict())
        batches = list(loaders(cache, 6, 0)[1])
        trained_on = {f"train_inputs_{k}": v for k, v in balance(module, batches, train_inputs=True, draws=3).items()
                      if k.startswith("maxvio")}
        row = {"variant": variant, "floor": True, **balance(module, batches), **trained_on, **bias_floor(module, batches)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def adherence(module, prompts: list[str], seed: int) -> dict:
    """Sample one video per prompt (KV cache, no CFG, temperature 1) and score it with the analytic
    MovingShapes benchmark (mmgen.metrics.shapes).  One latent frame decodes to one video frame, so
    motion is not scored: colour (object of the prompted colour found) and shape."""
    import torch

    from mmgen.ar.sampling import sample_codes
    from mmgen.metrics.shapes import expected_from_caption, score_video
    from mmgen.pipelines.videoar import _video_to_uint8

    model, tok = module.model, module.tokenizer
    module.eval()
    with torch.no_grad():
        codes = sample_codes(model, tok.quantizer, prompts, num_frames=FRAMES,
                             generator=[torch.Generator().manual_seed(seed * 1000 + i) for i in range(len(prompts))])
        videos = _video_to_uint8(tok.decode(tok.codes_to_latent(codes)))
    videos = videos.repeat(1, 2, 1, 1, 1) if videos.shape[1] == 1 else videos  # the scorer's flicker term needs 2 frames
    scores = [score_video(v, expected_from_caption(p)) for v, p in zip(videos, prompts)]
    return {key: sum(s[key] for s in scores) / len(scores) for key in ("color", "shape")}


def save_pipeline(model, out: Path) -> None:
    """transformer/ + the shipped tokenizer/: a folder `mmgen ar routing --model` reads."""
    import shutil

    from mmgen.io import atomic_dir

    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp / "transformer")
        shutil.copytree(TOKENIZER, tmp / "tokenizer")


class BalanceCurve(pl.Callback):
    """:func:`balance` on a fixed held-out batch at the start and every ``every`` optimiser steps."""

    def __init__(self, batch, every: int):
        self.batch, self.every, self.points = batch, every, []

    def _point(self, module, step: int) -> None:
        b = balance(module, [self.batch])
        self.points.append([step, b["maxvio_all"], b["maxvio_real"], b["maxvio_real_max"]])

    def on_train_start(self, trainer, module):
        self._point(module, 0)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:
            self._point(module, trainer.global_step)


def active_ffn_params(config) -> int:
    """FFN parameters one token runs, summed over layers (routed top-k + shared + router)."""
    from mmgen.nn import ffn_hidden
    from mmgen.nn.moe import active_ffn_macs, sparse_ffn_kwargs

    c = dict(config)
    hidden = ffn_hidden(c["width"], c.get("mlp_ratio", 4.0))
    sparse = sparse_ffn_kwargs(c, hidden)
    per_layer = 3 * c["width"] * hidden if sparse is None else active_ffn_macs(c["width"], dense_hidden=hidden, **sparse)
    return per_layer * c["depth"]


def make_module(variant: str, seed: int, bias_rate: float | None = None, bias_schedule: str | None = None,
                elastic_weight: float | None = None, bias_rate_end: float | None = None, corruption: bool = True):
    from mmgen.ar.training import ARModule

    pl.seed_everything(seed, verbose=False)
    gen = {**BASE, **VARIANTS[variant]}
    if elastic_weight is not None and "elastic" in gen:
        gen["elastic"] = {**gen["elastic"], "weight": elastic_weight}
    if bias_rate is not None and gen.get("moe_bias_rate", 1) > 0:
        gen["moe_bias_rate"] = bias_rate
    if bias_schedule is not None:
        gen["moe_bias_schedule"] = bias_schedule
    if bias_rate_end is not None:
        gen["moe_bias_rate_end"] = bias_rate_end
    return ARModule(preset=None, generator=gen, tokenizer=str(TOKENIZER), lr=1e-3, warmup_steps=20,
                    corruption={"enabled": corruption, "p_max": 0.25, "delta": 0.01})


def loaders(cache: str, batch: int, seed: int):
    import torch
    from torch.utils.data import DataLoader

    from mmgen.data.latents import LatentCache

    train = DataLoader(FirstFrames(LatentCache(f"{cache}/train"), FRAMES), batch_size=batch, shuffle=True,
                       drop_last=True, generator=torch.Generator().manual_seed(seed))
    val = DataLoader(FirstFrames(LatentCache(f"{cache}/val"), FRAMES), batch_size=32)
    return train, val


def run(variant: str, seed: int, steps: int, batch: int, cache: str, save: str | None = None,
        curve_every: int = 10, prompts: int = 16, bias_rate: float | None = None,
        bias_schedule: str | None = None, elastic_weight: float | None = None,
        bias_rate_end: float | None = None, corruption: bool = True) -> dict:
    """Train one variant (quality run: no timing); held-out loss, balance (final and curve), adherence."""
    import torch

    from mmgen.ar.flops import forward_flops

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    module = make_module(variant, seed, bias_rate, bias_schedule, elastic_weight, bias_rate_end, corruption)
    train, val = loaders(cache, batch, seed)
    val_batches = list(val)
    sparse = module.model.sparse_ffn is not None
    curve = BalanceCurve(val_batches[0], curve_every) if sparse else None
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                         callbacks=[curve] if curve else [])
    trainer.fit(module, train)
    model = module.model
    if save and seed == 0 and sparse:
        save_pipeline(model, Path(save) / variant)
    flops = forward_flops(model.config)
    ffn_total = sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n or n.startswith("universal_pool"))
    out = {"variant": variant, "seed": seed, "steps": steps, "batch": batch, "tokens": steps * batch * flops["tokens"],
           "params": sum(p.numel() for p in model.parameters()), "ffn_params": ffn_total,
           "active_ffn_params": active_ffn_params(model.config), "forward_flops_per_token": flops["per_token"],
           "bias_rate": model.config.moe_bias_rate if sparse else None,
           "bias_schedule": model.config.get("moe_bias_schedule") if sparse else None,
           "bias_rate_end": model.config.get("moe_bias_rate_end") if sparse else None,
           "elastic_weight": model.elastic.weight if model.elastic is not None else None}
    if not corruption:
        out["corruption"] = False
    if sparse:
        out.update(balance(module, val_batches))
        out.update({f"train_inputs_{k}": v for k, v in balance(module, val_batches, train_inputs=True, draws=3).items()
                    if k.startswith("maxvio")})
        out["curve"] = curve.points
    captions = [c for b in val_batches for c in b["caption"]][:prompts]
    subs = SUBMODELS if model.elastic is not None else {"full": {}}
    for name, setting in subs.items():
        model.set_submodel(**setting)
        out[f"loss[{name}]"] = _held_out(module, val)
        if prompts and name == "full":
            out.update({f"{k}[{name}]": v for k, v in adherence(module, captions, seed).items()})
        model.set_submodel()
    return out


def timing(variants: list[str], steps: int, batch: int, cache: str, warmup: int = 5) -> list[dict]:
    """Train tok/s (steady state: optimiser steps after ``warmup``) of each variant, one after the
    other in this process (1 thread); elastic: sampling latency of each sub-model (4 videos).
    Run it alone on the machine (through /work/wt/heavy): these are the wall-time numbers."""
    import torch

    from mmgen.ar.flops import forward_flops
    from mmgen.ar.sampling import sample_codes

    torch.set_num_threads(1)
    rows = []
    for variant in variants:
        module = make_module(variant, 0)
        train, _ = loaders(cache, batch, 0)
        opt = torch.optim.AdamW(module.model.parameters(), lr=1e-3)
        module.train()
        it = iter(train)
        for i in range(warmup + steps):
            if i == warmup:
                t0 = time.perf_counter()
            loss, _ = module._step(next(it), train=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - t0
        model = module.model
        row = {"variant": variant, "timing": True, "tokens_per_s": steps * batch * forward_flops(model.config)["tokens"] / seconds}
        if model.elastic is not None:
            model.eval()
            for name, setting in SUBMODELS.items():
                model.set_submodel(**setting)
                with torch.no_grad():
                    times = []
                    for r in range(4):
                        t0 = time.perf_counter()
                        sample_codes(model, module.tokenizer.quantizer, ["a small red circle moving left"] * 4,
                                     num_frames=FRAMES, generator=torch.Generator().manual_seed(r))
                        times.append(time.perf_counter() - t0)
                row[f"latency[{name}]"] = statistics.median(times[1:])
                model.set_submodel()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _fmt(values: list[float], digits: int = 4) -> str:
    if not values or any(math.isnan(v) for v in values):
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} +- {sd:.{digits}f}"


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def _label(r: dict) -> str:
    """Table key of a quality row: the variant, plus the balancing / elastic settings a run
    overrode (--bias-rate, --bias-schedule, --elastic-weight) and a length other than 100 steps."""
    extra = []
    base_rate = VARIANTS[r["variant"]].get("moe_bias_rate", BASE["moe_bias_rate"])
    if r.get("bias_rate") not in (None, base_rate):
        extra.append(f"rate {r['bias_rate']:g}")
    if r.get("bias_schedule") not in (None, "constant", VARIANTS[r["variant"]].get("moe_bias_schedule")):
        extra.append(r["bias_schedule"] + (f" to {r['bias_rate_end']:g}" if r["bias_schedule"] == "exp" else ""))
    if r.get("elastic_weight") not in (None, 1.0):
        extra.append(f"sub-model weight {r['elastic_weight']:g}")
    if r.get("corruption") is False:
        extra.append("no history corruption")
    if r.get("steps", 100) != 100:  # a log may hold runs of several lengths
        extra.append(f"{r['steps']} steps")
    return r["variant"] + (f" ({', '.join(extra)})" if extra else "")


def table(rows: list[dict]) -> str:
    """Quality rows (mean +- std over seeds), tok/s and latency from the timing rows, MaxVio curves."""
    by, timed, floor = {}, {}, {}
    for r in rows:
        key = r["variant"] if r.get("timing") or r.get("floor") else _label(r)
        (timed if r.get("timing") else floor if r.get("floor") else by).setdefault(key, []).append(r)
    tps = {v: _mean([r["tokens_per_s"] for r in rs]) for v, rs in timed.items()}
    lines = ["| variant | seeds | held-out bit loss | colour | shape | MaxVio all tokens (worst layer) "
             "| MaxVio real tokens (worst layer) | train tok/s (x dense) | active FFN / total params | fwd MFLOP/token |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v, rs in sorted(by.items(), key=lambda kv: list(VARIANTS).index(kv[1][0]["variant"])):
        vio = lambda key: (f"{_fmt([r[key] for r in rs], 3)} ({_mean([r[key + '_max'] for r in rs]):.3f})"  # noqa: E731
                           if key in rs[0] else "-")
        speed = f"{tps[v]:.0f} ({tps[v] / tps['dense']:.2f})" if v in tps and "dense" in tps else "-"
        adh = lambda key: _fmt([r[key] for r in rs], 2) if key in rs[0] else "-"  # noqa: E731 (--prompts 0: none)
        lines.append(f"| {v} | {len(rs)} | {_fmt([r['loss[full]'] for r in rs])} | {adh('color[full]')} "
                     f"| {adh('shape[full]')} | {vio('maxvio_all')} | {vio('maxvio_real')} | {speed} "
                     f"| {rs[0]['active_ffn_params'] / 1e3:.1f}k / {rs[0]['params'] / 1e3:.0f}k "
                     f"| {rs[0]['forward_flops_per_token'] / 1e6:.3f} |")
    if any("tokens_all" in r for rs in by.values() for r in rs):
        r0 = next(r for rs in by.values() for r in rs if "tokens_all" in r)
        lines.append(f"\n{r0['steps']} steps x {r0['batch']} clips = {r0['tokens']} training tokens per run; MaxVio over "
                     f"{r0.get('tokens_all', '-')} held-out tokens per layer ({r0.get('tokens_real', '-')} without text padding)")
    trained_on = {v: rs for v, rs in by.items() if all("train_inputs_maxvio_all" in r for r in rs)}
    if trained_on:
        lines += ["", "MaxVio of the same held-out clips on training inputs (history corruption and condition dropout "
                      "as in training, 3 draws: the inputs the bias balances), all tokens (worst layer)"]
        lines += [f"- {v}: {_fmt([r['train_inputs_maxvio_all'] for r in rs], 3)} "
                  f"({_mean([r['train_inputs_maxvio_all_max'] for r in rs]):.3f}; per seed "
                  + ", ".join(f"{r['train_inputs_maxvio_all']:.3f}" for r in rs) + ")" for v, rs in trained_on.items()]
    if floor:
        steady = [f"maxvio_steady[{r:g}]" for r in STEADY_RATES]
        lines += ["", "| seed-0 model | MaxVio measured (worst layer) | MaxVio on training inputs (worst layer) "
                  "| lowest MaxVio any bias reaches on these affinities "
                  "(worst layer) | median k-th/(k+1)-th affinity gap | " + " | ".join(f"MaxVio kept by a constant step {r:g}"
                                                                                for r in STEADY_RATES) + " |",
                  "|---" * (5 + len(steady)) + "|"]
        lines += [f"| {v} | {r['maxvio_all']:.3f} ({r['maxvio_all_max']:.3f}) "
                  + (f"| {r['train_inputs_maxvio_all']:.3f} ({r['train_inputs_maxvio_all_max']:.3f}) "
                     if "train_inputs_maxvio_all" in r else "| - ")
                  + f"| {r['maxvio_floor']:.3f} ({r['maxvio_floor_max']:.3f}) | {r.get('gap_median', float('nan')):.4f} | "
                  + " | ".join(f"{r[k]:.3f}" if k in r else "-" for k in steady) + " |"
                  for v, r in ((v, rs[-1]) for v, rs in floor.items())]
    curves = {v: rs for v, rs in by.items() if rs[0].get("curve")}
    if curves:
        names = list(curves)
        steps = [p[0] for p in curves[names[0]][0]["curve"]]
        lines += ["", "MaxVio on one held-out batch of 32 clips (real tokens, mean over layers; mean over seeds) vs step",
                  "| step | " + " | ".join(f"{v} ({len(curves[v])})" for v in names) + " |", "|---" * (len(names) + 1) + "|"]
        for i, step in enumerate(steps):
            cells = [_mean([r["curve"][i][2] for r in curves[v] if i < len(r["curve"])]) for v in names]
            lines.append(f"| {step} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    for key, el in ((k, rs) for k, rs in by.items() if rs[0]["variant"] == "moe-elastic"):
        lat = timed.get("moe-elastic", [{}])[0]
        lines += ["", f"| {key}: sub-model | held-out bit loss | vs full | colour | shape | sampling latency s (4 videos) |",
                  "|---|---|---|---|---|---|"]
        full = _mean([r["loss[full]"] for r in el])
        for name in SUBMODELS:
            losses = [r[f"loss[{name}]"] for r in el]
            latency = f"{lat[f'latency[{name}]']:.3f}" if f"latency[{name}]" in lat else "-"
            lines.append(f"| {name} | {_fmt(losses)} | {_mean(losses) / full - 1:+.2%} | {_fmt([r[f'color[{name}]'] for r in el if f'color[{name}]' in r], 2)} "
                         f"| {_fmt([r[f'shape[{name}]'] for r in el if f'shape[{name}]' in r], 2)} | {latency} |")
        plain = _label({**el[0], "variant": "moe", "elastic_weight": None})  # the MoE of the same length and balance
        base = {r["seed"]: r["loss[full]"] for r in by.get(plain, [])}
        pairs = [r["loss[full]"] / base[r["seed"]] - 1 for r in el if r["seed"] in base]
        if pairs:
            lines.append(f"\n{key}: full model vs the same MoE trained without elasticity, same seeds ({len(pairs)}): "
                         f"{_mean(pairs):+.2%} held-out loss (per seed: {', '.join(f'{x:+.2%}' for x in pairs)})")
    return "\n".join(lines)


def _append(log: Path, row: dict) -> None:
    with log.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("quality", "timing", "floor"), default="quality",
                    help="quality: train and evaluate (no wall times); timing: tok/s and sampling latency; "
                         "floor: the lowest MaxVio a bias reaches for the saved seed-0 routers")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--curve-every", type=int, default=10, help="MaxVio curve: optimiser steps between points")
    ap.add_argument("--prompts", type=int, default=16, help="held-out captions sampled for adherence (0 = none)")
    ap.add_argument("--bias-rate", type=float, help="override moe_bias_rate of the balanced variants")
    ap.add_argument("--bias-schedule", help="override moe_bias_schedule (constant / cosine / exp)")
    ap.add_argument("--bias-rate-end", type=float, help="override moe_bias_rate_end (the exp schedule's last rate)")
    ap.add_argument("--elastic-weight", type=float, help="override the elastic sub-model loss weight (default 1)")
    ap.add_argument("--no-corruption", action="store_true",
                    help="train without the history corruption (the bias then balances clean teacher-forced inputs)")
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
        variants = args.variants.split(",")
        if args.part == "timing":
            for row in timing(variants, args.steps, args.batch, args.cache):
                _append(log, row)
        elif args.part == "floor":
            for row in floors(args.save, args.cache):
                _append(log, row)
        else:
            jobs = [(v, int(s)) for s in args.seeds.split(",") for v in variants]
            with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(run, v, s, args.steps, args.batch, args.cache, args.save, args.curve_every,
                                       args.prompts, args.bias_rate, args.bias_schedule, args.elastic_weight,
                                       args.bias_rate_end, not args.no_corruption)
                           for v, s in jobs]
                for f in futures:
                    _append(log, f.result())
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    print(table(rows))


if __name__ == "__main__":
    main()
