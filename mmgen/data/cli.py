"""`mmgen data synth` (write MovingShapes to disk) and `mmgen data inspect` (summarise a folder)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import Counter
from pathlib import Path

from mmgen.cli_utils import UserError, add_strict_flag
from mmgen.data.moving_shapes import BACKGROUNDS, COLORS, SHAPES, SPLITS

PREVIEW_CLIPS = 16


def _holdout_pairs(text: str) -> list[tuple[str, str]]:
    """Parse ``"red:circle,blue:square"``."""
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        color, sep, shape = part.partition(":")
        if not sep or color not in COLORS or shape not in SHAPES:
            raise argparse.ArgumentTypeError(
                f"holdout pair {part!r} must be color:shape with color in {list(COLORS)} and shape in {list(SHAPES)}"
            )
        pairs.append((color, shape))
    return pairs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmgen data", description="Synthesise and inspect video datasets.")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser(
        "synth", help="render MovingShapes clips to DIR/NNNNN.mp4 + DIR/manifest.jsonl (+ DIR/preview.gif)"
    )
    synth.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    synth.add_argument("--num", type=int, default=100, help="number of clips (default 100)")
    synth.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    synth.add_argument("--frames", type=int, default=17, help="frames per clip (default 17)")
    synth.add_argument("--fps", type=int, default=8, help="frame rate of the files (default 8)")
    synth.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    synth.add_argument("--max-objects", type=int, default=2, choices=(1, 2), help="objects per clip (default 2)")
    synth.add_argument("--background", default="plain", choices=BACKGROUNDS)
    synth.add_argument(
        "--holdout", type=_holdout_pairs, default=None, help="held-out color:shape pairs, e.g. red:circle,blue:square"
    )
    synth.add_argument(
        "--split", default=None, choices=SPLITS, help="which split to render (default: train with --holdout, else all)"
    )
    synth.add_argument("--crf", type=int, default=17, help="x264 quality, lower is better (default 17)")

    inspect = sub.add_parser("inspect", help="count, decode-check and summarise the videos under DIR")
    inspect.add_argument("dir", type=Path)
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    inspect.add_argument("--backend", default="auto", help="video backend (auto, decord, torchcodec, pyav)")
    add_strict_flag(inspect)
    return parser


def synth_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mmgen.data.moving_shapes import MovingShapes
    from mmgen.io import atomic_path, write_grid, write_video

    if args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    split = args.split or ("train" if args.holdout else "all")
    try:
        dataset = MovingShapes(
            args.num, size=args.size, num_frames=args.frames, seed=args.seed, max_objects=args.max_objects,
            background=args.background, holdout=args.holdout, split=split, fps=args.fps,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    width = max(5, len(str(args.num - 1)))
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a folder; choose another --out")
    _check_synth_outputs(args.out, [f"{i:0{width}d}.mp4" for i in range(args.num)])
    args.out.mkdir(parents=True, exist_ok=True)
    rows, preview = [], []
    for index in tqdm(range(args.num), desc=f"synth -> {args.out}", unit="clip", file=sys.stderr):
        sample = dataset.sample(index)
        name = f"{index:0{width}d}.mp4"
        write_video(args.out / name, sample.frames, fps=args.fps, crf=args.crf)
        if index < PREVIEW_CLIPS:
            preview.append(sample.frames)
        rows.append({
            "file": name, "caption": sample.caption, "label": sample.label, "objects": sample.objects,
            "fps": args.fps, "num_frames": args.frames, "size": args.size, "seed": args.seed,
            "index": index, "background": args.background, "split": split,
        })
    with atomic_path(args.out / "manifest.jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in rows)
    # A GIF, so folder datasets (which scan video extensions, not .gif) never pick it up.
    write_grid(args.out / "preview.gif", preview, nrow=4, fps=args.fps)
    print(f"wrote {args.num} clips, manifest.jsonl and preview.gif to {args.out}")
    return 0


def _check_synth_outputs(out: Path, clips: list[str]) -> None:
    """Replace only what an earlier `synth` into ``out`` wrote (its manifest.jsonl lists the clips)."""
    from mmgen.io.destination import check_output_files

    owned = {"manifest.jsonl", "preview.gif"}
    try:
        with open(out / "manifest.jsonl", encoding="utf-8") as fh:
            owned |= {json.loads(line)["file"] for line in fh if line.strip()}
    except (OSError, ValueError, KeyError, TypeError):
        owned = set()
    check_output_files([out / name for name in [*clips, "manifest.jsonl", "preview.gif"]],
                       lambda p: p.name in owned, "choose another --out or move the file")


def summarise(directory: Path, backend: str = "auto") -> dict:
    """Counts, frame statistics, resolutions, frame rates and total duration of a video folder."""
    from tqdm import tqdm

    from mmgen.cli_utils import run_batch
    from mmgen.data.folder import scan_videos
    from mmgen.io import video_info

    files = scan_videos(directory)
    progress = tqdm(files, desc=f"inspect {directory}", unit="video", file=sys.stderr, disable=len(files) < 50)
    result = run_batch(progress, lambda path: video_info(path, backend=backend), command="data inspect",
                       label=lambda path: os.path.relpath(path, directory), what="video")
    infos = result.done
    unreadable = [{"file": name, "error": reason} for name, reason in result.skipped]
    frames = [i.num_frames for i in infos]
    return {
        "dir": str(directory),
        "videos": len(files),
        "readable": len(infos),
        "unreadable": len(unreadable),
        "frames": {"min": min(frames), "median": statistics.median(frames), "max": max(frames), "total": sum(frames)}
        if frames else None,
        "resolutions": dict(Counter(f"{i.width}x{i.height}" for i in infos).most_common()),
        "fps": dict(Counter(f"{i.fps:g}" for i in infos).most_common()),
        "duration_s": sum(i.duration_s for i in infos),
        "backends": dict(Counter(i.backend for i in infos)),
        "unreadable_files": unreadable,
    }


def _print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def counts(d: dict) -> str:
        return ", ".join(f"{k} ({v})" for k, v in d.items()) or "-"

    table = Table(title=f"videos in {summary['dir']}", show_header=True)
    table.add_column("property")
    table.add_column("value")
    table.add_row("videos", str(summary["videos"]))
    table.add_row("readable", str(summary["readable"]))
    table.add_row("unreadable", str(summary["unreadable"]))
    f = summary["frames"]
    table.add_row("frames min / median / max", f"{f['min']} / {f['median']:g} / {f['max']}" if f else "-")
    table.add_row("frames total", str(f["total"]) if f else "-")
    table.add_row("resolutions (WxH)", counts(summary["resolutions"]))
    table.add_row("fps", counts(summary["fps"]))
    table.add_row("total duration", f"{summary['duration_s']:.1f} s")
    table.add_row("decoded by", counts(summary["backends"]))
    Console().print(table)  # the unreadable files were named, one line each, as they were met


def inspect_command(args: argparse.Namespace) -> int:
    if not args.dir.is_dir():
        raise UserError(f"folder not found: {args.dir}")
    summary = summarise(args.dir, backend=args.backend)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_table(summary)
    # Non-zero when nothing usable is there (or, with --strict, anything unreadable), so scripts can stop early.
    if not summary["readable"] or (args.strict and summary["unreadable"]):
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return synth_command(args) if args.command == "synth" else inspect_command(args)
