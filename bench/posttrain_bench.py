"""Post-training of the shipped default model: fine-tuning methods and RL with verifiable rewards.

    python bench/posttrain_bench.py --part ft  --json runs/posttrain_bench/ft.json   # fine-tuning table
    python bench/posttrain_bench.py --part rl  --json runs/posttrain_bench/rl.json   # RL table
    python bench/posttrain_bench.py --part ceiling                                   # codec round trip
    python bench/posttrain_bench.py --part diversity --under-dir runs/pb/under       # diversity vs temperature

Base model: mmgen/assets/default (32 training captions: large circles, 8 colours, 4 motions).

Fine-tuning (``--part ft``): the new concept is a shape the base never saw (``--concept``,
default diamond). 24 of its 32 "large <colour> <concept> moving <motion>" captions are trained
on, 8 are held out (colour i with motion i mod 4). Each method runs the same steps and batch
on the same clips per seed with its own learning rate (``--lr METHOD=LR``); LoRA/BeamLoRA
rank 8 on every block linear vs APEX (attention/FFN set ratio 0.25) have ~71-73k trainable
parameters; full fine-tuning trains all 829k (it cannot be matched). Scores: the analytic
MovingShapes benchmark on ``--eval-n`` videos per prompt at the pipeline's default sampling
settings: held-out concept prompts (reward = mean of colour/shape/size/motion/count adherence,
and shape accuracy alone) and 8 of the old circle prompts (forgetting = base score -
fine-tuned score); plus the teacher-forced bit loss on 16 encoded held-out and 16 old clips.

The tokenizer bounds what any fine-tuning can reach: ``--part ceiling`` scores real clips of
each shape after the round trip through the codes (bench/tokenizer_bench.py's ceiling).

RL (``--part rl``): the under-trained model is the base LoRA-fine-tuned for only
``--under-steps`` steps on the concept (a fresh generator trained from scratch for 200 steps
scores 0.08 at temperature 1: nothing to amplify), cached in ``--under-dir``. GRPO on the
concept's 24 training captions, plain (``--etas 0``) and with CD-RLHF curiosity at each other
``--etas`` value, same steps, lr warm-up (``--warmup``) and seed; scored
on its 8 held-out captions at the rollout settings (no CFG, the rollout temperature): reward,
motion and colour adherence, diversity (mean pairwise pixel distance of
the videos of one prompt). One row per RL seed, then mean +- std; each curiosity row is also
compared with plain GRPO paired by seed. ``--part diversity`` checks that the diversity measure
rises with the sampling temperature on one model.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchutil import write_json
from tokenizer_bench import print_ceiling, tokenizer_ceiling

from mmgen.data.default_model import DefaultModelShapes, captions
from mmgen.data.moving_shapes import COLORS, SHAPES
from mmgen.posttrain.apex import APEXConfig
from mmgen.posttrain.beamlora import BeamLoRAConfig
from mmgen.posttrain.cli import load_pipeline
from mmgen.posttrain.finetune import DEFAULT_LR, FinetuneConfig, Finetuner, encode_clips, teacher_forced_loss
from mmgen.posttrain.rewards import evaluate_prompts
from mmgen.posttrain.rl import GRPOTrainer, RLConfig

MOTIONS = ("left", "right", "up", "down")
OLD = [f"a large {c} circle moving {MOTIONS[(i + 1) % 4]}" for i, c in enumerate(COLORS)]
METHODS = ("full", "lora", "beamlora", "apex")


def held_out(concept: str) -> list[str]:
    return [f"a large {c} {concept} moving {MOTIONS[i % 4]}" for i, c in enumerate(COLORS)]


def train_captions(concept: str) -> list[str]:
    return [c for c in captions(shapes=(concept,)) if c not in held_out(concept)]


def clips(seed: int, n: int, tokenizer, allowed, shape):
    pool = DefaultModelShapes(4 * n, seed=seed, shapes=(shape,))
    keep = [i for i in range(len(pool)) if pool.shapes.sample(pool.indices[i]).caption in allowed][:n]
    return encode_clips(tokenizer, [pool[i] for i in keep])


@torch.no_grad()
def clip_loss(pipe, data) -> tuple[float, float]:
    """Teacher-forced bit loss and accuracy on encoded clips (a finer signal than sampled adherence)."""
    latents, caps = data
    loss, acc = teacher_forced_loss(pipe.transformer.eval(), pipe.tokenizer.quantizer, latents, caps)
    return loss.item(), acc.item()


def fmt(values) -> str:
    values = [v for v in values if v == v]  # drop NaN (not measured)
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def part_ceiling(args) -> dict:
    """Adherence of real clips after the tokenizer's round trip: the best any generator can draw."""
    rows = tokenizer_ceiling(load_pipeline(None).tokenizer, clips=args.clips)
    print_ceiling(rows, f"Tokenizer round trip of {args.clips} real clips per shape and size (colours cycled):")
    return {"rows": rows, "args": vars(args)}


