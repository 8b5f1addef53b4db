"""When does a text model's object appear? Per-frame presence of the prompted colour, by size and motion.

    python bench/presence_bench.py --model mmgen/assets/default --seeds 4            # presence
    python bench/presence_bench.py --part layout --model mmgen/assets/default        # given a layout

presence: one-object canonical prompts, the same (colour, shape, motion) cycle for both sizes,
training (colour, shape) pairs only (mmgen.data.captions.HELDOUT_PAIRS left out); each prompt
sampled with ``--seeds`` sampling seeds at the model's default settings. Rows: size x where
MovingShapes starts the object (static and bouncing objects start anywhere in the frame;
left/right/up/down ones in a range narrowed along their axis, so that the travel ends inside the
frame). Per row: the share of videos whose object is found in the first frame, in the last frame,
in >= presence_min of the frames (what ``mmgen eval shapes`` counts as drawn) and the frame in
which it is first found (median). The per-frame test is
:func:`mmgen.metrics.shapes.track_per_frame` (not found = NaN).

layout: the first frames of real MovingShapes clips (seed 5, plain background) with one small
object that starts anywhere; the model draws frame 0 from the clip's caption with its first s
scales teacher-forced from the clip's own codes (``sample_codes(context_scales=s)``) and the rest
sampled, s = 0 .. K-1. Per s: how often the object is found and how far its centroid is from the
real one: at which scale the model fails to place the object.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prompts(per_size: int) -> dict[str, list[tuple[str, str, str]]]:
    """{size: [(prompt, colour, motion)]}: colours, shapes and motions cycled, held-out pairs skipped."""
    from mmgen.data.captions import HELDOUT_PAIRS
    from mmgen.data.moving_shapes import COLORS, MOTIONS, SHAPES, ObjectSpec, caption_of

    held_out = {tuple(pair) for pair in HELDOUT_PAIRS}
    colors = list(COLORS)
    # every colour once per round of 8, the shape shifted each round: all 32 pairs, mixed early
    pairs = [(colors[i % 8], SHAPES[(i + i // 8) % 4]) for i in range(32)]
    pairs = [pair for pair in pairs if pair not in held_out]
    out = {}
    for size in ("small", "large"):
        out[size] = []
        for i, (c, s) in enumerate(pairs[:per_size]):
            motion = MOTIONS[i % len(MOTIONS)]
            out[size].append((caption_of([ObjectSpec(shape=s, color=c, size=size, motion=motion)]), c, motion))
    return out


def layout(pipe, clips: int, seeds: int, overrides: dict) -> list[dict]:
    """Rows of the ``layout`` part (see the module docstring)."""
    import torch

    from mmgen.ar.sampling import SamplerSettings, sample_codes
    from mmgen.data.moving_shapes import MovingShapes, ObjectSpec, caption_of
    from mmgen.metrics.shapes import track_per_frame

    ds = MovingShapes(40 * clips, size=pipe.frame_size[0], num_frames=1, seed=5, background="plain", max_objects=1)
    picked = [c for c in map(ds.sample, range(len(ds)))
              if c.objects[0]["size"] == "small" and c.objects[0]["motion"] in ("static", "bounce")][:clips]
    scales = pipe.transformer.scales
    settings = SamplerSettings.from_dict(pipe.resolve_settings(**overrides))
    errors: dict[int, list[float]] = {s: [] for s in range(len(scales))}  # NaN: not found
    for clip in picked:
        obj = clip.objects[0]
        prompt = caption_of([ObjectSpec(**{f: obj[f] for f in ("shape", "color", "size", "motion")})])
        real = torch.as_tensor(np.asarray(clip.frames))
        truth = track_per_frame(real.numpy(), obj["color"])[0]
        codes = [c.expand(seeds, -1, -1, -1, -1) for c in pipe.encode_frames(real)]
        for s in range(len(scales)):
            context = [c if k < s else c[:, :0] for k, c in enumerate(codes)] if s else None
            sampled = sample_codes(pipe.transformer, pipe.tokenizer.quantizer, [prompt] * seeds, 1, settings,
                                   [torch.Generator().manual_seed(i) for i in range(seeds)],
                                   context=context, context_scales=s)
            for video in pipe.decode_codes(sampled).numpy():
                errors[s].append(float(np.linalg.norm(track_per_frame(video, obj["color"])[0] - truth)))
    rows = []
    for s, errs in errors.items():
        errs = np.array(errs)
        found = errs[~np.isnan(errs)]
        rows.append({"forced_scales": [list(x) for x in scales[:s]], "videos": len(errs),
                     "found": float(len(found) / len(errs)),
                     "centroid_error_px": float(np.median(found)) if len(found) else None})
    return rows


def presence(pipe, per_size: int, seeds: int, num_frames: int, overrides: dict) -> list[dict]:
    """Rows of the ``presence`` part (see the module docstring)."""
    from mmgen.metrics.shapes import ShapesConfig, track_per_frame
    from mmgen.pipelines import to_uint8_videos

    presence_min = ShapesConfig().presence_min
    rows = []
    for size, items in prompts(per_size).items():
        present = {"anywhere": [], "along the motion": []}
        for prompt, color, motion in items:
            frames = pipe(prompt=[prompt] * seeds, num_frames=num_frames, seed=list(range(seeds)), progress=False,
                          **overrides).frames
            start = "anywhere" if motion in ("static", "bounce") else "along the motion"
            present[start] += [~np.isnan(track_per_frame(v, color)[:, 0]) for v in to_uint8_videos(frames)]
        for start, videos in present.items():
            if not videos:  # fewer prompts than motions
                continue
            videos = np.stack(videos)  # [videos, T]
            first = [int(np.argmax(video)) for video in videos if video.any()]
            rows.append({"size": size, "start": start, "videos": len(videos), "frame0": float(videos[:, 0].mean()),
                         "last": float(videos[:, -1].mean()),
                         "drawn": float((videos.mean(1) >= presence_min).mean()),
                         "first_found_median": float(np.median(first)) if first else None,
                         "per_frame": videos.mean(0).round(3).tolist()})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["presence", "layout"], default="presence")
    p.add_argument("--model", default=str(ROOT / "mmgen/assets/default"))
    p.add_argument("--per-size", type=int, default=24, help="prompts per size (presence)")
    p.add_argument("--clips", type=int, default=8, help="real clips (layout)")
    p.add_argument("--seeds", type=int, default=4, help="sampling seeds per prompt or clip (0..N-1)")
    p.add_argument("--num-frames", type=int, default=17, help="video frames (presence)")
    p.add_argument("--temperature", help="override the model's sampling temperature (a number or 'coarse:fine')")
    p.add_argument("--guidance", help="override the model's CFG schedule (a number, 'linear:5:3', ...)")
    p.add_argument("--reveal-steps", type=int, help="override the passes over reveal groups (models with reveal_scales)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()

    import torch

    from mmgen.pipelines import VideoARPipeline

    torch.set_grad_enabled(False)
    pipe = VideoARPipeline.from_pretrained(args.model)
    overrides = {k: v for k, v in (("temperature", args.temperature), ("guidance", args.guidance),
                                   ("reveal_steps", args.reveal_steps)) if v is not None}
    print(f"model {args.model}, {args.seeds} sampling seeds each, settings {pipe.resolve_settings(**overrides)}")
    if args.part == "presence":
        rows = presence(pipe, args.per_size, args.seeds, args.num_frames, overrides)
        print("| size | start | videos | found in frame 0 | found in last frame | drawn (>= presence_min of frames) | first found (median frame) |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['size']} | {r['start']} | {r['videos']} | {r['frame0']:.2f} | {r['last']:.2f} | {r['drawn']:.2f} | "
                  f"{r['first_found_median']} |")
        for r in rows:
            print(f"{r['size']}, {r['start']}, per frame: {r['per_frame']}")
    else:
        rows = layout(pipe, args.clips, args.seeds, overrides)
        print("| frame 0's scales forced from the real clip | videos | object found | centroid error (median px) |")
        print("|---|---|---|---|")
        for r in rows:
            error = "-" if r["centroid_error_px"] is None else f"{r['centroid_error_px']:.1f}"
            print(f"| {r['forced_scales'] or 'none'} | {r['videos']} | {r['found']:.2f} | {error} |")
    if args.json:
        from benchutil import write_json

        write_json(args.json, {"model": args.model, "part": args.part, "seeds": args.seeds,
                               "settings": pipe.resolve_settings(**overrides), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
