"""`mmgen ar fit | export | tokenize` (and `finetune | rl`, in :mod:`mmgen.posttrain.cli`).

  mmgen ar fit --config configs/generator/tiny.yaml [--ckpt_path RUN/checkpoints/last.ckpt] [--trainer.strategy fsdp ...]
  mmgen ar fit-unified --config configs/generator/unified.yaml  -> one model that generates and captions
  mmgen ar export CKPT OUTDIR [--no-ema] [--sampling YAML]  -> pipeline folder for `mmgen sample --model OUTDIR`
  mmgen ar tokenize --tokenizer DIR --out CACHE [--dataset mmgen.data.MovingShapes --dataset-args '{...}']
  mmgen ar routing --model DIR --out routing.png  -> expert use by layer per modality (sparse FFN models)

`fit` is a LightningCLI over ARModule + ARDataModule: every constructor argument is a YAML key
(model.*, data.*, trainer.*); resuming loads the checkpoint with weights_only=True.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from pathlib import Path

import torch
import yaml

from mmgen.cli_utils import UserError

# RunCheckpoint/LossCurve/ProgressLog: defaults every run gets (configs may add more callbacks).
CHECKPOINT_EVERY = 200


def _fit(argv: list[str], module=None) -> int:
    from lightning.pytorch.cli import LightningCLI

    from mmgen.data.latents import ARDataModule

    from .callbacks import LossCurve, ProgressLog, RunCheckpoint
    from .training import ARModule, NonFiniteLossError

    class _CLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.add_argument("--ckpt_path", type=str | None, default=None,
                                help="resume from this Lightning checkpoint (e.g. RUN/checkpoints/last.ckpt)")

    # args= is how we hand LightningCLI our argv; its "also got sys.argv" warning does not apply.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    defaults = {"callbacks": [RunCheckpoint(save_last=True, every_n_train_steps=CHECKPOINT_EVERY),
                              LossCurve(every_n_steps=50), ProgressLog(every_n_steps=50)]}
    cli = _CLI(module or ARModule, ARDataModule, run=False, args=argv, trainer_defaults=defaults,
               save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "mmgen ar fit"})
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path, weights_only=True)
    except NonFiniteLossError as err:
        print(f"mmgen ar fit: {err}", file=sys.stderr)
        return 1
    return 0


def export_checkpoint(ckpt: str | Path, out_dir: str | Path, ema: bool = True, sampling: dict | None = None,
                      fps: int = 8, overwrite: bool = False) -> Path:
    """Write the pipeline folder ``out_dir`` that ``mmgen sample --model`` loads: model_index.json,
    transformer/ (the generator; EMA weights when present and ``ema``), tokenizer/ and training.json
    (the checkpoint, its step, the weights exported and the run's config when it is beside the checkpoint).

    ``out_dir`` must be new or empty, or, with ``overwrite``, a model folder mmgen wrote
    (checked before the checkpoint is read); ``sampling``: default sampling settings."""
    from mmgen.io.checkpoint import load_checkpoint
    from mmgen.io.destination import check_model_destination
    from mmgen.pipelines.assemble import save_pipeline
    from mmgen.tokenizer.model import VideoTokenizer

    from .model import VideoAR

    check_model_destination(out_dir, overwrite, inputs=[ckpt])
    state = load_checkpoint(ckpt, "mmgen ar fit")
    if "generator_config" not in state:
        raise UserError(f"{ckpt} is not a checkpoint of `mmgen ar fit` (no generator_config)")
    weights = state["state_dict"]
    use_ema = ema and any(k.startswith("ema.") for k in weights)
    prefix = "ema." if use_ema else "model."
    generator = VideoAR.from_config(state["generator_config"])
    generator.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    tokenizer = VideoTokenizer.from_config(state["tokenizer_config"])
    tokenizer.load_state_dict({k[len("tokenizer."):]: v for k, v in weights.items() if k.startswith("tokenizer.")})
    record = {"checkpoint": str(ckpt), "global_step": state.get("global_step"),
              "weights": "ema" if use_ema else "raw", **_run_config(Path(ckpt))}
    return save_pipeline(tokenizer, generator, out_dir, sampling, fps, overwrite, inputs=[ckpt],
                         records={"training.json": record})


def _run_config(ckpt: Path) -> dict:
    """The training run's settings (data mix, steps, lr) for the model folder's training.json: the
    config.yaml LightningCLI wrote into the run folder that holds ``checkpoints/``, when there is one."""
    path = ckpt.parent.parent / "config.yaml"
    if ckpt.parent.name != "checkpoints" or not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}  # provenance only: an unreadable run config does not block the export
    return {"config_file": str(path), "config": config} if isinstance(config, dict) else {}


def _import(path: str):
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(f"cannot import dataset class {path!r}: {err} (pass --dataset package.module.Class)") from None


def _check_cache_destination(out: Path) -> None:
    """A latent cache replaces its own files only: ``out`` must be new, empty or a latent cache."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").is_file():
        raise UserError(f"--out {out} is not empty and is not a latent cache (no meta.json); "
                        "choose a new or empty folder")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "fit":
        return _fit(argv[1:])
    if argv and argv[0] == "fit-unified":
        from .unified_training import fit_main

        return fit_main(argv[1:])
    if argv and argv[0] in ("finetune", "rl"):
        from mmgen.posttrain.cli import main as posttrain_main

        return posttrain_main(argv)
    parser = argparse.ArgumentParser(prog="mmgen ar", description="Train, export and pre-tokenize for the VideoAR generator.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fit", help="train (LightningCLI): mmgen ar fit --config configs/generator/tiny.yaml [--ckpt_path CKPT]",
                   add_help=False)
    sub.add_parser("fit-unified", help="train a unified text+video model (mmgen.ar.unified_training): "
                   "mmgen ar fit-unified --config configs/generator/unified.yaml", add_help=False)
    sub.add_parser("finetune", help="adapt a trained model to new clips (full | lora | beamlora | apex)", add_help=False)
    sub.add_parser("rl", help="GRPO with MovingShapes rewards (+ CD-RLHF curiosity)", add_help=False)
    ex = sub.add_parser("export", help="checkpoint -> pipeline folder for `mmgen sample --model OUT_DIR`")
    ex.add_argument("ckpt", help="Lightning checkpoint written by `mmgen ar fit` (RUN/.../checkpoints/last.ckpt)")
    ex.add_argument("out_dir", help="new or empty folder: model_index.json, transformer/, tokenizer/, training.json")
    ex.add_argument("--no-ema", action="store_true", help="export the raw weights even if EMA weights exist")
    ex.add_argument("--sampling", help="default sampling settings YAML (e.g. configs/sample/default.yaml)")
    ex.add_argument("--fps", type=int, default=8, help="frame rate of the videos `mmgen sample` writes")
    ex.add_argument("--overwrite", action="store_true",
                    help="replace OUT_DIR if it is a model folder written by mmgen (never anything else)")
    tk = sub.add_parser("tokenize", help="encode a dataset once into a latent cache (LatentCache)")
    tk.add_argument("--tokenizer", required=True, help="folder of a saved VideoTokenizer")
    tk.add_argument("--out", required=True, help="cache folder to write")
    tk.add_argument("--dataset", default="mmgen.data.MovingShapes", help="dataset class (import path)")
    tk.add_argument("--dataset-args", default='{"num_samples": 512}', help="JSON keyword arguments of the dataset")
    tk.add_argument("--batch-size", type=int, default=8)
    tk.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    rt = sub.add_parser("routing", help="draw expert use by layer for each modality (MoE/MoHD/MoUE models)")
    rt.add_argument("--model", required=True, help="pipeline folder (transformer/ + tokenizer/)")
    rt.add_argument("--out", required=True, help="PNG to write")
    rt.add_argument("--clips", type=int, default=16, help="MovingShapes clips to route")
    args = parser.parse_args(argv)
    if args.command == "routing":
        from .routing import routing_main

        try:
            path, shared = routing_main(args.model, args.out, args.clips)
            for direction, layers in shared.items():
                print(f"{direction}: text/visual expert-use overlap by layer {layers} (1 = same experts, 0 = disjoint)")
            print(f"wrote {path}")
        except (ValueError, OSError) as err:
            print(f"mmgen ar routing: error: {err}", file=sys.stderr)
            return 2
        return 0

    if args.command == "export":
        from mmgen.pipelines.assemble import read_sampling

        out = export_checkpoint(args.ckpt, args.out_dir, ema=not args.no_ema, sampling=read_sampling(args.sampling),
                                fps=args.fps, overwrite=args.overwrite)
        print(f"exported {args.ckpt} -> {out} (sample with: mmgen sample --model {out} --prompt ...)")
        return 0
    from mmgen.data.latents import tokenize_dataset
    from .training import load_tokenizer

    try:
        kwargs = json.loads(args.dataset_args)
    except json.JSONDecodeError as err:
        raise UserError(f"--dataset-args is not valid JSON: {err}") from None
    _check_cache_destination(Path(args.out))
    dataset = _import(args.dataset)(**kwargs)
    out = tokenize_dataset(dataset, load_tokenizer(args.tokenizer), args.out, args.batch_size, device=args.device)
    print(f"wrote latent cache {out} ({len(dataset)} samples)")
    return 0
