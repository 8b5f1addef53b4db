"""Assemble a pipeline folder (what `mmgen sample --model` loads) from a tokenizer and a generator.

    python -m mmgen.pipelines.assemble --tokenizer TOK_DIR --generator GEN_DIR \
        [--sampling configs/sample/default.yaml] [--fps 8] --out mmgen/assets/default [--overwrite]

``TOK_DIR`` / ``GEN_DIR`` are ``save_pretrained`` folders. ``mmgen ar export`` already writes a
whole pipeline folder (through :func:`save_pipeline`); this entry point combines folders saved
separately (e.g. another tokenizer export with a generator's ``transformer/``). The result is
written to a temporary folder beside ``--out`` and renamed to it at the end, so an interrupted
run never leaves half a model, and an existing ``--out`` is replaced only when it is a model
folder of ours and ``--overwrite`` is given.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from mmgen.cli_utils import UserError
from mmgen.io import atomic_dir


def read_sampling(path: str | os.PathLike | None) -> dict | None:
    """Default sampling settings from a ``configs/sample/*.yaml`` file (its batch_size is a CLI matter)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            sampling = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"sampling config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(sampling, dict):
        raise UserError(f"sampling config {path} must be a mapping of settings")
    sampling.pop("batch_size", None)
    return sampling


def save_pipeline(tokenizer, transformer, out: str | Path, sampling: dict | None = None, fps: int = 8,
                  overwrite: bool = False, inputs=(), records: dict[str, dict] | None = None) -> Path:
    """Write the VideoARPipeline of ``tokenizer`` + ``transformer`` to ``out`` (:func:`write_pipeline`)."""
    from mmgen.pipelines.videoar import VideoARPipeline

    pipe = VideoARPipeline(tokenizer=tokenizer.eval(), transformer=transformer.eval(), fps=fps, sampling=sampling)
    return write_pipeline(pipe, out, records, overwrite, inputs)


def write_pipeline(pipe, out: str | Path, records: dict[str, dict] | None = None, overwrite: bool = False,
                   inputs=()) -> Path:
    """Write ``pipe`` (model_index.json, tokenizer/, transformer/) and the run's ``records`` ({file name:
    JSON-able dict}, e.g. training.json) as one atomic folder; see :func:`mmgen.io.atomic_dir` for
    ``overwrite``."""
    with atomic_dir(out, overwrite=overwrite, inputs=inputs) as tmp:
        pipe.save_pretrained(tmp)
        for name, record in (records or {}).items():
            (tmp / name).write_text(json.dumps(record, indent=1, default=str))  # e.g. a YAML date
    return Path(out)


def assemble(tokenizer_dir: str | Path, generator_dir: str | Path, out: str | Path, sampling: dict | None = None,
             fps: int = 8, overwrite: bool = False) -> Path:
    from mmgen.ar.model import VideoAR
    from mmgen.io.destination import check_model_destination
    from mmgen.tokenizer.model import VideoTokenizer

    inputs = [tokenizer_dir, generator_dir]
    check_model_destination(out, overwrite, inputs)  # before loading: a blocked --out costs nothing
    for what, d in (("tokenizer", tokenizer_dir), ("generator", generator_dir)):
        if not (Path(d) / "config.json").is_file():
            raise UserError(f"{what} folder {d} has no config.json (write it with save_pretrained / "
                            f"`mmgen ar export`)")
    return save_pipeline(VideoTokenizer.from_pretrained(str(tokenizer_dir)), VideoAR.from_pretrained(str(generator_dir)),
                         out, sampling, fps, overwrite, inputs)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from mmgen.cli_utils import error_message

    p = argparse.ArgumentParser(prog="python -m mmgen.pipelines.assemble", description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--generator", required=True)
    p.add_argument("--sampling", help="YAML with the default sampling settings (guidance, temperature, top_p, window)")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a model folder written by mmgen")
    args = p.parse_args(argv)
    try:
        out = assemble(args.tokenizer, args.generator, args.out, read_sampling(args.sampling), args.fps,
                       args.overwrite)
    except Exception as exc:
        message = error_message(exc)
        if message is None:
            raise
        print(f"assemble: error: {message}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
