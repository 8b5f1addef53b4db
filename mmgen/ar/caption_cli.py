"""`mmgen caption`: describe a video, or answer a question about it, with a unified model.

  mmgen caption --video clip.mp4 [--model DIR] [--question "what color is the circle?"] [--json]

DIR is a pipeline folder (``mmgen ar export``) whose transformer has a text head (a unified model,
:mod:`mmgen.ar.unified`); default: the shipped mmgen/assets/unified. The same folder generates
with ``mmgen sample --model DIR``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmgen.cli_utils import UserError

UNIFIED_MODEL = Path(__file__).resolve().parent.parent / "assets" / "unified"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmgen caption", description="Caption a video (or answer a question about it) "
                                "with a unified text+video model.")
    p.add_argument("--video", required=True, help="video file (.mp4, .gif, ...); its first frames are read")
    p.add_argument("--model", help=f"pipeline folder of a unified model (default: the shipped {UNIFIED_MODEL.name})")
    p.add_argument("--question", help='a question instead of a caption, e.g. "how is the red object moving?"')
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mmgen.io import VideoReadError, read_video
    from mmgen.pipelines.cli import resolve_model_dir
    from mmgen.pipelines.videoar import VideoARPipeline

    from .caption import NoTextHeadError, describe, frames_needed, text_prompt

    model_dir = resolve_model_dir(args.model or str(UNIFIED_MODEL))
    pipe = VideoARPipeline.from_pretrained(str(model_dir)).to(args.device)
    try:
        text_prompt(pipe.transformer, args.question)
    except NoTextHeadError as err:
        raise UserError(f"{model_dir}: {err}") from None
    except ValueError as err:
        raise UserError(f"--question {err}") from None
    try:
        video = read_video(args.video)
    except VideoReadError as err:
        raise UserError(f"cannot read --video: {err}") from None
    need = frames_needed(pipe.transformer, pipe.temporal_factor)
    if video.shape[0] < need:
        raise UserError(f"--video {args.video} has {video.shape[0]} frame(s); this model reads the first {need} "
                        f"(pass a longer clip)")
    text = describe(pipe, [video], args.question)[0]
    if args.json:
        record = {"video": args.video, "model": str(model_dir), "frames_read": need}
        record.update({"question": args.question, "answer": text} if args.question else {"caption": text})
        print(json.dumps(record))
    else:
        print(text)
    return 0
