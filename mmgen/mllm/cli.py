"""`mmgen vqa`: ask a question about an image (optionally with Blink), train, evaluate.

  mmgen vqa --image IMG --question "what color is the circle ?" [--model DIR] [--blink|--blink-interp]
            [--tokensr DIR] [--show-saliency OUT.png]      DIR: an mmgen VQA model folder, or a local
            Hugging Face LLaVA or Qwen2-VL folder (told apart by config.json's model_type; [--image-side PX])
  mmgen vqa fit --config configs/mllm/vqa.yaml --out DIR [--run-dir RUN] [--overwrite] [--ckpt_path CKPT]
                                                       train the MLLM from scratch (LightningCLI)
  mmgen vqa fit-tokensr --model DIR --out DIR [--run-dir RUN] [--overwrite] [...]
                                                       train TokenSR with the MLLM frozen
--out receives the model folder whole (written beside it, then renamed; a model folder of ours is replaced
only with --overwrite); the training logs and checkpoints go to --run-dir (default: OUT-run beside it).
  mmgen vqa eval [--model DIR] [--split val finegrained] [--table]   accuracy per question type;
            --table adds the Blink comparison (vanilla, Blink-interp, Blink, random-region, no-drop)

Without --model the packaged default (mmgen/mllm/assets/vqa, TokenSR in assets/tokensr) is used;
it is reproduced by ``bash mmgen/mllm/assets/REPRODUCE.sh``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
SUBCOMMANDS = ("fit", "fit-tokensr", "eval")
HF_REGION = 4  # 4 x 4 of LLaVA-1.5's 24 x 24 grid (36 regions) or Qwen2-VL's 16 x 16 at 448 px (16): 64 SR tokens at 2x


def _add_blink_args(p: argparse.ArgumentParser) -> None:
    from .blink import BlinkConfig

    d = BlinkConfig()
    p.add_argument("--tokensr", default=None, help="TokenSR weights dir (default: <model>/tokensr, or the packaged one)")
    p.add_argument("--blink-layers", type=int, nargs=2, default=None, metavar=("START", "END"),
                   help=f"decoder layers [start, end) Blink scans (default {d.layers})")
    p.add_argument("--tau-exp", type=float, default=d.tau_exp, help="expand when rho > tau_exp")
    p.add_argument("--tau-drop", type=float, default=d.tau_drop, help="drop when rho < tau_drop")
    p.add_argument("--region", type=int, default=None,
                   help=f"region side p in tokens (default {d.region}; {HF_REGION} for a Hugging Face LLaVA)")


def _parser_ask() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmgen vqa", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True, help="image file (png/jpg/...)")
    p.add_argument("--question", required=True, help='e.g. "what color is the circle ?"')
    p.add_argument("--model", default=None, help="MLLM dir (save_pretrained), or a local Hugging Face LLaVA or Qwen2-VL "
                   "folder (config.json with model_type 'llava' or 'qwen2_vl', safetensors weights, processor files); "
                   "default: packaged model")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (Hugging Face models)")
    p.add_argument("--image-side", type=int, default=None,
                   help="Qwen2-VL: images are resized to this square size in pixels (default 448: 16 x 16 merged "
                        "tokens for Qwen2-VL-7B); Blink tiles one token grid")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--blink", action="store_true", help="Blink with trained TokenSR")
    g.add_argument("--blink-interp", action="store_true", help="Blink-interp (training-free interpolation)")
    p.add_argument("--show-saliency", default=None, metavar="OUT.png",
                   help="write the per-layer saliency maps and chosen regions to OUT.png")
    p.add_argument("--max-side", type=int, default=4096,
                   help="images with a longer side are downscaled to this first (with a note)")
    _add_blink_args(p)
    return p


def _parser_sub(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"mmgen vqa {name}")
    if name == "fit-tokensr":
        p.add_argument("--model", default=None, help="frozen MLLM dir (default: packaged)")
        p.add_argument("--out", required=True, help="model folder for the TokenSR bank")
        p.add_argument("--overwrite", action="store_true", help="replace a TokenSR folder of ours at --out")
        p.add_argument("--run-dir", default=None, help="logs and checkpoints (default: OUT-run beside --out)")
        p.add_argument("--steps", type=int, default=1500)
        p.add_argument("--batch-size", type=int, default=24)
        p.add_argument("--lr", type=float, default=2e-3)
        from .blink import BlinkConfig

        p.add_argument("--layers", type=int, nargs=2, default=BlinkConfig().layers, metavar=("START", "END"))
        p.add_argument("--region", type=int, default=BlinkConfig().region,
                       help="region side in tokens: Blink must run with the region its TokenSR was trained for")
        p.add_argument("--hidden", type=int, default=64, help="TokenSR convolution width")
        p.add_argument("--mse-weight", type=float, default=1.0, help="weight of the zoom hidden-state match")
        p.add_argument("--kd-weight", type=float, default=1.0,
                       help="weight of the answer self-distillation from the zoomed view (see mllm.lightning)")
        p.add_argument("--ce-weight", type=float, default=0.0,
                       help="weight of the true-answer cross-entropy through Blink's expansion (see mllm.lightning)")
        p.add_argument("--target-prob", type=float, default=0.5,
                       help="probability of training on the asked-about object's tile instead of Blink's choice")
        p.add_argument("--max-minutes", type=float, default=30.0)
    else:  # eval
        p.add_argument("--model", default=None, help="MLLM dir (default: packaged)")
        p.add_argument("--split", nargs="+", default=["val", "finegrained"], help="splits to evaluate")
        p.add_argument("--samples", type=int, default=1000, help="questions per split")
        p.add_argument("--batch-size", type=int, default=100)
        p.add_argument("--table", action="store_true",
                       help="compare vanilla, Blink-interp, Blink, random-region, no-drop (accuracy, latency)")
        p.add_argument("--repeats", type=int, default=5, help="timing repeats per variant (--table)")
        p.add_argument("--strict", action="store_true",
                       help="exit with status 1 if any split failed (default: only if none succeeded)")
        _add_blink_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # tracebacks instead of one-line errors
    argv = [a for a in argv if a != "--debug"]
    from mmgen.cli_utils import UserError

    try:
        if argv and argv[0] == "fit":
            return _fit(argv[1:])
        if argv and argv[0] in SUBCOMMANDS:
            args = _parser_sub(argv[0]).parse_args(argv[1:])
            return {"fit-tokensr": _fit_tokensr, "eval": _eval}[argv[0]](args)
        return _ask(_parser_ask().parse_args(argv))
    except (ValueError, OSError, UserError) as e:
        if debug:
            raise
        print(f"mmgen vqa: error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- helpers
def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _model_dir(path: str | None) -> Path:
    d = Path(path) if path else ASSETS / "vqa"
    if not (d / "config.json").is_file():
        hint = ("train one with `mmgen vqa fit --out DIR` and pass --model DIR" if path else
                "the packaged default model is missing; rebuild it with `bash mmgen/mllm/assets/REPRODUCE.sh`")
        raise FileNotFoundError(f"no MLLM at {d} (expected {d / 'config.json'}): {hint}")
    return d


def load_model(path: str | None, device=None):
    from .model import TinyLlava

    model = TinyLlava.from_pretrained(str(_model_dir(path)), low_cpu_mem_usage=False)
    return model.to(device or "cpu").eval()


def load_tokensr(path: str | None, model_path: str | None, device=None):
    from .tokensr import TokenSRBank

    if path is None:
        path = str(Path(model_path) / "tokensr") if model_path else str(ASSETS / "tokensr")
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"no TokenSR weights at {path} (expected {Path(path) / 'config.json'}): "
                                "train them with `mmgen vqa fit-tokensr --model DIR --out DIR` and pass --tokensr, "
                                "or use --blink-interp")
    return TokenSRBank.from_pretrained(path, low_cpu_mem_usage=False).to(device or "cpu").eval()


def save_atomic(module, out: str | Path, overwrite: bool = False, inputs=()) -> None:
    """``save_pretrained`` as one model folder ``out`` (:func:`mmgen.io.atomic_dir`: a reader sees the old
    folder or the new one; only a model folder of ours is replaced, and only with ``overwrite``)."""
    from mmgen.io import atomic_dir

    with atomic_dir(out, overwrite=overwrite, inputs=inputs) as tmp:
        module.save_pretrained(tmp, safe_serialization=True)


def run_dir(out: str | Path, run: str | None) -> Path:
    """Where a training command's logs and checkpoints go: ``--run-dir`` or OUT-run beside the model folder."""
    return Path(run) if run else Path(out).with_name(Path(out).name + "-run")


