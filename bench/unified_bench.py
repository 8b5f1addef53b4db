"""The unified model (mmgen.ar.unified): caption accuracy, and what unification does to generation.

    # captions and answers of held-out clips (seed 1000, never in the training cache of seed 0)
    python bench/unified_bench.py caption --model mmgen/assets/unified --clips 64
    python bench/unified_bench.py caption --clip-seed 0   # the same on training clips: does the reader overfit?
    # generation: unified vs generation-only, same size, same number of VIDEO tokens, 3 seeds
    python bench/unified_bench.py train --variant unified --seed 0 --steps 300   # (x seeds, x variants)
    python bench/unified_bench.py adherence --seed 0 --variant unified            # (x seeds, x variants)
    python bench/unified_bench.py table
    # why captions sit at chance (diagnostics; issue 16)
    python bench/unified_bench.py visible --clips 32           # what the finest scale carries
    python bench/unified_bench.py reading --inputs own --steps 250   # caption-only training, no generation rows
    python bench/unified_bench.py probe                         # linear probes of pooled video features
    # why unification costs generation: the text gradient swamps the visual one on the shared blocks
    python bench/unified_bench.py balance --model DIR/transformer --text-weight 1.0 --batch 32

Every part appends rows to ``--log`` (default runs/unified_bench/results.jsonl), so the parts can
run one at a time (``/work/wt/heavy ...`` on a shared CPU); ``table`` prints the README rows.

* caption: MovingShapes clips (9 frames, plain background, 1-2 objects) of seed 1000; a caption
  is parsed with the grammar's parser (text it cannot parse scores 0 on every field). One-object
  clips: each field right. Two-object clips, per object: colour = the object's colour is named,
  shape/size/motion = those of the predicted object of that colour. Plus question accuracy
  (one-object clips; count, colour, shape, size, motion) with the same model.
* train: ``mmgen ar fit-unified --config CONFIG`` (default configs/generator/unified_latent.yaml,
  the shipped model's; configs/generator/unified.yaml is the bit-code reader) on the build's latent
  cache; ``unified`` = half the rows understanding, ``genonly`` = none, with half the
  steps, so both see the same number of generation rows (video tokens with a loss) in
  expectation; everything else (architecture incl. the unused text head, lr schedule, batch,
  corruption, early-scale weighting) is the same. ``--understand-encoder conv`` trains the arm with the
  latent stem (runs/<variant>-tw<w>-conv-s<seed>; pass it to ``adherence`` too). ``--understand-ratio R``
  gives the unified arm that share of understanding rows and steps / 2 / (1 - R) steps, so its
  generation rows stay those of genonly (runs/unified-tw<w>-u<R>-s<seed>; pass it to ``adherence`` too:
  it names the run folder, while the row records the ratio the model's training.json holds, if any).
* visible: held-out one-object clips decoded from scales 0..n only, scored by mmgen.metrics.shapes
  (the generation inputs never carry a frame's finest scale).
* reading: caption-only training (``--steps`` x ``--batch`` rows of the latent cache, the shipped
  architecture, no generation rows), then greedy captions of held-out clips. ``--inputs``: ``gen``
  (the generation inputs, as before the fix), ``own`` (:func:`mmgen.ar.unified.video_inputs`),
  ``latent`` (the continuous latent before quantisation, per clip RMS 1, at every scale, through
  ``--understand-encoder``: the shipped path),
  ``oracle`` (the colour one-hot written into every cell: is the text <- video path itself able to
  learn?), ``celloracle`` (written only into the 2 finest cells per frame that differ most from the
  frame's median: can the text find a few cells?); the oracles report training loss only.
* probe: linear probes of colour / shape / size / motion of the one-object training clips from pooled
  finest-group features (own content vs generation inputs): is the information there at all?
* balance: one batch of ``--batch`` training rows of ``--cache`` through ``--config``'s module with
  ``--model``'s weights: the visual and the (weighted) text gradient on the shared blocks (see
  :func:`balance_part`); why unification slows generation.
* adherence: ``--prompts`` canonical captions of held-out clips (seed 2000), one video each
  (sampling seed 0, the pipeline's default settings), scored by mmgen.metrics.shapes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("color", "shape", "size", "motion")
CAPTION_SEED, PROMPT_SEED = 1000, 2000
CLIP = dict(num_frames=9, background="plain", max_objects=2)
BUILD_CLIPS = 2048  # scripts/build_unified_model.sh's default NUM_SAMPLES


def _held_out(seed: int, n_per_count: int):
    from mmgen.data.moving_shapes import MovingShapes

    ds = MovingShapes(8 * n_per_count, seed=seed, **CLIP)
    clips = {1: [], 2: []}
    for i in range(len(ds)):
        s = ds.sample(i)
        if len(clips[len(s.objects)]) < n_per_count:
            clips[len(s.objects)].append(s)
    return clips


def _parse(text: str):
    from mmgen.data.moving_shapes import parse_caption

    try:
        return parse_caption(text)
    except ValueError:
        return []


def score_caption(pred_text: str, truth: list[dict]) -> list[dict]:
    """Per true object: {field: right?} for colour, shape, size, motion."""
    pred = _parse(pred_text)
    by_color = {p.color: p for p in pred}
    out = []
    for i, t in enumerate(truth):
        p = by_color.get(t["color"]) or (pred[i] if len(truth) == 1 and pred else None)
        out.append({f: p is not None and getattr(p, f) == t[f] for f in FIELDS})
    return out


def caption_part(args) -> list[dict]:
    import torch

    from mmgen.ar.caption import describe
    from mmgen.data.unified import questions
    from mmgen.data.moving_shapes import ObjectSpec
    from mmgen.pipelines.videoar import VideoARPipeline

    torch.set_grad_enabled(False)
    pipe = VideoARPipeline.from_pretrained(args.model)
    clips = _held_out(args.clip_seed, args.clips)
    rows = []
    for count, samples in clips.items():
        t0 = time.perf_counter()
        texts = []
        for i in range(0, len(samples), args.batch):
            texts += describe(pipe, [s.frames for s in samples[i:i + args.batch]])
        truths = [t for s in samples for t in s.objects]
        per_object = [r for s, text in zip(samples, texts) for r in score_caption(text, s.objects)]
        row = {"part": "caption", "model": args.model, "clip_seed": args.clip_seed, "objects": count, "clips": len(samples),
               "seconds": round(time.perf_counter() - t0, 1), "examples": texts[:3]}
        row.update({f: sum(r[f] for r in per_object) / len(per_object) for f in FIELDS})
        row["all_fields"] = sum(all(r.values()) for r in per_object) / len(per_object)
        # where the shape misses are: a small object spans ~11 px of the 64 px frame
        for size in ("small", "large"):
            hits = [r["shape"] for t, r in zip(truths, per_object) if t["size"] == size]
            row[f"shape_{size}"] = sum(hits) / len(hits) if hits else None
            row[f"objects_{size}"] = len(hits)
        rows.append(row)
    # questions about the one-object clips: one question kind at a time (a batch shares the question)
    singles = clips[1]
    kinds = {"count": 0, "shape": 1, "size": 2, "motion": 3, "color": 4}
    qa = {k: [questions([ObjectSpec(**{f: s.objects[0][f] for f in ("shape", "color", "size", "motion")})])[v]
              for s in singles] for k, v in kinds.items()}
    row = {"part": "questions", "model": args.model, "clip_seed": args.clip_seed, "objects": 1, "clips": len(singles)}
    for kind, pairs in qa.items():
        right = 0
        for i in range(0, len(singles), args.batch):
            chunk = singles[i:i + args.batch]
            # the question names the object, so each clip asks its own: group by identical question
            for j, s in enumerate(chunk):
                q, a = pairs[i + j]
                right += describe(pipe, [s.frames], q)[0] == a
        row[kind] = right / len(singles)
    rows.append(row)
    return rows


def visible_part(args) -> list[dict]:
    import torch

    from mmgen.metrics.shapes import expected_from_caption, score_video
    from mmgen.tokenizer import VideoTokenizer

    torch.set_grad_enabled(False)
    tok = VideoTokenizer.from_pretrained(args.tokenizer)
    clips = _held_out(CAPTION_SEED, args.clips)[1]
    codes = tok.tokenize(torch.stack([s.frames for s in clips]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0)
    rows = []
    for n in range(len(codes), 0, -1):
        f_hat = sum(tok.quantizer.dequant_up(codes[k], k) for k in range(n)).transpose(1, 2)
        videos = ((tok.decode(f_hat).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
        scores = [score_video(v, expected_from_caption(_canonical(s))) for s, v in zip(clips, videos)]
        rows.append({"part": "visible", "scales": n, "clips": len(clips),
                     **{f: sum(r[f] for r in scores) / len(scores) for f in FIELDS}})
    return rows


def probe_part(args) -> list[dict]:
    """Linear probes of each field of one-object training clips (3/4 fit, 1/4 scored) from pooled video
    features: per frame, the mean cell and the cells' mean weighted by their distance from the frame's
    median cell (where an object differs from the plain background)."""
    import torch

    from mmgen.ar.unified import video_inputs
    from mmgen.data.latents import LatentCache
    from mmgen.data.moving_shapes import parse_caption
    from mmgen.tokenizer import VideoTokenizer

    torch.manual_seed(args.seed)
    q = VideoTokenizer.from_pretrained(args.tokenizer).quantizer
    cache = LatentCache(args.cache)
    objects = [parse_caption(c) for c in cache.captions]
    idx = [i for i, o in enumerate(objects) if len(o) == 1]
    z = torch.stack([cache[i]["latent"] for i in idx])
    with torch.no_grad():
        codes = q.residual_pass(z)[0]
    latent = z.permute(0, 2, 3, 4, 1)
    rows = []
    for name, cells in (("own (video_inputs, finest group)", video_inputs(q, codes)[-1]),
                        ("gen (next_scale_inputs, finest group)", q.next_scale_inputs(codes)[-1]),
                        ("continuous latent (before quantisation, RMS 1)", latent / latent.pow(2).mean().sqrt())):
        x = cells.flatten(2, 3)
        weight = (x - x.median(2, keepdim=True).values).norm(dim=-1, keepdim=True)
        X = torch.cat([x.mean(2).flatten(1), ((x * weight).sum(2) / (weight.sum(2) + 1e-6)).flatten(1)], 1)
        X = (X - X.mean(0)) / (X.std(0) + 1e-6)
        fit, test = slice(0, len(X) * 3 // 4), slice(len(X) * 3 // 4, len(X))
        # signal vs noise of the cells: a plain background's cells differ from their frame's median
        # cell too (the bit codes of near-zero latents flip); the most object-like cell stands out by this much
        row = {"part": "probe", "features": name, "clips": len(X),
               "median_cell_deviation": round(weight.median(2).values.mean().item(), 2),
               "max_cell_deviation": round(weight.max(2).values.mean().item(), 2)}
        for field in FIELDS:
            labels = [getattr(objects[i][0], field) for i in idx]
            names = sorted(set(labels))
            y = torch.tensor([names.index(v) for v in labels])
            W = torch.zeros(X.shape[1], len(names), requires_grad=True)
            b = torch.zeros(len(names), requires_grad=True)
            opt = torch.optim.Adam([W, b], lr=0.05)
            for _ in range(300):
                loss = torch.nn.functional.cross_entropy(X[fit] @ W + b, y[fit]) + 1e-3 * W.pow(2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
            row[field] = round(((X[test] @ W + b).argmax(1) == y[test]).float().mean().item(), 3)
        rows.append(row)
    return rows


def balance_part(args) -> list[dict]:
    """How the two directions share the transformer's blocks in one training batch: gradient norms of
    the visual loss and of the text loss (times ``text_weight``) on the shared ``blocks.*`` weights,
    their cosine, and per weight element the visual share of the squared gradient, which is what
    Adam divides by (a median far below 0.5 = the text sets the step size of the visual updates)."""
    import torch
    import yaml
    from torch.utils.data import default_collate

    from mmgen.ar.unified_training import UnifiedModule
    from mmgen.data.unified import UnifiedLatents

    torch.manual_seed(args.seed)
    cfg = yaml.safe_load((ROOT / args.config).read_text())["model"] | {"tokenizer": args.tokenizer}
    if args.text_weight is not None:
        cfg["text_weight"] = args.text_weight
    module = UnifiedModule(**cfg, init_from=args.model)
    data = UnifiedLatents(args.cache, understand_ratio=0.5, seed=args.seed)
    batch = default_collate([data[i] for i in range(args.batch)])
    v_loss, t_loss, _, _ = module.losses(batch, train=True)
    shared = [p for n, p in module.model.named_parameters() if n.startswith("blocks.")]
    g_v = torch.cat([g.flatten() for g in torch.autograd.grad(v_loss, shared, retain_graph=True)])
    g_t = torch.cat([g.flatten() for g in torch.autograd.grad(module.hparams.text_weight * t_loss, shared)])
    share = g_v.pow(2) / (g_v.pow(2) + g_t.pow(2)).clamp_min(1e-30)
    return [{"part": "balance", "model": args.model, "text_weight": module.hparams.text_weight, "rows": args.batch,
             "visual_loss": round(v_loss.item(), 4), "text_loss": round(t_loss.item(), 4),
             "grad_visual": round(g_v.norm().item(), 4), "grad_text": round(g_t.norm().item(), 4),
             "cosine": round(torch.nn.functional.cosine_similarity(g_v, g_t, dim=0).item(), 4),
             "visual_share_median": round(share.median().item(), 4)}]


def _canonical(sample) -> str:
    from mmgen.data.moving_shapes import ObjectSpec, caption_of

    return caption_of([ObjectSpec(**{f: o[f] for f in ("shape", "color", "size", "motion")}) for o in sample.objects])


def reading_part(args) -> list[dict]:
    import random

    import torch

    from mmgen.ar.caption import generate_text
    from mmgen.ar.model import VideoAR
    from mmgen.ar.unified import text_loss, text_sequences, video_inputs
    from mmgen.data.latents import LatentCache
    from mmgen.data.moving_shapes import COLORS, caption_of, parse_caption
    from mmgen.data.unified import grammar_words, ordered
    from mmgen.tokenizer import VideoTokenizer

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    q = VideoTokenizer.from_pretrained(args.tokenizer).eval().quantizer
    cache = LatentCache(args.cache)
    objects = [parse_caption(c) for c in cache.captions]
    colors = [list(COLORS).index(o[0].color) for o in objects]
    gen = yaml_generator() | ({"qk_norm": False} if args.no_qk_norm else {})
    if args.inputs == "latent":  # the shipped path: understanding rows read latent= through latent_proj
        gen |= {"understand_input": "latent", "understand_encoder": args.understand_encoder}
    model = VideoAR(bits=q.bits, scales=q.scales, **gen)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))

    def seen(codes, idx=None):
        if args.inputs == "gen":
            return q.next_scale_inputs(codes)
        x = video_inputs(q, codes)  # with --inputs latent only their shapes matter
        if args.inputs in ("oracle", "celloracle"):
            hot = torch.nn.functional.one_hot(torch.tensor([colors[i] for i in idx]), q.bits).float() * 3
            finest = x[-1].flatten(2, 3)  # [B, t, h*w, d]
            if args.inputs == "oracle":
                finest = hot[:, None, None].expand_as(finest)
                x = [hot[:, None, None, None].expand_as(v) for v in x[:-1]]
            else:
                x = x[:-1]
                top = (finest - finest.median(2, keepdim=True).values).norm(dim=-1).topk(2, dim=-1).indices
                finest = finest.scatter(2, top[..., None].expand(-1, -1, -1, q.bits),
                                        hot[:, None, None].expand(-1, finest.shape[1], 2, -1))
            x = [*x, finest.view(*finest.shape[:2], *q.scales[-1], q.bits)]
        return x

    t0, losses = time.perf_counter(), []
    for _ in range(args.steps):
        idx = rng.sample(range(len(cache)), args.batch)
        with torch.no_grad():
            z = torch.stack([cache[i]["latent"] for i in idx])
            inputs = seen(q.residual_pass(z)[0], idx)
        answers = [caption_of(ordered(objects[i], args.caption_order)) for i in idx]
        text, targets = text_sequences(model.words, [""] * len(idx), answers, gen["text_len"])
        latent = z if args.inputs == "latent" else None
        loss, _ = text_loss(model(model.null_condition(len(idx)), inputs, text=text, latent=latent)[1], targets)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        warmup.step()
        losses.append(loss.item())
    row = {"part": "reading", "inputs": args.inputs, "understand_encoder": gen.get("understand_encoder", "linear"),
           "qk_norm": gen.get("qk_norm", True), "caption_order": args.caption_order, "seed": args.seed,
           "steps": args.steps, "batch": args.batch,
           "seconds": round(time.perf_counter() - t0, 1),
           "text_loss_first_25": round(statistics.mean(losses[:25]), 3),
           "text_loss_last_25": round(statistics.mean(losses[-25:]), 3)}
    if args.inputs in ("gen", "own", "latent"):
        model.eval()
        tok = VideoTokenizer.from_pretrained(args.tokenizer).eval()
        with torch.no_grad():
            for n, clips in _held_out(CAPTION_SEED, args.clips).items():
                z = tok.encode(torch.stack([s.frames for s in clips]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0)
                latent = z if args.inputs == "latent" else None
                texts = [model.words.decode(r) for r in generate_text(model, seen(q.residual_pass(z)[0]), latent=latent)]
                per = [r for s, t in zip(clips, texts) for r in score_caption(t, s.objects)]
                row.update({f"{n}obj_{f}": round(sum(r[f] for r in per) / len(per), 3) for f in FIELDS})
    return [row]


def yaml_generator() -> dict:
    """The bit-code unified generator's fields (configs/generator/unified.yaml), without MTP heads."""
    import yaml

    from mmgen.ar.presets import preset_config

    cfg = yaml.safe_load((ROOT / "configs/generator/unified.yaml").read_text())["model"]
    gen = preset_config(cfg["preset"], **cfg["generator"])
    return {k: v for k, v in gen.items() if k not in ("bits", "scales")} | {"mtp_heads": 0}


