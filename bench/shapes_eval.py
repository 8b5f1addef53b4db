"""Prompt adherence of a text model on the MovingShapes benchmark sets, over seeds.

    python bench/shapes_eval.py --model mmgen/assets/default --out runs/shapes_eval [--seeds 0 100] [--json F]

Sets: ``legacy32`` (configs/sample/default_prompts.txt: the 32 captions of the first default
model), ``readme`` (configs/sample/readme_prompts.txt: every example prompt of the README) and
the sets of :func:`mmgen.data.captions.benchmark_prompts` (training captions, two objects,
held-out colour/shape pairs, held-out templates). Every video is written with its sidecar to
``OUT/<set>/s<seed>/``, so ``mmgen eval shapes --videos OUT/<set>/s<seed>`` reproduces each
number; the pipeline is loaded once. Prints mean and spread over seeds per set and metric
(``--json``: also the per-set, per-seed rows); a set already scored in ``OUT`` is read, not resampled.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METRICS = ("color", "shape", "size", "motion", "all_correct", "two_object_colors", "refused")


def prompt_sets(per_set: int) -> dict[str, list[str]]:
    from mmgen.data.captions import benchmark_prompts
    from mmgen.pipelines.cli import read_prompts_file

    sets = {"legacy32": read_prompts_file(str(ROOT / "configs/sample/default_prompts.txt")),
            "readme": read_prompts_file(str(ROOT / "configs/sample/readme_prompts.txt"))}
    sets.update(benchmark_prompts(per_set))
    return sets


def sample_set(pipe, prompts: list[str], seed: int, out: Path, batch: int, model_name: str) -> int:
    """Sample and write the prompts the model takes; returns how many."""
    from mmgen.pipelines.outputs import sidecar, write_sample
    from mmgen.pipelines.videoar import to_uint8_videos

    out.mkdir(parents=True, exist_ok=True)
    settings = pipe.resolve_settings()
    refused = []
    for prompt in prompts:
        try:
            pipe.check_prompts([prompt])
        except ValueError:  # e.g. longer than a byte-level model's prefix: counts as not followed
            refused.append(prompt)
    (out / "refused.json").write_text(json.dumps(refused))
    prompts = [q for q in prompts if q not in refused]
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        seeds = [seed + start + i for i in range(len(chunk))]
        frames = pipe(prompt=chunk, num_frames=17, seed=seeds, progress=False).frames
        for i, (prompt, s, video) in enumerate(zip(chunk, seeds, to_uint8_videos(frames))):
            meta = sidecar(prompt=prompt, class_id=None, seed=s, model=model_name, num_frames=17, fps=pipe.fps,
                           settings=settings)
            write_sample(os.fspath(out / f"{start + i:04d}_s{s}.mp4"), video, meta, fps=pipe.fps)
    return len(prompts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "mmgen/assets/default"))
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 100])
    p.add_argument("--sets", nargs="+", help="subset of the prompt sets (default: all)")
    p.add_argument("--per-set", type=int, default=16, help="prompts per generated set")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", help="also write the per-set, per-seed rows here")
    args = p.parse_args()

    import torch

    from mmgen.metrics.shapes import evaluate_folder
    from mmgen.pipelines.videoar import VideoARPipeline

    torch.set_grad_enabled(False)
    pipe = VideoARPipeline.from_pretrained(args.model)
    sets = prompt_sets(args.per_set)
    names = args.sets or list(sets)
    results: dict[str, list[dict]] = {}
    for name in names:
        for seed in args.seeds:
            folder = Path(args.out) / name / f"s{seed}"
            if not (folder / "mmgen_eval_shapes.json").is_file():  # finished sets are kept (resumable)
                if sample_set(pipe, sets[name], seed, folder, args.batch_size, args.model):
                    record = evaluate_folder(folder, progress=False)
                else:
                    record = {"summary": {m: {"mean": 0.0, "n": 0} for m in METRICS}}
                (folder / "mmgen_eval_shapes.json").write_text(json.dumps(record))
            summary = json.loads((folder / "mmgen_eval_shapes.json").read_text())["summary"]
            refused = len(json.loads((folder / "refused.json").read_text()))
            kept = len(sets[name]) - refused
            for entry in summary.values():  # a refused prompt scores 0
                if entry.get("mean") is not None:
                    entry["mean"] *= kept / len(sets[name])
            summary["refused"] = {"mean": refused, "n": len(sets[name])}
            results.setdefault(name, []).append(summary)
    print(f"model {args.model}; seeds {args.seeds}; mean (spread = max - min over seeds)")
    print(f"| set | n | {' | '.join(METRICS)} |")
    print("|---|---|" + "---|" * len(METRICS))
    for name, runs in results.items():
        cells = []
        for m in METRICS:
            vals = [r[m]["mean"] for r in runs if r.get(m, {}).get("mean") is not None]
            cells.append(f"{np.mean(vals):.2f} ({np.ptp(vals):.2f})" if vals else "-")
        print(f"| {name} | {len(sets[name])} | {' | '.join(cells)} |")
    if args.json:
        from benchutil import write_json

        rows = [{"set": name, "seed": seed, "prompts": len(sets[name]),
                 **{m: summary[m]["mean"] for m in METRICS if m in summary}}
                for name, runs in results.items() for seed, summary in zip(args.seeds, runs)]
        write_json(args.json, {"model": args.model, "seeds": args.seeds, "per_set": args.per_set,
                               "settings": pipe.resolve_settings(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
