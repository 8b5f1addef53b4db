"""`mmgen ar finetune` and `mmgen ar rl`.

  mmgen ar finetune --method lora --model mmgen/assets/default --shapes square --out runs/ft_square
  mmgen ar finetune --method full --model DIR --data my_clips/ --out runs/ft_mine      (captioned clips)
  mmgen ar rl --model runs/ft_square --prompts prompts.txt --out runs/rl_square [--curiosity]

Both write a pipeline folder (tokenizer, transformer, sampling defaults) that `mmgen sample
--model OUT` loads, plus a JSON record of the run (finetune.json / rl.json). --out is checked
before any work: a model folder there is replaced only with --overwrite, anything else never.
Expected errors are UserError / ValueError: the `mmgen` dispatcher prints them as one line.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mmgen.cli_utils import UserError
from mmgen.io.destination import check_model_destination
from mmgen.pipelines.cli import read_prompts_file, resolve_model_dir


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="pipeline folder to start from (e.g. mmgen/assets/default)")
    p.add_argument("--out", required=True, help="pipeline folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds a model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def finetune_parser() -> argparse.ArgumentParser:
    from mmgen.data.moving_shapes import COLORS

    from .finetune import METHODS

    p = argparse.ArgumentParser(prog="mmgen ar finetune", description="teach a trained generator new clips")
    _common(p)
    p.add_argument("--method", choices=METHODS, default="lora")
    p.add_argument("--data", default="shapes",
                   help="'shapes' (MovingShapes clips of --shapes/--sizes/--motions) or a folder of captioned clips")
    p.add_argument("--shapes", default="square", help="comma list (data=shapes)")
    p.add_argument("--sizes", default="large")
    p.add_argument("--motions", default="left,right,up,down")
    p.add_argument("--colors", default=",".join(COLORS), help="comma list of colours to train on (data=shapes)")
    p.add_argument("--exclude-prompts", help="file of captions to leave out of training (held-out prompts)")
    p.add_argument("--num-clips", type=int, default=128, help="clips to encode (data=shapes)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=None, help="default per method: full 3e-4, others 2e-3")
    p.add_argument("--rank", type=int, default=8, help="LoRA/BeamLoRA rank")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2 x rank)")
    p.add_argument("--targets", default=None, help="comma list of fnmatch patterns of nn.Linear names to adapt")
    p.add_argument("--beam-interval", type=int, default=None, help="BeamLoRA prune/expand period (default steps/5)")
    p.add_argument("--apex-stages", type=int, default=2)
    p.add_argument("--adapter-out", help="also write the LoRA adapter in PEFT format to this folder")
    return p


def rl_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmgen ar rl", description="GRPO with MovingShapes rewards (+ curiosity)")
    _common(p)
    p.add_argument("--prompts", required=True, help="file of MovingShapes captions, one per line")
    p.add_argument("--ref", help="frozen reference model folder for the KL term (default: --model)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup-steps", type=int, default=0, help="linear lr warm-up over the first N steps")
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--curiosity", action="store_true", help="CD-RLHF intrinsic curiosity bonus")
    p.add_argument("--eta", type=float, default=0.06)
    p.add_argument("--icm-lr", type=float, default=1e-5)
    p.add_argument("--drop-mean", action="store_true",
                   help="whiten the intrinsic reward to zero mean (the authors' code) instead of keeping its mean")
    return p


def _check_out(args) -> Path:
    check_model_destination(args.out, args.overwrite, [args.model, *([args.ref] if getattr(args, "ref", None) else [])])
    return Path(args.out)


def load_pipeline(model: str | None, device: str = "cpu"):
    from mmgen.pipelines.videoar import VideoARPipeline

    model_dir = resolve_model_dir(model)
    try:
        return VideoARPipeline.from_pretrained(str(model_dir)).to(device)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot load the model from {model_dir}: {exc}") from None


def _split(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _dataset(args, frame_size: int):
    if args.data != "shapes":
        from mmgen.data.clips import ClipConfig
        from mmgen.data.folder import EmptyDatasetError, VideoFolder

        if not Path(args.data).is_dir():
            raise UserError(f"--data {args.data}: not a folder (or 'shapes')")
        try:
            ds = VideoFolder(args.data, ClipConfig(resolution=frame_size))
        except EmptyDatasetError as exc:
            raise UserError(str(exc)) from None
        return ds
    from mmgen.data.moving_shapes import COLORS
    from mmgen.data.default_model import DefaultModelShapes

    colors = set(_split(args.colors))
    unknown = colors - set(COLORS)
    if unknown:
        raise UserError(f"--colors: unknown colour(s) {sorted(unknown)}; known: {', '.join(COLORS)}")
    excluded = set(read_prompts_file(args.exclude_prompts)) if args.exclude_prompts else set()
    try:
        pool = DefaultModelShapes(args.num_clips * 4, seed=args.seed, size=frame_size, shapes=_split(args.shapes),
                                  sizes=_split(args.sizes), motions=_split(args.motions))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot build the MovingShapes clips: {exc}") from None
    keep = [i for i in range(len(pool)) if (c := pool.shapes.sample(pool.indices[i]).caption) not in excluded
            and c.split()[2] in colors][: args.num_clips]
    if not keep:
        raise UserError("no training clips left after --colors / --exclude-prompts")
    return [pool[i] for i in keep]


def _finetune(args) -> int:
    import torch

    from mmgen.pipelines.assemble import write_pipeline

    from .beamlora import BeamLoRAConfig
    from .finetune import FinetuneConfig, Finetuner, encode_clips
    from .lora import DEFAULT_TARGETS

    from .lora import matching_linears

    out = _check_out(args)
    pipe = load_pipeline(args.model, args.device)
    try:
        if args.method in ("lora", "beamlora"):
            matching_linears(pipe.transformer, _split(args.targets) if args.targets else DEFAULT_TARGETS)
        cfg = FinetuneConfig(method=args.method, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed, rank=args.rank, alpha=args.alpha,
                             targets=_split(args.targets) if args.targets else DEFAULT_TARGETS,
                             beam=BeamLoRAConfig(interval=args.beam_interval or max(2, args.steps // 5)),
                             apex_stages=args.apex_stages)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    dataset = _dataset(args, pipe.frame_size[0])
    torch.manual_seed(args.seed)
    latents, captions = encode_clips(pipe.tokenizer, dataset)
    print(f"encoded {len(captions)} clips; fine-tuning ({cfg.method}) for {cfg.steps} steps")
    tuner = Finetuner(pipe.transformer, pipe.tokenizer.quantizer, cfg)
    try:
        history = tuner.run(latents, captions)
    except ValueError as exc:  # e.g. LoRA targets that match nothing, captions the model cannot take
        raise UserError(str(exc)) from None
    tuner.finish(args.adapter_out)
    meta = {"base_model": str(args.model), "method": cfg.method, "steps": cfg.steps, "seed": cfg.seed,
            "clips": len(captions), "captions": sorted(set(captions)), **history}
    write_pipeline(pipe, out, {"finetune.json": meta}, overwrite=args.overwrite, inputs=[args.model])
    print(f"wrote {out} (trainable parameters: {history['trainable_parameters']}; "
          f"final loss {history['loss'][-1]:.4f})" + (f"; adapter {args.adapter_out}" if args.adapter_out else ""))
    return 0


def _rl(args) -> int:
    from mmgen.pipelines.assemble import write_pipeline

    from .rl import GRPOTrainer, RLConfig

    out = _check_out(args)
    prompts = read_prompts_file(args.prompts)
    pipe = load_pipeline(args.model, args.device)
    reference = load_pipeline(args.ref, args.device).transformer if args.ref else None
    try:
        cfg = RLConfig(steps=args.steps, prompts_per_step=args.prompts_per_step, group_size=args.group_size,
                       lr=args.lr, warmup_steps=args.warmup_steps, kl_coef=args.kl_coef, temperature=args.temperature, curiosity=args.curiosity,
                       eta=args.eta, icm_lr=args.icm_lr, keep_mean=not args.drop_mean, seed=args.seed)
        trainer = GRPOTrainer(pipe, prompts, cfg, reference)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    history = trainer.run()
    record = {"base_model": str(args.model), "reference": str(args.ref or args.model), "prompts": prompts,
              "config": vars(cfg), "history": history}
    write_pipeline(pipe, out, {"rl.json": record}, overwrite=args.overwrite, inputs=[args.model])
    print(f"wrote {out} (mean reward first/last step {history[0]['reward']:.3f} / {history[-1]['reward']:.3f})")
    return 0


def main(argv: list[str]) -> int:
    """argv[0] is 'finetune' or 'rl'."""
    parser, run = (finetune_parser(), _finetune) if argv[0] == "finetune" else (rl_parser(), _rl)
    return run(parser.parse_args(argv[1:]))