def blink_config(args, mode: str, layers: tuple[int, int] | None = None, region: int | None = None, **overrides):
    """The BlinkConfig the command line asks for; ``layers`` / ``region``: the model family's defaults."""
    from .blink import BlinkConfig

    d = BlinkConfig()
    layers = tuple(args.blink_layers) if args.blink_layers else layers or d.layers
    region = args.region or region or d.region
    return BlinkConfig(layers=layers, region=region, tau_exp=args.tau_exp, tau_drop=args.tau_drop,
                       mode=mode, **overrides)


def _trainer(args, out: Path, steps: int, val_every: int | None):
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    cuda = _device(args.device).type == "cuda"
    return L.Trainer(
        max_steps=steps, max_time={"minutes": args.max_minutes}, accelerator="gpu" if cuda else "cpu", devices=1,
        precision="bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true",
        logger=CSVLogger(str(out), name="logs"), val_check_interval=val_every, check_val_every_n_epoch=None,
        limit_val_batches=4, log_every_n_steps=25, gradient_clip_val=1.0,
        enable_progress_bar=sys.stderr.isatty(),  # a redrawn bar in a log file is pure overhead
        callbacks=[ModelCheckpoint(dirpath=str(out / "ckpt"), save_last=True, every_n_train_steps=250)])


