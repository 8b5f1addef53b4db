"""`mmgen sample` and `mmgen extend`.

    mmgen sample [--model DIR] (--prompt TEXT ... | --prompts-file F | --class-id N ...)
                 [--num-frames 17] --out DIR [--grid] [--gif] [--seed S] [--config YAML]
    mmgen extend [--model DIR] --video V (a clip or an image) --seconds S --out F.mp4

Without ``--model`` the default model shipped in the package (``mmgen/assets/default``) is
used. Everything that can be checked before sampling is checked first (model folder,
prompts, frame count, output folder), so a mistake costs a second and writes nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from mmgen.cli_utils import UserError
from mmgen.pipelines.outputs import (
    FrameStreamWriter,
    check_writable_dir,
    check_writable_file,
    is_sample_output,
    round_num_frames,
    sidecar,
    slug,
    write_sample,
)

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "default"
BUILD_HINT = "build it with scripts/build_default_model.sh or pass --model DIR"


def resolve_model_dir(model: str | None) -> Path:
    """The model folder to load: ``--model`` or the shipped default; clear error if unusable."""
    if model is None:
        path = DEFAULT_MODEL
        if not (path / "model_index.json").is_file():
            raise UserError(f"the default model is missing ({path / 'model_index.json'} not found); {BUILD_HINT}")
        return path
    path = Path(model).expanduser()
    if not path.is_dir():
        raise UserError(f"model folder {path} does not exist")
    if not (path / "model_index.json").is_file():
        raise UserError(f"{path} is not a VideoAR pipeline folder: {path / 'model_index.json'} is missing "
                       f"(save one with VideoARPipeline.save_pretrained)")
    return path


def read_prompts_file(path: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"prompts file {path} not found") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"prompts file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"prompts file {path} holds no prompts")
    return prompts


def load_settings(path: str | None) -> dict:
    """Sampling settings from a YAML file (keys: guidance, temperature, top_p, window, reveal_steps, batch_size)."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise UserError(f"sampling config {path} not found") from None
    except yaml.YAMLError as exc:
        raise UserError(f"sampling config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"sampling config {path} must be a mapping, got {type(data).__name__}")
    known = {"guidance", "temperature", "top_p", "window", "reveal_steps", "batch_size"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"sampling config {path}: unknown key(s) {unknown}; known: {sorted(known)}")
    return data


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="pipeline folder (default: the model shipped with mmgen)")
    p.add_argument("--config", help="sampling settings YAML (guidance, temperature, top_p, window, reveal_steps, batch_size)")
    p.add_argument("--guidance", help="CFG schedule: a number, 'adaptive[:1:5:10]' or 'linear[:5:3]' "
                   "(default: the model's)")
    p.add_argument("--temperature", help="sampling temperature: a number or 'coarse:fine' (default: the model's)")
    p.add_argument("--top-p", type=float, help="per-bit nucleus threshold in (0, 1] (default: the model's)")
    p.add_argument("--reveal-steps", type=int, help="passes over the groups of a model trained with partial "
                   "reveal (its reveal_scales; default: the model's)")
    p.add_argument("--window", type=int, help="frames of history kept while decoding (models trained with a "
                   "frame window; bounds memory; default: the model's)")
    p.add_argument("--attn-backend", default="auto", choices=("auto", "sdpa", "flex", "xformers"),
                   help="attention kernel for this run (default auto: Flex on CUDA, SDPA elsewhere); "
                        "the backend saved with the model is only its training choice")
    p.add_argument("--seed", type=int, default=0, help="seed of the first video; video i uses seed + i")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _settings(args: argparse.Namespace) -> dict:
    """The sampling overrides of --config and the flags, checked before the model is loaded
    (the window is checked against the model later)."""
    from mmgen.ar.sampling import SamplerSettings

    settings = load_settings(args.config)
    for key in ("guidance", "temperature", "top_p", "window", "reveal_steps"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    try:
        SamplerSettings.from_dict({k: v for k, v in settings.items() if k != "batch_size"})
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    return settings


def _load_pipeline(args: argparse.Namespace):
    from mmgen.pipelines.videoar import VideoARPipeline

    from mmgen.cli_utils import error_message

    model_dir = resolve_model_dir(args.model)
    try:
        pipe = VideoARPipeline.from_pretrained(str(model_dir))
    except Exception as exc:  # corrupt or foreign weight files: one line, not a traceback
        message = error_message(exc)
        if message is None:
            raise
        raise UserError(f"cannot load the model from {model_dir}: {message}") from None
    pipe.transformer.set_attention_backend(args.attn_backend)
    return pipe.to(args.device), model_dir


def _model_name(args: argparse.Namespace, model_dir: Path) -> str:
    return "default" if args.model is None else str(model_dir)


# --------------------------------------------------------------------------- sample
def build_sample_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmgen sample", description="Generate videos from prompts or class ids.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", action="append", help="text prompt (repeat for several)")
    what.add_argument("--prompts-file", help="text file, one prompt per line ('#' starts a comment)")
    what.add_argument("--class-id", type=int, action="append", help="class id (repeat for several)")
    p.add_argument("--num-frames", type=int, default=17, help="frames per video (rounded up to 1 + 4k)")
    p.add_argument("--num-per-prompt", type=int, default=1, help="videos per prompt / class id")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--grid", action="store_true", help="also write all videos tiled as grid.mp4")
    p.add_argument("--gif", action="store_true", help="also write a .gif of every video")
    p.add_argument("--batch-size", type=int, help="videos per batched decode (default 8)")
    p.add_argument("--stream", action="store_true",
                   help="also write each video's frames as PNGs (<name>_frames/) the moment they are decoded")
    p.add_argument("--elastic", help="elastic sub-model the model was trained with, e.g. depth=3,top_k=2")
    p.add_argument("--strict", action="store_true",
                   help="with --prompts-file: stop (exit 2) if any prompt is unusable, instead of skipping it")
    _add_common(p)
    return p


def sample_main(argv: list[str] | None = None) -> int:
    return _sample(build_sample_parser().parse_args(argv))


def _sample(args: argparse.Namespace) -> int:
    from mmgen.cli_utils import run_batch
    from mmgen.io.destination import check_output_files
    from mmgen.pipelines.memory import check_fits
    from mmgen.pipelines.videoar import to_uint8_videos

    if args.num_per_prompt < 1:
        raise UserError(f"--num-per-prompt must be >= 1, got {args.num_per_prompt}")
    _check_seed(args.seed)
    settings = _settings(args)
    batch_size = args.batch_size or int(settings.pop("batch_size", 8))
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    prompts = args.prompt or (read_prompts_file(args.prompts_file) if args.prompts_file else None)
    class_ids = args.class_id
    try:
        out_dir = check_writable_dir(args.out)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    pipe, model_dir = _load_pipeline(args)
    try:
        if args.elastic:
            from mmgen.nn.elastic import parse_setting

            pipe.transformer.set_submodel(**parse_setting(args.elastic))
        if args.prompts_file:  # a file of prompts is a batch: bad lines are named and skipped
            checked = run_batch(prompts, lambda p: pipe.check_prompts([p]) or p, command="sample",
                                label=repr, what="prompt")
            prompts = checked.done
            if not prompts:
                raise UserError(f"no usable prompt in {args.prompts_file}")
            if args.strict and checked.skipped:
                raise UserError(f"{len(checked.skipped)} bad prompt(s) in {args.prompts_file} (--strict)")
        elif prompts is not None:
            pipe.check_prompts(prompts)
        else:
            pipe.check_class_labels(class_ids)
        sampler_settings = pipe.resolve_settings(**settings)
        num_frames, changed = round_num_frames(args.num_frames, pipe.temporal_factor)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    prompt_fields = _prompt_notes(pipe, prompts)
    if changed:
        print(f"mmgen sample: note: --num-frames {args.num_frames} is not of the form 1 + "
              f"{pipe.temporal_factor}k; generating {num_frames} frames", file=sys.stderr)

    conditions = prompts if prompts is not None else class_ids
    jobs = [(i * args.num_per_prompt + j, c) for i, c in enumerate(conditions) for j in range(args.num_per_prompt)]
    names = {idx: _video_name(idx, c, args.seed + idx, prompts is not None) for idx, c in jobs}
    targets = [os.path.join(out_dir, n + ext) for n in names.values()
               for ext in (".mp4", ".json", *((".gif",) if args.gif else ()), *(("_frames",) if args.stream else ()))]
    check_output_files(targets + ([os.path.join(out_dir, "grid.mp4")] if args.grid else []), is_sample_output,
                       "choose another --out or move the file")
    window = sampler_settings["window"]
    check_fits(pipe, min(batch_size, len(jobs)), num_frames, window if window is not None
               else pipe.transformer.config.frame_window, guided=True)
    fps, model_name = pipe.fps, _model_name(args, model_dir)
    videos, written = [], []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        seeds = [args.seed + idx for idx, _ in chunk]
        cond = [c for _, c in chunk]
        chunk_names = [names[idx] for idx, _ in chunk]
        callback = _stream_writers(out_dir, chunk_names) if args.stream else None
        result = pipe(
            prompt=cond if prompts is not None else None,
            class_labels=cond if prompts is None else None,
            num_frames=num_frames,
            seed=seeds,
            output_type="np",
            progress=not args.no_progress,
            callback_on_frames=callback,
            **settings,
        )
        for (idx, c), seed, name, frames in zip(chunk, seeds, chunk_names, to_uint8_videos(result.frames)):
            meta = sidecar(
                prompt=c if prompts is not None else None,
                class_id=None if prompts is not None else c,
                seed=seed, model=model_name, num_frames=num_frames, fps=fps, settings=sampler_settings,
                nearest=prompt_fields.get(c) if prompts is not None else None,
            )
            written += write_sample(os.path.join(out_dir, name + ".mp4"), frames, meta, fps=fps, gif=args.gif)
            videos.append(frames)
    if args.grid:
        from mmgen.io import write_grid

        grid = os.path.join(out_dir, "grid.mp4")
        write_grid(grid, videos, nrow=min(8, len(videos)), fps=fps)
        written.append(grid)
    print(f"wrote {len(videos)} video(s) to {out_dir}")
    return 0


def _prompt_notes(pipe, prompts) -> dict:
    """Print one line per prompt the user should know about (empty, truncated, far from the
    training captions); return the nearest-caption fields of each prompt for the sidecars."""
    if prompts is None:
        return {}
    from mmgen.pipelines.prompts import prompt_report

    fields, notes = prompt_report(pipe.transformer, prompts)
    for note in notes:
        print(f"mmgen sample: note: {note}", file=sys.stderr)
    return fields


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2 ** 63:
        raise UserError(f"--seed must be in [0, 2^63), got {seed}")


def _video_name(idx: int, cond, seed: int, is_prompt: bool) -> str:
    return f"{idx:04d}_{slug(cond) if is_prompt else f'class{cond}'}_s{seed}"


def _stream_writers(out_dir: str, names: list[str]):
    """Callback for the pipeline: route each row of a decoded chunk to its video's frame folder."""
    writers = [FrameStreamWriter(os.path.join(out_dir, name + "_frames")) for name in names]

    def write(chunk) -> None:  # uint8 [B, n, H, W, 3]
        for writer, frames in zip(writers, chunk):
            writer.write(frames)

    return write


# --------------------------------------------------------------------------- extend
def build_extend_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmgen extend",
        description="Continue a video (or animate an image) by re-encoding its last frames; "
                    "long extensions are generated as a chain of windows.")
    p.add_argument("--video", required=True, help="input clip (.mp4/.gif/...) or image (.png/.jpg)")
    p.add_argument("--seconds", type=float, required=True, help="how much video to add")
    p.add_argument("--out", required=True, help="output .mp4 or .gif (input + continuation)")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--prompt", help="text prompt for the continuation (text models)")
    cond.add_argument("--class-id", type=int, help="class id for the continuation (class models)")
    p.add_argument("--context-frames", type=int, help="input frames re-encoded as context "
                   "(1 + 4k; default: half the model's training length, at most what the input has)")
    p.add_argument("--stream", action="store_true",
                   help="also write the new frames as PNGs (<out>_frames/) as each window is decoded")
    _add_common(p)
    return p


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_input_frames(path: str):
    """uint8 [T,H,W,3] frames of a clip, or [1,H,W,3] for an image."""
    import numpy as np
    import torch

    if not os.path.isfile(path):
        raise UserError(f"input {path} not found")
    if path.lower().endswith(IMAGE_EXTENSIONS):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                return torch.from_numpy(np.array(im.convert("RGB"))).unsqueeze(0)
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"cannot read image {path}: {exc}") from None
    from mmgen.io import VideoReadError, read_video

    try:
        return read_video(path)
    except VideoReadError as exc:
        raise UserError(str(exc)) from None