def part_ft(args) -> dict:
    base = load_pipeline(None)  # the shipped default model
    new_prompts = held_out(args.concept)
    train_caps = train_captions(args.concept)
    lrs = {**DEFAULT_LR, **dict((k, float(v)) for k, v in (s.split("=") for s in args.lr))}

    def sampled(pipe, prompts, seed) -> dict:
        return evaluate_prompts(pipe, prompts, args.eval_n, seed=seed)

    t0 = time.time()
    base_new = sampled(base, new_prompts, 100)
    base_old = sampled(base, OLD, 100)
    held_clips = clips(99, 16, base.tokenizer, new_prompts, args.concept)
    old_clips = clips(99, 16, base.tokenizer, OLD, "circle")
    base_new["loss"], base_new["bit_acc"] = clip_loss(base, held_clips)
    base_old["loss"], base_old["bit_acc"] = clip_loss(base, old_clips)
    print(f"base: held-out {args.concept} reward {base_new['reward']:.3f} shape {base_new['shape']:.3f}; "
          f"old circles reward {base_old['reward']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    rows = {m: [] for m in args.methods}
    for seed in args.seeds:
        latents, caps = clips(seed, args.clips, base.tokenizer, train_caps, args.concept)
        for method in args.methods:
            pipe = copy.deepcopy(base)
            cfg = FinetuneConfig(method=method, steps=args.steps, batch_size=args.batch, seed=seed, rank=8,
                                 lr=lrs[method], beam=BeamLoRAConfig(interval=max(2, args.steps // 5)),
                                 apex=APEXConfig(attn_ratio=0.25, ffn_ratio=0.25), apex_stages=2)
            tuner = Finetuner(pipe.transformer, pipe.tokenizer.quantizer, cfg, log=lambda s: None)
            t0 = time.time()
            hist = tuner.run(latents, caps)
            tuner.finish()
            train_s = time.time() - t0
            new = sampled(pipe, new_prompts, 100 + seed)
            old = sampled(pipe, OLD, 100 + seed)
            new["loss"], new["bit_acc"] = clip_loss(pipe, held_clips)
            old["loss"], old["bit_acc"] = clip_loss(pipe, old_clips)
            row = {"seed": seed, "lr": lrs[method], "new_loss": new["loss"], "new_acc": new["bit_acc"],
                   "old_loss": old["loss"], "trainable": hist["trainable_parameters"], "final_loss": hist["loss"][-1],
                   "new_reward": new["reward"], "new_shape": new["shape"], "old_reward": old["reward"],
                   "forgetting": base_old["reward"] - old["reward"], "train_s": train_s,
                   "beam_rounds": len(hist.get("beamlora_rounds", []))}
            rows[method].append(row)
            print(f"seed {seed} {method:8s} lr {lrs[method]:g} loss {row['final_loss']:.4f} held-out loss "
                  f"{new['loss']:.4f} old loss {old['loss']:.4f} new reward {new['reward']:.3f} "
                  f"shape {new['shape']:.3f} old reward {old['reward']:.3f} ({train_s:.0f} s train)", flush=True)
    result = {"base": {"new": base_new, "old": base_old}, "rows": rows, "args": vars(args)}
    table_ft(result)
    return result


def table_ft(result: dict) -> None:
    args, rows, base_new, base_old = result["args"], result["rows"], result["base"]["new"], result["base"]["old"]
    seeds = sorted({x["seed"] for r in rows.values() for x in r})
    print(f"\nFine-tuning on {args['concept']}s: {args['steps']} steps x batch {args['batch']}, {args['clips']} clips, "
          f"seeds {seeds}, {args['eval_n']} videos per prompt")
    print(f"base (no fine-tuning): held-out reward {base_new['reward']:.3f}, shape {base_new['shape']:.3f}, "
          f"loss {base_new['loss']:.4f}; old reward {base_old['reward']:.3f}, loss {base_old['loss']:.4f}")
    print(f"| method | lr | trainable params | held-out {args['concept']} reward | held-out shape acc "
          "| old-prompt reward drop (forgetting) | held-out loss | old-circle loss increase |")
    print("|---|---|---|---|---|---|---|---|")
    for m, r in rows.items():
        print(f"| {m} | {r[0]['lr']:g} | {r[0]['trainable']} | {fmt([x['new_reward'] for x in r])} "
              f"| {fmt([x['new_shape'] for x in r])} | {fmt([x['forgetting'] for x in r])} "
              f"| {fmt([x['new_loss'] for x in r])} | +{fmt([x['old_loss'] - base_old['loss'] for x in r])} |")


def under_trained(args):
    """The shipped model briefly LoRA-fine-tuned on the new concept (``--under-steps`` steps at the
    LoRA default lr on the concept's 24 training captions): it has started to learn the concept,
    so its samples of held-out concept prompts are partly right and RL has a signal to amplify.
    Loaded from / saved to ``--under-dir`` when given."""
    if args.under_dir and Path(args.under_dir, "model_index.json").exists():
        print(f"under-trained model: loaded from {args.under_dir}", flush=True)
        return load_pipeline(args.under_dir)
    pipe = load_pipeline(None)
    data = clips(0, args.clips, pipe.tokenizer, train_captions(args.concept), args.concept)
    t0 = time.time()
    tuner = Finetuner(pipe.transformer, pipe.tokenizer.quantizer,
                      FinetuneConfig(method="lora", steps=args.under_steps, batch_size=args.batch, seed=0),
                      log=lambda s: None)
    hist = tuner.run(*data)
    tuner.finish()
    print(f"under-trained model: {args.under_steps} LoRA steps on {args.concept}s, final loss "
          f"{hist['loss'][-1]:.4f} ({time.time() - t0:.0f} s)", flush=True)
    if args.under_dir:
        pipe.save_pretrained(args.under_dir)
    return pipe


def raw_settings(temperature: float) -> dict:
    """The RL rollout's sampling: the policy's own distribution (no CFG, no nucleus cut)."""
    return {"guidance": 1.0, "top_p": 1.0, "temperature": {"coarse": temperature, "fine": temperature}}


@torch.no_grad()
def part_diversity(args) -> dict:
    """Is the diversity measure sensitive? The under-trained model's held-out prompts sampled at
    several temperatures: diversity should rise with the temperature."""
    base = under_trained(args)
    rows = {t: evaluate_prompts(base, held_out(args.concept), args.eval_n, seed=200, **raw_settings(t))
            for t in args.temperatures}
    print(f"Diversity vs sampling temperature (under-trained model, {len(held_out(args.concept))} held-out prompts "
          f"x {args.eval_n} videos, no CFG):")
    print("| temperature | diversity (pixel) | held-out reward |")
    print("|---|---|---|")
    for t, r in rows.items():
        print(f"| {t:g} | {r['diversity']:.4f} | {r['reward']:.3f} |")
    return {"rows": {str(t): r for t, r in rows.items()}, "args": vars(args)}


def variant_name(eta: float, args) -> str:
    if eta == 0:
        return "GRPO"
    extra = [f"ICM lr {args.icm_lr:g}"] if args.icm_lr != RLConfig.icm_lr else []
    extra += ["zero-mean whitening"] if args.drop_mean else []
    return f"GRPO + curiosity eta {eta:g}" + (f" ({', '.join(extra)})" if extra else "")


def part_rl(args) -> dict:
    base = under_trained(args)
    raw = raw_settings(args.temperature)
    variants = {variant_name(e, args): e for e in args.etas}

    def evaluate(pipe) -> dict:
        return evaluate_prompts(pipe, held_out(args.concept), args.eval_n, seed=200, **raw)

    start = evaluate(base)
    print(f"start: {start}", flush=True)
    rows = {name: [] for name in variants}
    for seed in args.seeds:
        for name, eta in variants.items():
            pipe = copy.deepcopy(base)
            cfg = RLConfig(steps=args.rl_steps, prompts_per_step=args.prompts_per_step, group_size=args.group,
                           lr=args.rl_lr, warmup_steps=args.warmup, kl_coef=args.kl_coef, temperature=args.temperature,
                           curiosity=eta > 0, eta=eta or RLConfig.eta, icm_lr=args.icm_lr,
                           keep_mean=not args.drop_mean, seed=seed)
            t0 = time.time()
            hist = GRPOTrainer(pipe, train_captions(args.concept), cfg,
                               log=lambda s, tag=f"{name} seed {seed}": print(f"  {tag}: {s}", flush=True)).run()
            res = evaluate(pipe)
            res.update(seed=seed, train_s=time.time() - t0, history=hist,
                       flat_groups=float(np.mean([h["flat_groups"] for h in hist])),
                       train_reward_first_last=(float(np.mean([h["reward"] for h in hist[:5]])),
                                                float(np.mean([h["reward"] for h in hist[-5:]]))),
                       intrinsic_push=float(np.mean([h.get("intrinsic_push", 0.0) for h in hist])))
            rows[name].append(res)
            print(f"seed {seed} {name}: reward {res['reward']:.3f} (start {start['reward']:.3f}) diversity "
                  f"{res['diversity']:.4f} train reward {res['train_reward_first_last'][0]:.3f} -> "
                  f"{res['train_reward_first_last'][1]:.3f} flat groups {res['flat_groups']:.2f} "
                  f"({res['train_s']:.0f} s)", flush=True)
    result = {"start": start, "rows": rows, "args": vars(args)}
    table_rl(result)
    return result


def table_rl(result: dict) -> None:
    args, rows, start = argparse.Namespace(**result["args"]), result["rows"], result["start"]
    args.seeds = sorted({x["seed"] for r in rows.values() for x in r})
    print(f"\nRL on an under-trained model ({args.under_steps} LoRA steps on {args.concept}s), sampled without CFG at "
          f"temperature {args.temperature}: {args.rl_steps} GRPO steps x {args.prompts_per_step} prompts x group "
          f"{args.group}, lr {args.rl_lr} (warm-up {getattr(args, 'warmup', 0)} steps), KL {args.kl_coef}; trained on the 24 training captions, "
          f"scored on the 8 held-out ones, {args.eval_n} videos each; seeds {args.seeds}")
    print("| model | held-out reward | gain | shape | motion | colour | all correct | diversity (pixel) "
          "| flat groups | mean bonus on non-greedy bits |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| under-trained start | {start['reward']:.3f} | | {start['shape']:.3f} | {start['motion']:.3f} "
          f"| {start['color']:.3f} | {start['all_correct']:.3f} | {start['diversity']:.4f} | | |")
    for name, r in rows.items():
        print(f"| {name} | {fmt([x['reward'] for x in r])} | {fmt([x['reward'] - start['reward'] for x in r])} "
              f"| {fmt([x['shape'] for x in r])} | {fmt([x['motion'] for x in r])} | {fmt([x['color'] for x in r])} "
              f"| {fmt([x['all_correct'] for x in r])} | {fmt([x['diversity'] for x in r])} "
              f"| {fmt([x['flat_groups'] for x in r])} | {fmt([x['intrinsic_push'] for x in r])} |")
    plain = {x["seed"]: x for x in rows.get("GRPO", [])}
    for name, r in rows.items():
        pairs = [(plain[c["seed"]], c) for c in r if name != "GRPO" and c["seed"] in plain]
        if pairs:
            rel = [c["diversity"] / p["diversity"] - 1 for p, c in pairs]
            gap = [c["reward"] - p["reward"] for p, c in pairs]
            print(f"{name} vs plain GRPO, paired by seed: diversity {fmt(rel)} relative, "
                  f"reward {fmt(gap)} absolute")


def merge(part: str, files: list[str]) -> None:
    """One table from runs of the same settings, e.g. one seed each (base / start taken from the first)."""
    results = [json.loads(Path(f).read_text()) for f in files]
    names = list(dict.fromkeys(k for r in results for k in r["rows"]))
    merged = dict(results[0], rows={k: [x for r in results for x in r["rows"].get(k, [])] for k in names})
    {"ft": table_ft, "rl": table_rl}[part](merged)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("ft", "rl", "ceiling", "diversity"), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--concept", default="diamond", choices=SHAPES[1:], help="ft: the new shape")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--lr", nargs="*", default=[], metavar="METHOD=LR", help="ft: per-method learning rates")
    p.add_argument("--steps", type=int, default=16, help="fine-tuning steps per method")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--eval-n", type=int, default=4, help="videos per scored prompt")
    p.add_argument("--prompts-per-step", type=int, default=2, help="RL")
    p.add_argument("--under-steps", type=int, default=20, help="RL: LoRA steps of the under-trained model")
    p.add_argument("--under-dir", help="RL: cache folder of the under-trained model")
    p.add_argument("--rl-steps", type=int, default=10)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--rl-lr", type=float, default=5e-5)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--temperature", type=float, default=1.0, help="RL rollout and evaluation temperature")
    p.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.06],
                   help="RL variants: curiosity scales, 0 = plain GRPO")
    p.add_argument("--warmup", type=int, default=0, help="RL: linear lr warm-up steps")
    p.add_argument("--icm-lr", type=float, default=RLConfig.icm_lr, help="RL: the curiosity module's lr")
    p.add_argument("--drop-mean", action="store_true", help="RL: zero-mean whitening of the intrinsic reward")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.25, 0.5, 1.0, 1.5],
                   help="diversity: sampling temperatures")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="print the --part table of these --json results (e.g. one seed per file) and exit")
    args = p.parse_args()
    if args.merge:
        merge(args.part, args.merge)
        return
    torch.set_num_threads(1)
    result = {"ft": part_ft, "rl": part_rl, "ceiling": part_ceiling, "diversity": part_diversity}[args.part](args)
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