def _run_dir(args) -> Path:
    """runs/<variant>[-tw<text weight>][-u<understand ratio>][-conv][-ocolor]-s<seed>: one folder per trained arm."""
    weight = "" if args.text_weight is None else f"-tw{args.text_weight:g}"
    ratio = _arm_steps(args)[1]
    share = "" if ratio in (0.0, 0.5) else f"-u{ratio:g}"
    stem = "" if args.understand_encoder == "linear" else f"-{args.understand_encoder}"
    order = "" if args.caption_order == "drawn" else f"-o{args.caption_order}"
    return Path(args.runs) / f"{args.variant}{weight}{share}{stem}{order}-s{args.seed}"


def _arm_steps(args) -> tuple[int, float]:
    """(steps, understand ratio) of the arm: genonly runs --steps / 2 generation-only steps, and the unified
    arm as many steps as give it the same generation rows in expectation at its understand ratio."""
    if args.variant == "genonly":
        return args.steps // 2, 0.0
    return round(args.steps / 2 / (1 - args.understand_ratio)), args.understand_ratio


def train_part(args) -> list[dict]:
    out = _run_dir(args)
    steps, ratio = _arm_steps(args)
    cmd = [sys.executable, "-m", "mmgen.cli", "ar", "fit-unified", "--config", args.config,
           "--seed_everything", str(args.seed), "--data.train.init_args.path", args.cache,
           "--data.train.init_args.understand_ratio", str(ratio), "--data.train.init_args.seed", str(args.seed),
           "--trainer.max_steps", str(steps), "--trainer.max_time", "null", "--model.warmup_steps", str(args.warmup_steps),
           "--model.tokenizer", args.tokenizer,
           "--data.batch_size", str(args.batch),
           *(["--model.text_weight", str(args.text_weight)] if args.text_weight is not None else []),
           *(["--model.generator.understand_encoder", args.understand_encoder]
             if args.understand_encoder != "linear" else []),
           "--data.train.init_args.caption_order", args.caption_order,
           "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    ckpt = sorted(out.glob("lightning_logs/version_*/checkpoints/last.ckpt"))[-1]
    subprocess.run([sys.executable, "-m", "mmgen.cli", "ar", "export", str(ckpt), str(out / "export"),
                    "--sampling", "configs/sample/unified.yaml", "--overwrite"], check=True, cwd=ROOT)
    return [{"part": "train", "variant": args.variant, "seed": args.seed, "steps": steps, "batch": args.batch,
             "understand_ratio": ratio,
             "config": args.config, "text_weight": args.text_weight, "understand_encoder": args.understand_encoder,
             "caption_order": args.caption_order, "seconds": round(seconds, 1), "model": str(out / "export")}]


def adherence_part(args) -> list[dict]:
    import torch

    from mmgen.data.moving_shapes import caption_of, ObjectSpec
    from mmgen.metrics.shapes import expected_from_caption, score_video
    from mmgen.pipelines.videoar import VideoARPipeline, to_uint8_videos

    torch.set_grad_enabled(False)
    model = args.model or str(_run_dir(args) / "export")
    pipe = VideoARPipeline.from_pretrained(model)
    clips = _held_out(PROMPT_SEED, args.prompts)
    prompts = [caption_of([ObjectSpec(**{f: o[f] for f in ("shape", "color", "size", "motion")}) for o in s.objects])
               for n in (1, 2) for s in clips[n]]
    scores = []
    for i in range(0, len(prompts), args.batch):
        chunk = prompts[i:i + args.batch]
        videos = pipe(prompt=chunk, num_frames=CLIP["num_frames"], seed=0, progress=False).frames
        for p, frames in zip(chunk, to_uint8_videos(videos)):
            scores.append(score_video(torch.from_numpy(frames), expected_from_caption(p)))
    recorded = _trained_ratio(model)
    row = {"part": "adherence", "variant": args.variant, "seed": args.seed, "model": model, "prompts": len(prompts),
           "text_weight": args.text_weight,
           "understand_ratio": _arm_steps(args)[1] if recorded is None else recorded,
           "cache_clips": _trained_cache_clips(model),
           "understand_input": pipe.transformer.config.understand_input,
           "understand_encoder": pipe.transformer.config.understand_encoder}
    for key in (*FIELDS, "all_correct"):
        values = [s[key] for s in scores if s[key] is not None]
        row[key] = sum(values) / len(values)
    row["bit_loss"] = _held_out_bit_loss(pipe, [s for n in (1, 2) for s in clips[n]], prompts)
    return [row]


def _trained_data_args(model_dir: str) -> dict:
    """The training set's init_args from the training.json that `mmgen ar export` writes ({} for a
    folder without one, e.g. the shipped model)."""
    try:
        args = json.loads((Path(model_dir) / "training.json").read_text())["config"]["data"]["train"]["init_args"]
    except (OSError, KeyError, TypeError, ValueError):
        return {}
    return args if isinstance(args, dict) else {}


def _trained_ratio(model_dir: str) -> float | None:
    """The share of understanding rows the model was trained on (None when not recorded: the
    command line's then)."""
    try:
        return float(_trained_data_args(model_dir)["understand_ratio"])
    except (KeyError, TypeError, ValueError):
        return None


def _trained_cache_clips(model_dir: str) -> int:
    """How many distinct clips the model's latent cache held, so arms trained on caches of different
    sizes stay apart in the table; the build's 2048 when it is unknown."""
    try:
        cache = ROOT / _trained_data_args(model_dir)["path"]
        return int(json.loads((cache / "meta.json").read_text())["num_samples"])
    except (OSError, KeyError, TypeError, ValueError):
        return BUILD_CLIPS


def _held_out_bit_loss(pipe, samples, prompts) -> float:
    """Teacher-forced bitwise BCE of the held-out clips given their captions (generation rows)."""
    import torch
    import torch.nn.functional as F

    x = torch.stack([s.frames for s in samples]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    codes = pipe.tokenizer.tokenize(x)
    model = pipe.transformer
    logits = model(prompts, pipe.tokenizer.quantizer.next_scale_inputs(codes))
    target = model.layout(codes[0].shape[1]).flatten_visual(codes)
    return float(F.binary_cross_entropy_with_logits(logits, (target > 0).float()))


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:  # one seed has no spread to show
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _diff(a: list[float], b: list[float]) -> str:
    """mean(a) - mean(b) ± the standard error of that difference (seed spreads of both arms; none
    when either arm has a single seed, whose spread is unknown)."""
    d = f"{statistics.mean(a) - statistics.mean(b):+.3f}"
    if min(len(a), len(b)) < 2:
        return d
    return f"{d} ± {sum(statistics.variance(x) / len(x) for x in (a, b)) ** 0.5:.3f}"


def table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        clips = "held-out" if r.get("clip_seed", CAPTION_SEED) != 0 else "training"
        if r["part"] in ("visible", "reading", "probe", "balance"):
            lines.append(json.dumps(r))
        elif r["part"] == "caption":
            by_size = ", ".join(f"shape of {k} objects {r[f'shape_{k}']:.3f} ({r[f'objects_{k}']})"
                                for k in ("small", "large") if r.get(f"shape_{k}") is not None)
            lines.append(f"caption {r['objects']}-object ({r['clips']} {clips} clips, {r['model']}): " +
                         ", ".join(f"{f} {r[f]:.3f}" for f in (*FIELDS, "all_fields")) +
                         (f"; {by_size}" if by_size else ""))
        elif r["part"] == "questions":
            lines.append(f"questions 1-object ({r['clips']} {clips} clips): " +
                         ", ".join(f"{k} {r[k]:.3f}" for k in ("count", "color", "shape", "size", "motion")))
    adh = [r for r in rows if r["part"] == "adherence"]
    if adh:
        lines.append("| variant | seeds | " + " | ".join(("colour", "shape", "size", "motion", "all correct",
                                                           "held-out bit loss")) + " |")
        lines.append("|---|---|" + "---|" * 6)
        def arm(r):  # rows from before a field was recorded: the shipped config's value
            share = r.get("understand_ratio", 0.5 if r["variant"] == "unified" else 0.0)
            weight = None if r["variant"] == "genonly" else r.get("text_weight")  # no text rows: no weight
            return (r["variant"], weight, share, r.get("understand_input", "latent"),
                    r.get("understand_encoder", "linear"), r["prompts"], r.get("cache_clips", BUILD_CLIPS))

        arms = sorted({arm(r) for r in adh}, key=lambda a: (a[5], a[6], a[0], a[1] or -1.0, *a[2:5]))
        for a in arms:
            variant, weight, share, reads, stem, prompts, clips = a
            rs = [r for r in adh if arm(r) == a]
            name = variant if weight is None else f"{variant}, text weight {weight:g}"
            name += "" if share in (0.0, 0.5) else f", {share:g} understanding rows"
            name += ("" if reads == "latent" else f", reads {reads}") + ("" if stem == "linear" else f", {stem} stem")
            name += "" if clips == BUILD_CLIPS else f", {clips} training clips"
            lines.append(f"| {name}, {prompts} prompts | {len(rs)} | " +
                         " | ".join(_ms([r[k] for r in rs if k in r]) for k in (*FIELDS, "all_correct", "bit_loss"))
                         + " |")
        # the question: unified minus generation-only on the same prompts (a genonly arm has no
        # text rows, so its text weight does not matter); ± = standard error of the difference of means
        for a in arms:
            base = [r for r in adh if r["variant"] == "genonly" and r["prompts"] == a[5]
                    and r.get("cache_clips", BUILD_CLIPS) == a[6]]
            rs = [r for r in adh if arm(r) == a]
            if a[0] == "genonly" or not base:
                continue
            lines.append(f"difference to genonly ({a[5]} prompts, {a[6]} training clips, {len(rs)} vs {len(base)} seeds), {a[0]} text weight "
                         f"{a[1]}, {a[2]:g} understanding rows: " +
                         ", ".join(f"{k} {_diff([r[k] for r in rs], [r[k] for r in base])}"
                                   for k in (*FIELDS, "all_correct")))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("caption", "train", "adherence", "table", "visible", "reading", "probe",
                                       "balance"))
    p.add_argument("--model", help="pipeline folder (caption: default mmgen/assets/unified; balance: a trained "
                   "transformer/ folder, none = at initialisation)")
    p.add_argument("--clips", type=int, default=64, help="held-out clips per object count (caption)")
    p.add_argument("--clip-seed", type=int, default=CAPTION_SEED,
                   help=f"caption: MovingShapes seed of the clips (default {CAPTION_SEED}: held out; 0 = the "
                   "build cache's seed, i.e. training clips, the first 8 x --clips of them)")
    p.add_argument("--prompts", type=int, default=8, help="held-out prompts per object count (adherence)")
    p.add_argument("--batch", type=int, default=16, help="clips per step (train) or per sampling batch")
    p.add_argument("--variant", choices=("unified", "genonly"), default="unified")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=300, help="unified steps at understand ratio 0.5 (genonly runs "
                   "half; another --understand-ratio runs as many as keep the generation rows equal)")
    p.add_argument("--understand-ratio", type=float, default=0.5,
                   help="train / adherence: the unified arm's share of understanding rows (run folder -u<ratio>)")
    p.add_argument("--config", default="configs/generator/unified_latent.yaml", help="train: the generator config")
    p.add_argument("--cache", default="runs/unified/latents", help="latent cache of scripts/build_unified_model.sh")
    p.add_argument("--runs", default="runs/unified_bench")
    p.add_argument("--inputs", choices=("gen", "own", "latent", "oracle", "celloracle"), default="own", help="reading: the video the text reads")
    p.add_argument("--understand-encoder", choices=("linear", "conv"), default="linear",
                   help="reading --inputs latent / train / adherence: the generator's understand_encoder")
    p.add_argument("--caption-order", choices=("drawn", "color"), default="drawn",
                   help="reading / train: the order a two-object caption target names its objects "
                   "(mmgen.data.unified.UnifiedLatents caption_order; run folder -ocolor)")
    p.add_argument("--no-qk-norm", action="store_true", help="reading: the generator without QK-norm")
    p.add_argument("--tokenizer", default=str(ROOT / "mmgen/assets/unified/tokenizer"),
                   help="train / visible / reading: the tokenizer that made --cache (default: the unified build's)")
    p.add_argument("--text-weight", type=float, help="train / adherence: the arm whose text loss weighs this "
                   "(model.text_weight; default: the config's)")
    p.add_argument("--warmup-steps", type=int, default=10, help="train (the shipped build: 30)")
    p.add_argument("--log", default="runs/unified_bench/results.jsonl")
    args = p.parse_args()
    log = Path(args.log)
    if args.part == "table":
        print(table([json.loads(line) for line in log.read_text().splitlines()]))
        return
    if args.part == "caption" and args.model is None:
        args.model = str(ROOT / "mmgen/assets/unified")
    rows = {"caption": caption_part, "train": train_part, "adherence": adherence_part, "visible": visible_part,
            "reading": reading_part, "probe": probe_part, "balance": balance_part}[args.part](args)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
