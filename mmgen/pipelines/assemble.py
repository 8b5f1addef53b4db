"""Assemble a pipeline folder from a saved tokenizer and generator.

    python -m mmgen.pipelines.assemble --tokenizer TOK_DIR --generator GEN_DIR \
        [--sampling configs/sample/default.yaml] [--fps 8] --out mmgen/assets/default

``TOK_DIR`` / ``GEN_DIR`` are ``save_pretrained`` folders (``mmgen ar export`` writes both).
The result is written to a temporary folder beside ``--out`` and renamed over it at the end,
so an interrupted run never leaves half a model.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from mmgen.io import atomic_dir


def assemble(tokenizer_dir: str | Path, generator_dir: str | Path, out: str | Path, sampling: dict | None = None,
             fps: int = 8) -> Path:
    from mmgen.ar.model import VideoAR
    from mmgen.pipelines.videoar import VideoARPipeline
    from mmgen.tokenizer.model import VideoTokenizer

    for what, d in (("tokenizer", tokenizer_dir), ("generator", generator_dir)):
        if not (Path(d) / "config.json").is_file():
            raise FileNotFoundError(f"{what} folder {d} has no config.json (write it with save_pretrained / "
                                    f"`mmgen ar export`)")
    pipe = VideoARPipeline(tokenizer=VideoTokenizer.from_pretrained(str(tokenizer_dir)).eval(),
                           transformer=VideoAR.from_pretrained(str(generator_dir)).eval(),
                           fps=fps, sampling=sampling)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmgen.pipelines.assemble", description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--generator", required=True)
    p.add_argument("--sampling", help="YAML with the default sampling settings (guidance, temperature, top_p, window)")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    sampling = None
    if args.sampling:
        with open(args.sampling, encoding="utf-8") as f:
            sampling = yaml.safe_load(f) or {}
        sampling.pop("batch_size", None)
    try:
        out = assemble(args.tokenizer, args.generator, args.out, sampling, args.fps)
    except (FileNotFoundError, ValueError) as exc:
        print(f"assemble: error: {exc}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
