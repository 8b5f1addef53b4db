"""Post-training of the shipped default model: fine-tuning methods and RL with verifiable rewards.

    python bench/posttrain_bench.py --part ft  --json runs/posttrain_bench/ft.json   # fine-tuning table
    python bench/posttrain_bench.py --part rl  --json runs/posttrain_bench/rl.json   # RL table

Base model: mmgen/assets/default (32 training captions: large circles, 8 colours, 4 motions).

Fine-tuning (``--part ft``): the new concept is the square (the base draws every shape as a
circle). 24 of the 32 "large <colour> square moving <motion>" captions are trained on, 8 are
held out (colour i with motion i mod 4 ... see HELD_OUT). Each method runs the same steps and
batch on the same clips per seed; LoRA/BeamLoRA rank 8 on every block linear vs APEX
(attention/FFN set ratio 0.25) have ~71-73k trainable parameters; full fine-tuning trains all
829k (it cannot be matched). Scores: the analytic MovingShapes benchmark on one video per
prompt at the pipeline's default sampling settings: held-out square prompts (reward = mean of
colour/shape/size/motion/count adherence, and shape accuracy alone) and 8 of the old circle
prompts (forgetting = base score - fine-tuned score). Mean +- std over the seeds.

Besides sampled adherence, the teacher-forced bit loss on 16 encoded held-out square clips and
16 old circle clips is reported (sampled adherence is coarse: a shape flips only once learned).

RL (``--part rl``): the under-trained model is a fresh generator of the default architecture
trained for ``--under-steps`` steps (the default recipe ran 1200) on the 32 default captions.
GRPO on 24 of the 32 captions, plain and with CD-RLHF curiosity, same steps
and seed; scored on the other 8 (OLD) at the rollout settings: reward, motion and colour
adherence, diversity (mean pairwise pixel distance of the videos of one prompt).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from benchutil import write_json

from mmgen.ar.model import VideoAR
from mmgen.data.moving_shapes import COLORS
from mmgen.data.default_model import DefaultModelShapes, captions
from mmgen.posttrain.apex import APEXConfig
from mmgen.posttrain.beamlora import BeamLoRAConfig
from mmgen.posttrain.cli import load_pipeline
from mmgen.posttrain.finetune import FinetuneConfig, Finetuner, encode_clips, teacher_forced_loss
from mmgen.posttrain.rewards import evaluate_prompts
from mmgen.pipelines.videoar import VideoARPipeline
from mmgen.posttrain.rl import GRPOTrainer, RLConfig

MOTIONS = ("left", "right", "up", "down")
SQUARES = captions(shapes=("square",))
HELD_OUT = [f"a large {c} square moving {MOTIONS[i % 4]}" for i, c in enumerate(COLORS)]
TRAIN = [c for c in SQUARES if c not in HELD_OUT]
OLD = [f"a large {c} circle moving {MOTIONS[(i + 1) % 4]}" for i, c in enumerate(COLORS)]
METHODS = ("full", "lora", "beamlora", "apex")
RL_TRAIN = [c for c in captions() if c not in OLD]  # the default model's other 24 captions


def clips(seed: int, n: int, tokenizer, allowed=TRAIN, shape="square"):
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


def part_ft(args) -> dict:
    base = load_pipeline(None)  # the shipped default model
    t0 = time.time()

    def sampled(pipe, prompts, seed) -> dict:
        nan = {"reward": float("nan"), "shape": float("nan")}
        return evaluate_prompts(pipe, prompts, 1, seed=seed) if args.sampled else nan

    base_new = sampled(base, HELD_OUT, 100)
    base_old = sampled(base, OLD, 100)
    held_clips = clips(99, 16, base.tokenizer, allowed=HELD_OUT)
    old_clips = clips(99, 16, base.tokenizer, allowed=OLD, shape="circle")
    base_new["loss"], base_new["bit_acc"] = clip_loss(base, held_clips)
    base_old["loss"], base_old["bit_acc"] = clip_loss(base, old_clips)
    print(f"base: held-out squares reward {base_new['reward']:.3f} shape {base_new['shape']:.3f}; "
          f"old circles reward {base_old['reward']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    rows = {m: [] for m in METHODS}
    for seed in args.seeds:
        latents, caps = clips(seed, args.clips, base.tokenizer)
        for method in METHODS:
            pipe = copy.deepcopy(base)
            cfg = FinetuneConfig(method=method, steps=args.steps, batch_size=args.batch, seed=seed, rank=8,
                                 beam=BeamLoRAConfig(interval=max(2, args.steps // 4)),
                                 apex=APEXConfig(attn_ratio=0.25, ffn_ratio=0.25), apex_stages=2)
            tuner = Finetuner(pipe.transformer, pipe.tokenizer.quantizer, cfg, log=lambda s: None)
            t0 = time.time()
            hist = tuner.run(latents, caps)
            tuner.finish()
            train_s = time.time() - t0
            new = sampled(pipe, HELD_OUT, 100 + seed)
            old = sampled(pipe, OLD, 100 + seed)
            new["loss"], new["bit_acc"] = clip_loss(pipe, held_clips)
            old["loss"], old["bit_acc"] = clip_loss(pipe, old_clips)
            row = {"seed": seed, "new_loss": new["loss"], "new_acc": new["bit_acc"], "old_loss": old["loss"], "trainable": hist["trainable_parameters"], "final_loss": hist["loss"][-1],
                   "new_reward": new["reward"], "new_shape": new["shape"], "old_reward": old["reward"],
                   "forgetting": base_old["reward"] - old["reward"], "train_s": train_s,
                   "beam_rounds": len(hist.get("beamlora_rounds", []))}
            rows[method].append(row)
            print(f"seed {seed} {method:8s} loss {row['final_loss']:.4f} held-out loss {new['loss']:.4f} "
                  f"old loss {old['loss']:.4f} new reward {new['reward']:.3f} "
                  f"shape {new['shape']:.3f} old reward {old['reward']:.3f} ({train_s:.0f} s train)", flush=True)
    print(f"\nFine-tuning on squares: {args.steps} steps x batch {args.batch}, {args.clips} clips, seeds {args.seeds}"
          + ("" if args.sampled else " (no sampled evaluation: --sampled)"))
    print(f"base (no fine-tuning): held-out reward {base_new['reward']:.3f}, shape {base_new['shape']:.3f}, "
          f"loss {base_new['loss']:.4f}; old reward {base_old['reward']:.3f}, loss {base_old['loss']:.4f}")
    print("| method | trainable params | held-out square loss | held-out bit acc | old-circle loss (forgetting: "
          "increase over base) | held-out reward | held-out shape acc | old-prompt reward drop |")
    print("|---|---|---|---|---|---|---|---|")
    for m in METHODS:
        r = rows[m]
        print(f"| {m} | {r[0]['trainable']} | {fmt([x['new_loss'] for x in r])} | {fmt([x['new_acc'] for x in r])} "
              f"| {fmt([x['old_loss'] for x in r])} (+{fmt([x['old_loss'] - base_old['loss'] for x in r])}) "
              f"| {fmt([x['new_reward'] for x in r])} | {fmt([x['new_shape'] for x in r])} "
              f"| {fmt([x['forgetting'] for x in r])} |")
    return {"base": {"new": base_new, "old": base_old}, "rows": rows, "args": vars(args)}


def under_trained(args):
    """A fresh generator of the default model's architecture trained for only ``--under-steps`` steps
    (the default recipe's lr) on clips of all 32 default captions, with the default tokenizer."""
    shipped = load_pipeline(None)
    torch.manual_seed(0)
    pipe = VideoARPipeline(tokenizer=shipped.tokenizer, transformer=VideoAR.from_config(shipped.transformer.config),
                           fps=shipped.fps, sampling=shipped.config.sampling)
    data = clips(0, args.clips, pipe.tokenizer, allowed=captions(), shape="circle")
    t0 = time.time()
    hist = Finetuner(pipe.transformer, pipe.tokenizer.quantizer,
                     FinetuneConfig(method="full", steps=args.under_steps, batch_size=args.batch, lr=2e-3, seed=0),
                     log=lambda s: None).run(*data)
    print(f"under-trained model: {args.under_steps} steps, final loss {hist['loss'][-1]:.4f} "
          f"({time.time() - t0:.0f} s)", flush=True)
    return pipe


def part_rl(args) -> dict:
    base = under_trained(args)
    raw = {"guidance": 1.0, "temperature": {"coarse": 1.0, "fine": 1.0}}  # the distribution RL samples
    rows = {}

    def evaluate(pipe) -> dict:
        r = evaluate_prompts(pipe, OLD, args.eval_n, seed=200, **raw)
        return r

    rows["under-trained start"] = evaluate(base)
    print(f"start: {rows['under-trained start']}", flush=True)
    for name, curiosity in (("GRPO", False), ("GRPO + curiosity", True)):
        pipe = copy.deepcopy(base)
        trainer = GRPOTrainer(pipe, RL_TRAIN, RLConfig(steps=args.rl_steps, prompts_per_step=args.prompts_per_step, group_size=args.group,
                                                       lr=args.rl_lr, curiosity=curiosity, seed=0))
        hist = trainer.run()
        res = evaluate(pipe)
        res["train_reward_first_last"] = (hist[0]["reward"], hist[-1]["reward"])
        res["history"] = hist
        rows[name] = res
        print(f"{name}: { {k: v for k, v in res.items() if k != 'history'} }", flush=True)
    print(f"\nRL on an under-trained model ({args.under_steps} steps from scratch), sampled without CFG at "
          f"temperature 1: {args.rl_steps} "
          f"GRPO steps x {args.prompts_per_step} prompts x group {args.group}, lr {args.rl_lr}; trained on 24 of its 32 captions, "
          f"scored on the other 8, {args.eval_n} videos each")
    print("| model | held-out reward | motion | colour | all correct | diversity (pixel) |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['reward']:.3f} | {r['motion']:.3f} | {r['color']:.3f} | {r['all_correct']:.3f} "
              f"| {r['diversity']:.4f} |")
    return {"rows": rows, "args": vars(args)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("ft", "rl"), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=16, help="fine-tuning steps per method")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--sampled", action="store_true", help="ft: also sample and score (1 video per prompt)")
    p.add_argument("--prompts-per-step", type=int, default=2, help="RL")
    p.add_argument("--under-steps", type=int, default=80, help="RL: training steps of the under-trained model")
    p.add_argument("--rl-steps", type=int, default=10)
    p.add_argument("--eval-n", type=int, default=2, help="RL: videos per held-out prompt")
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--rl-lr", type=float, default=5e-5)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(1)
    result = part_ft(args) if args.part == "ft" else part_rl(args)
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