# --------------------------------------------------------------------------- subcommands
def _fit(argv: list[str]) -> int:
    """LightningCLI over MLLMModule + VQADataModule (every constructor argument is a YAML key, see
    configs/mllm/vqa.yaml); ``--out`` receives the trained model (a model folder, see :func:`save_atomic`),
    ``--run-dir`` the logs and checkpoints."""
    import warnings

    from mmgen.io.destination import check_model_destination

    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI

    from mmgen.ar.callbacks import ProgressLog

    from .lightning import MLLMModule, VQADataModule

    class _CLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.add_argument("--out", type=str, required=True, help="model folder the trained MLLM is saved as")
            parser.add_argument("--overwrite", action="store_true", help="replace a model folder of ours at --out")
            parser.add_argument("--run-dir", type=str | None, default=None,
                                help="logs and checkpoints (default: OUT-run beside --out)")
            parser.add_argument("--ckpt_path", type=str | None, default=None,
                                help="resume from this Lightning checkpoint (e.g. RUN/ckpt/last.ckpt)")

    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # our argv, on purpose
    out = _option(argv, "--out")
    run = run_dir(out or ".", _option(argv, "--run-dir"))
    if out:  # before training, not after it
        check_model_destination(out, "--overwrite" in argv)
    defaults = {"default_root_dir": str(run), "enable_progress_bar": sys.stderr.isatty(),
                "callbacks": [ModelCheckpoint(dirpath=str(run / "ckpt"), save_last=True,
                                              every_n_train_steps=250), ProgressLog(every_n_steps=50)]}
    cli = _CLI(MLLMModule, VQADataModule, run=False, args=argv, trainer_defaults=defaults,
               save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "mmgen vqa fit"})
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path, weights_only=True)
    save_atomic(cli.model.model, cli.config.out, cli.config.overwrite)
    print(f"saved MLLM to {cli.config.out}")
    return 0


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``name VALUE`` or ``name=VALUE`` in argv (None when absent)."""
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a[len(name) + 1:]
    return None


def _fit_tokensr(args) -> int:
    import lightning as L

    from .data import SIZES
    from .lightning import TokenSRModule, VQADataModule

    from mmgen.io.destination import check_model_destination

    L.seed_everything(args.seed, workers=True)
    inputs = [args.model] if args.model else []
    check_model_destination(args.out, args.overwrite, inputs)  # before training, not after it
    model = load_model(args.model)
    module = TokenSRModule(model, tuple(args.layers), args.region, hidden=args.hidden, lr=args.lr, total_steps=args.steps,
                           mse_weight=args.mse_weight, kd_weight=args.kd_weight, ce_weight=args.ce_weight,
                           target_prob=args.target_prob)
    dm = VQADataModule(batch_size=args.batch_size, seed=args.seed + 1, image_size=model.config.image_size,
                       sizes=tuple(SIZES))  # TokenSR learns from images of every object size, tiny ones included
    trainer = _trainer(args, run_dir(args.out, args.run_dir), args.steps, max(args.steps // 3, 1))
    trainer.fit(module, dm)
    save_atomic(module.bank, args.out, args.overwrite, inputs)
    print(f"saved TokenSR to {args.out}")
    return 0


def _eval(args) -> int:
    """Each split is one item of a batch: a split that fails is named and the others still finish."""
    from mmgen.cli_utils import run_batch

    from .batch import Progress
    from .evaluate import (comparison, comparison_steps, describe_table, evaluate_split, print_accuracy,
                           print_table, variants)

    device = _device(args.device)
    model = load_model(args.model, device)
    if not args.table:
        result = run_batch(args.split, lambda s: (s, evaluate_split(model, s, args.samples, args.batch_size,
                                                                     args.seed, device)),
                           command="vqa eval", what="split")
        if result.done:
            print_accuracy(dict(result.done))
        return result.exit_code(args.strict)
    bank = load_tokensr(args.tokensr, args.model, device)
    base = blink_config(args, "tokensr")
    print(describe_table(base, args.samples, args.batch_size, args.repeats, device))
    steps = comparison_steps(args.samples, args.batch_size, args.repeats, len(variants(base, bank)))
    progress = Progress(steps * len(args.split), "vqa eval --table")
    try:
        result = run_batch(args.split, lambda s: comparison(model, bank, base, s, args.samples, args.batch_size,
                                                             args.seed, args.repeats, device, progress.update),
                           command="vqa eval", what="split")
    finally:
        progress.close()
    if result.done:
        print_table([row for rows in result.done for row in rows])
    return result.exit_code(args.strict)


def _ask(args) -> int:
    import torch

    from .hf import hf_model_type

    if hf_model_type(args.model) is not None:
        return _ask_hf(args)

    from .blink import Blink, BlinkTrace
    from .data import to_model_input
    from .image import load_image
    from .text import batch_encode, decode_answer

    model = load_model(args.model)
    image, notes = load_image(args.image, args.max_side)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    ids, lengths = batch_encode([args.question], model.config.max_text_len)
    x = to_model_input(image, model.config.image_size)[None]
    trace = BlinkTrace() if args.show_saliency else None
    with torch.no_grad():
        state = model.prepare(x, ids, lengths)
        cfg = None
        if args.blink or args.blink_interp or args.show_saliency:
            bank = load_tokensr(args.tokensr, args.model) if args.blink else None
            cfg = blink_config(args, "tokensr" if args.blink else "interp")
            if not (args.blink or args.blink_interp):  # saliency only: scan but never expand
                cfg.tau_exp, cfg.tau_drop = float("inf"), 0.0
            logits = Blink(cfg, bank).run(model, state, trace)
        else:
            for i in range(model.num_layers):
                state = model.run_layer(i, state)
            logits = model.readout(state)
    answer = decode_answer(int(logits[0].argmax()))
    print(answer)
    _saliency_figure(args, image, trace, model.grid, cfg.region if trace is not None else None, answer)
    return 0


def _ask_hf(args) -> int:
    """`mmgen vqa --model HF_FOLDER`: greedy answer from a local Hugging Face LLaVA or Qwen2-VL, Blink on the prompt."""
    from .blink import Blink, BlinkTrace
    from .hf import QWEN2VL_SIDE, default_layers, load_hf
    from .image import load_image

    device = _device(args.device)
    decoder, processor = load_hf(args.model, device, image_side=args.image_side or QWEN2VL_SIDE)
    image, notes = load_image(args.image, args.max_side)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    ids, mask, pixels = decoder.encode(processor, [image], [args.question], device)
    blink = trace = cfg = None
    if args.blink or args.blink_interp or args.show_saliency:
        bank = load_tokensr(args.tokensr, args.model, device) if args.blink else None
        cfg = blink_config(args, "tokensr" if args.blink else "interp", default_layers(decoder.num_layers), HF_REGION)
        if not (args.blink or args.blink_interp):
            cfg.tau_exp, cfg.tau_drop = float("inf"), 0.0
        blink, trace = Blink(cfg, bank), BlinkTrace() if args.show_saliency else None
    tokens = decoder.generate(ids, pixels.to(decoder.dtype), args.max_new_tokens, blink,
                              processor.tokenizer.eos_token_id, trace=trace)
    answer = processor.tokenizer.decode(tokens[0], skip_special_tokens=True).strip()
    print(answer)
    _saliency_figure(args, image, trace, decoder.grid, cfg.region if cfg else None, answer)
    return 0


def _saliency_figure(args, image, trace, grid, region, answer: str) -> None:
    if not args.show_saliency:
        return
    from .viz import save_saliency

    save_saliency(args.show_saliency, image, trace, grid, region, f"{args.question}  ->  {answer}")
    print(f"wrote {args.show_saliency}", file=sys.stderr)