def extend_main(argv: list[str] | None = None) -> int:
    return _extend(build_extend_parser().parse_args(argv))


def _extend(args: argparse.Namespace) -> int:
    import math

    from mmgen.io.destination import check_output_files

    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        raise UserError(f"--seconds must be a finite number > 0, got {args.seconds}")
    _check_seed(args.seed)
    try:
        out = check_writable_file(args.out)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if os.path.abspath(out) == os.path.abspath(args.video):
        raise UserError(f"--out {out} is the input video; choose another --out")
    stem = os.path.splitext(out)[0]
    check_output_files([out, stem + ".json", *([stem + "_frames"] if args.stream else [])], is_sample_output,
                       "choose another --out or move the file")
    frames = read_input_frames(args.video)
    settings = _settings(args)
    settings.pop("batch_size", None)
    pipe, model_dir = _load_pipeline(args)
    try:
        if args.prompt is not None:
            pipe.check_prompts([args.prompt])
        elif args.class_id is not None:
            pipe.check_class_labels([args.class_id])
        sampler_settings = pipe.resolve_settings(**settings)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    new_frames = max(1, round(args.seconds * pipe.fps))

    stream = FrameStreamWriter(os.path.splitext(out)[0] + "_frames") if args.stream else None

    try:
        video = pipe.extend(
            frames, num_new_frames=new_frames,
            prompt=args.prompt, class_label=args.class_id,
            context_frames=args.context_frames, seed=args.seed,
            on_frames=stream.write if stream else None, progress=not args.no_progress, **settings,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    meta = sidecar(
        prompt=args.prompt, class_id=args.class_id, seed=args.seed, model=_model_name(args, model_dir),
        num_frames=int(video.shape[0]), fps=pipe.fps,
        settings={**sampler_settings, "extended_from": os.path.abspath(args.video),
                  "input_frames": int(frames.shape[0]), "new_frames": int(video.shape[0] - frames.shape[0])},
    )
    write_sample(out, video, meta, fps=pipe.fps)
    print(f"wrote {out} ({video.shape[0]} frames: {frames.shape[0]} input + {video.shape[0] - frames.shape[0]} new)")
    return 0
