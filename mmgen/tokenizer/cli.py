"""`mmgen tokenizer fit | export | reconstruct`.

* ``fit``: Lightning CLI (``--config configs/tokenizer/x.yaml``, ``--ckpt_path`` to resume, any
  ``--trainer.*`` / ``--model.*`` / ``--data.*`` override). The run folder is
  ``trainer.default_root_dir``: logs (CSV), ``checkpoints/`` and the resolved ``config.yaml``.
* ``export CKPT OUTDIR [--overwrite]``: a Lightning checkpoint -> a pretrained folder
  (``VideoTokenizer.from_pretrained(OUTDIR)``); OUTDIR new or empty, or a model folder of ours
  with ``--overwrite``.
* ``reconstruct --model DIR --input VIDEO_OR_DIR --out DIR [--strict]``: side-by-side
  original | reconstruction videos plus a PSNR / SSIM table (``metrics.csv``, ``metrics.json``);
  an unreadable video is named and skipped, the others are still reconstructed.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import warnings
from pathlib import Path

import torch

from mmgen.cli_utils import UserError, add_strict_flag
from mmgen.io import atomic_dir

EXPORT_HELP = "convert a training checkpoint into a pretrained folder"
RECON_HELP = "reconstruct videos and report PSNR / SSIM"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fit":
        return _fit(argv[1:])
    parser = argparse.ArgumentParser(prog="mmgen tokenizer", description="train, export and test the video tokenizer")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fit", help="train (Lightning CLI: `mmgen tokenizer fit --help`)", add_help=False)
    ex = sub.add_parser("export", help=EXPORT_HELP, description=EXPORT_HELP)
    ex.add_argument("ckpt", help="Lightning checkpoint (.ckpt) written by `mmgen tokenizer fit`")
    ex.add_argument("outdir", help="new or empty output folder (config.json + diffusion_pytorch_model.safetensors)")
    ex.add_argument("--overwrite", action="store_true",
                    help="replace OUTDIR if it is a model folder written by mmgen (never anything else)")
    rc = sub.add_parser("reconstruct", help=RECON_HELP, description=RECON_HELP)
    rc.add_argument("--model", required=True, help="pretrained tokenizer folder (from `export`)")
    rc.add_argument("--input", required=True, help="a video file or a folder of videos")
    rc.add_argument("--out", required=True, help="output folder")
    rc.add_argument("--frames", type=int, default=None, help="frames per clip (1+4k; default: the model's num_frames)")
    rc.add_argument("--size", type=int, default=None, help="resize+centre-crop to this square size (default: model's)")
    rc.add_argument("--chunk-frames", type=int, default=None, help="encode/decode in temporal chunks (memory)")
    rc.add_argument("--fps", type=float, default=8)
    rc.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_strict_flag(rc)
    args = parser.parse_args(argv)
    if args.command == "export":
        export(args.ckpt, args.outdir, overwrite=args.overwrite)
        print(f"exported {args.ckpt} -> {args.outdir}")
        return 0
    return _reconstruct(args)


# ---------------------------------------------------------------------------- fit
def _fit(argv: list[str]) -> int:
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    from mmgen.ar.callbacks import ProgressLog
    from mmgen.tokenizer.model import config_mismatches, resolved_config
    from mmgen.tokenizer.module import NonFiniteLossError, TokenizerModule

    class TokenizerCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            # The GAN step runs two backward passes (generator, then discriminator), and the
            # discriminator is idle before gan_start_step: each leaves parameters without a
            # gradient, which plain DDP rejects. Its reducer must look for unused parameters.
            cfg = self.config[self.config.subcommand]
            if cfg.trainer.get("strategy") == "ddp" and cfg.model.get("gan_weight", 0) > 0:
                cfg.trainer.strategy = "ddp_find_unused_parameters_true"

        def _parse_ckpt_path(self) -> None:
            # Lightning silently replaces the model arguments by the checkpoint's on resume; a
            # config whose tokenizer differs from the checkpoint's is a mistake worth naming.
            sub = self.config.get("subcommand")
            ckpt_path = self.config[sub].get("ckpt_path") if sub else None
            if ckpt_path and Path(ckpt_path).is_file():
                ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
                saved = ckpt.get("tokenizer_config") or ckpt.get("hyper_parameters", {}).get("tokenizer")
                wanted = self.config[sub].model.get("tokenizer")
                bad = config_mismatches(resolved_config(saved), resolved_config(wanted))
                if bad:
                    raise ValueError(f"{ckpt_path} was trained with another tokenizer config: " + "; ".join(bad))
            super()._parse_ckpt_path()

    try:
        with warnings.catch_warnings():
            # We pass args on purpose (the `mmgen tokenizer` prefix is not Lightning's).
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            TokenizerCLI(
                TokenizerModule,
                L.LightningDataModule,
                subclass_mode_data=True,
                args=["fit", *argv],
                save_config_kwargs={"overwrite": True},
                trainer_defaults={"callbacks": [ProgressLog(every_n_steps=100)]},
                seed_everything_default=0,
                parser_kwargs={"prog": "mmgen tokenizer"},
            )
    except NonFiniteLossError as err:
        print(f"mmgen tokenizer fit: {err}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------- export
def load_checkpoint_tokenizer(ckpt: str):
    """Build the VideoTokenizer stored in a ``mmgen tokenizer fit`` checkpoint."""
    from mmgen.io.checkpoint import load_checkpoint
    from mmgen.tokenizer.model import VideoTokenizer

    state = load_checkpoint(ckpt, "mmgen tokenizer fit")
    config = state.get("tokenizer_config")
    if config is None:
        raise UserError(f"{ckpt}: no 'tokenizer_config' in the checkpoint (not written by `mmgen tokenizer fit`)")
    model = VideoTokenizer(**config)
    weights = {k.removeprefix("tokenizer."): v for k, v in state["state_dict"].items() if k.startswith("tokenizer.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{ckpt}: weights do not fit its config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval()


def export(ckpt: str, outdir: str, overwrite: bool = False) -> None:
    """Write the pretrained folder ``outdir`` atomically (a sibling temp folder, then a rename).

    ``outdir`` must be new or empty, or, with ``overwrite``, a model folder mmgen wrote; it is
    checked before the checkpoint is read (:func:`mmgen.io.atomic_dir`)."""
    with atomic_dir(outdir, overwrite=overwrite, inputs=[ckpt]) as tmp:
        load_checkpoint_tokenizer(ckpt).save_pretrained(tmp)


# ---------------------------------------------------------------------------- reconstruct
def _videos(path: str) -> list[Path]:
    from mmgen.data.folder import scan_videos

    p = Path(path)
    if p.is_dir():
        files = scan_videos(p)
        if not files:
            raise UserError(f"no video files in {p} (looked for the usual video extensions)")
        return files
    if not p.is_file():
        raise UserError(f"--input {p} not found; pass a video file or a folder of videos")
    return [p]


def _prepare(frames: torch.Tensor, num_frames: int, size: int, step: int) -> torch.Tensor:
    """uint8 [T,H,W,C] -> float [1,C,T',H',W'] in [-1,1]: 1+step*k frames, square centre crop."""
    from mmgen.io import resize_video

    t = min(num_frames, frames.shape[0])
    t = 1 + (t - 1) // step * step
    frames = resize_video(frames[:t], size)  # shorter side = size
    h, w = frames.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    frames = frames[:, top : top + size, left : left + size]
    return (frames.permute(3, 0, 1, 2).float() / 127.5 - 1.0)[None]


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu()


@torch.no_grad()
def _reconstruct(args: argparse.Namespace) -> int:
    from mmgen.cli_utils import run_batch
    from mmgen.io import read_video, write_video
    from mmgen.io.destination import check_output_files
    from mmgen.tokenizer.model import VideoTokenizer
    from mmgen.tokenizer.quality import psnr, ssim

    videos = _videos(args.input)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose another --out")
    owned = _reconstruct_outputs(out)
    check_output_files([out / f"{p.stem}_recon.mp4" for p in videos] + [out / "metrics.csv", out / "metrics.json"],
                       lambda p: p.name in owned, "choose another --out or move the file")
    if not (Path(args.model) / "config.json").is_file():
        raise UserError(f"{args.model} is not a tokenizer folder (no config.json); write one with "
                        "`mmgen tokenizer export CKPT DIR`")
    model = VideoTokenizer.from_pretrained(args.model, low_cpu_mem_usage=False).to(args.device).eval()
    num_frames = args.frames or model.config.num_frames
    model.latent_frames(num_frames)  # validates 1 + 4k
    size = args.size or model.config.sample_size
    out.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> dict:
        x = _prepare(read_video(path), num_frames, size, model.temporal_compression).to(args.device)
        z = model.encode(x, chunk_frames=args.chunk_frames)
        rec = model.decode(model.quantize(z).z_q, chunk_frames=args.chunk_frames).clamp(-1, 1)
        side = torch.cat([_to_uint8(x), _to_uint8(rec)], dim=2)  # original | reconstruction
        name = f"{path.stem}_recon.mp4"
        write_video(out / name, side, fps=args.fps)
        row = {"video": str(path), "output": name, "frames": x.shape[2],
               "psnr": float(psnr(rec, x)[0]), "ssim": float(ssim(rec, x)[0])}
        print(f"{path.name}: PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}")
        return row

    result = run_batch(videos, one, command="tokenizer reconstruct", label=lambda p: p.name, what="video")
    rows = result.done
    if rows:
        overall = {"videos": len(rows), "skipped": len(result.skipped),
                   "psnr": sum(r["psnr"] for r in rows) / len(rows), "ssim": sum(r["ssim"] for r in rows) / len(rows)}
        _write_tables(out, rows, overall, result.skipped)
        print(f"overall ({len(rows)} videos): PSNR {overall['psnr']:.2f} dB  SSIM {overall['ssim']:.4f}  -> {out}")
    return result.exit_code(args.strict)


def _reconstruct_outputs(out: Path) -> set[str]:
    """Names a previous `reconstruct` into ``out`` wrote (its metrics.json lists them)."""
    try:
        previous = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        return {"metrics.csv", "metrics.json", *(row["output"] for row in previous["videos"])}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _write_tables(out: Path, rows: list[dict], overall: dict, skipped: list[tuple[str, str]]) -> None:
    from mmgen.io import atomic_path

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    writer.writerow({"video": "OVERALL", "output": "", "frames": "", "psnr": overall["psnr"], "ssim": overall["ssim"]})
    for name, text in (("metrics.csv", buf.getvalue()),
                       ("metrics.json", json.dumps({"videos": rows, "overall": overall,
                                                   "skipped": [{"video": v, "reason": r} for v, r in skipped]},
                                                  indent=2))):
        with atomic_path(out / name) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
