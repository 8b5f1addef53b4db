"""`mmgen eval fvd | vbench | shapes | protocols`: print a table, write a JSON record.

Each command imports its modules when it runs, so `mmgen eval --help` stays fast.
Bad input (missing files, too few videos, foreign statistics) exits with status 2 and
one line on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

PROG = "mmgen eval"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Evaluate generated videos.")
    sub = parser.add_subparsers(dest="command", required=True)

    fvd = sub.add_parser("fvd", help="Fréchet Video Distance under a named protocol",
                         description="FVD of --fake against --real (a folder, or an .npz of saved statistics).")
    fvd.add_argument("--real", required=True, type=Path, help="real videos folder or statistics .npz")
    fvd.add_argument("--fake", type=Path, help="generated videos folder (omit to only compute/save real statistics)")
    fvd.add_argument("--protocol", required=True, help="preset name (see `mmgen eval protocols`) or YAML path")
    fvd.add_argument("--i3d", type=Path, default=None, help="I3D weights (default: $MMGEN_I3D_PATH)")
    fvd.add_argument("--i3d-input-scale", type=float, default=1.0, choices=(1.0, 0.5),
                     help="state-dict I3D only: feed [-1, 1] (default; TATS) or [-0.5, 0.5] (VideoGPT's code)")
    fvd.add_argument("--allow-small", action="store_true",
                     help="compute with fewer videos than the protocol needs (the result carries a warning)")
    fvd.add_argument("--real-list", type=Path, default=None,
                     help="file listing the real videos (relative to --real), e.g. UCF-101 trainlist01.txt")
    fvd.add_argument("--batch-size", type=int, default=8)
    fvd.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    fvd.add_argument("--cache-dir", type=Path, default=None,
                     help="real-statistics cache (default: $MMGEN_CACHE_DIR/fvd or ~/.cache/mmgen/fvd)")
    fvd.add_argument("--save-real-stats", type=Path, default=None, help="also write the real statistics here (.npz)")
    fvd.add_argument("--out", type=Path, default=None, help="result JSON (default: FAKE/mmgen_eval_fvd_PROTOCOL.json)")

    vb = sub.add_parser("vbench", help="VBench dimensions mmgen implements, and VBench's aggregation",
                        description="Score --videos on VBench dimensions, or aggregate VBench's own results.")
    source = vb.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", type=Path, help="folder of videos to score")
    source.add_argument("--aggregate", type=Path, help="VBench results JSON to aggregate into Quality/Semantic/Total")
    vb.add_argument("--dims", nargs="+", default=None,
                    help="dimension names, or 'all' / 'quality' / 'semantic' (default: all)")
    vb.add_argument("--preset", default=None, help="dimension preset: configs/eval/vbench/NAME.yaml or a YAML path")
    vb.add_argument("--dino", type=Path, default=None, help="DINO ViT-B/16 weights (default: $MMGEN_DINO_PATH)")
    vb.add_argument("--device", default=None)
    vb.add_argument("--out", type=Path, default=None, help="result JSON (default: VIDEOS/mmgen_eval_vbench.json)")

    sh = sub.add_parser("shapes", help="analytic MovingShapes prompt-adherence benchmark (no weights)")
    sh.add_argument("--videos", required=True, type=Path,
                    help="folder with manifest.jsonl (mmgen data synth) or <name>.json sidecars (mmgen sample)")
    sh.add_argument("--out", type=Path, default=None, help="result JSON (default: VIDEOS/mmgen_eval_shapes.json)")

    sub.add_parser("protocols", help="list the FVD protocol presets")
    return parser


def _device(name: str | None) -> str:
    import torch

    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _run_fvd(args, console: Console) -> int:
    from mmgen.metrics.fvd import compute_set_stats, evaluate_fvd, save_real_stats, write_json_atomic
    from mmgen.metrics.i3d import load_i3d
    from mmgen.metrics.protocols import load_protocol

    protocol = load_protocol(args.protocol)
    extractor = load_i3d(args.i3d, _device(args.device), args.i3d_input_scale)
    if args.fake is None:
        if args.save_real_stats is None:
            raise ValueError("give --fake to compute FVD, or --save-real-stats PATH to only compute real statistics")
        stats, warnings = compute_set_stats(args.real, protocol, extractor, protocol.num_real, "real",
                                            args.allow_small, args.batch_size, args.real_list)
        save_real_stats(args.save_real_stats, stats, protocol, extractor.info.as_dict())
        for warning in warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        console.print(f"saved statistics of {stats.stats.count} real clips ({protocol.key}) to {args.save_real_stats}")
        return 0
    result = evaluate_fvd(args.real, args.fake, protocol, extractor, args.allow_small, args.batch_size,
                          args.real_list, args.cache_dir, args.save_real_stats)
    out = args.out or args.fake / f"mmgen_eval_fvd_{protocol.name}.json"
    write_json_atomic(out, result)
    table = Table(title=f"FVD — protocol {protocol.name}")
    for column in ("FVD", "N real", "N fake", "frames", "stride", "resolution", "split", "extractor"):
        table.add_column(column)
    res = result["resolution"]
    table.add_row(
        f"{result['value']:.2f}", str(result["n_real"]), str(result["n_fake"]), str(result["frames"]),
        str(result["stride"]), str(res["protocol"] or f"real {res['real']} / fake {res['fake']}"),
        str(result["split"]), f"{result['extractor']['kind']} {result['extractor']['sha256'][:12]}",
    )
    console.print(table)
    for role in ("real", "fake"):
        skipped = result[role]["skipped"]
        if skipped.get("skipped"):
            console.print(f"{role}: skipped {skipped['skipped']} files: {skipped['counts']}")
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"wrote {out}")
    return 0


def _expand_dims(names: list[str]) -> list[str]:
    from mmgen.metrics.vbench import DIMENSIONS, dimension

    chosen: list[str] = []
    for name in names:
        if name in ("all", "quality", "semantic"):
            group = [d.name for d in DIMENSIONS if name == "all" or d.category == name]
        else:
            group = [dimension(name).name]
        chosen += [d for d in group if d not in chosen]
    return chosen


def _vbench_table(result: dict, console: Console) -> None:
    from mmgen.metrics.vbench import BY_NAME

    table = Table(title="VBench")
    for column in ("dimension", "category", "raw", "normalised x weight", "status"):
        table.add_column(column)
    normalized = result["aggregate"]["normalized"]
    for name, record in result["dimensions"].items():
        table.add_row(name, BY_NAME[name].category, _fmt(record.get("score")), _fmt(normalized.get(name)),
                      f"unsupported (needs {BY_NAME[name].model})" if record["status"] == "unsupported"
                      else record["status"])
    console.print(table)
    agg = result["aggregate"]
    for key in ("quality", "semantic"):
        missing = agg[f"{key}_missing"]
        note = f"  (not computed: missing {', '.join(missing)})" if missing else ""
        console.print(f"{key.capitalize()} score: {_fmt(agg[key])}{note}")
    console.print(f"Total score: {_fmt(agg['total'])}")


def _run_vbench(args, console: Console) -> int:
    from mmgen.metrics.fvd import write_json_atomic
    from mmgen.metrics.vbench import aggregate, evaluate_folder, load_preset, load_vbench_results

    if args.aggregate is not None:
        raw = load_vbench_results(args.aggregate)
        result = {"metric": "vbench", "source": str(args.aggregate),
                  "dimensions": {name: {"status": "given", "score": value} for name, value in raw.items()},
                  "aggregate": aggregate(raw)}
        out = args.out or args.aggregate.with_name(args.aggregate.stem + "_mmgen_aggregate.json")
    else:
        if args.preset and args.dims:
            raise ValueError("give --dims or --preset, not both")
        dims = load_preset(args.preset) if args.preset else _expand_dims(args.dims or ["all"])
        result = evaluate_folder(args.videos, dims, args.dino, _device(args.device))
        out = args.out or args.videos / "mmgen_eval_vbench.json"
    write_json_atomic(out, result)
    _vbench_table(result, console)
    console.print(f"wrote {out}")
    return 0


def _run_shapes(args, console: Console) -> int:
    from mmgen.metrics.fvd import write_json_atomic
    from mmgen.metrics.shapes import evaluate_folder

    result = evaluate_folder(args.videos)
    out = args.out or args.videos / "mmgen_eval_shapes.json"
    write_json_atomic(out, result)
    table = Table(title=f"MovingShapes benchmark — {result['n_videos']} videos")
    table.add_column("metric")
    table.add_column("mean")
    table.add_column("videos")
    for name, entry in result["summary"].items():
        table.add_row(name, _fmt(entry["mean"]), str(entry["n"]))
    console.print(table)
    if result["n_skipped"]:
        console.print(f"[yellow]skipped {result['n_skipped']} videos[/] (see 'skipped' in the JSON)")
    console.print(f"wrote {out}")
    return 0


def _run_protocols(args, console: Console) -> int:
    from mmgen.metrics.protocols import available_protocols, eval_dir, load_protocol

    table = Table(title=f"FVD protocols ({eval_dir() / 'fvd'})")
    table.add_column("name", no_wrap=True)
    for column in ("N real", "N fake", "frames", "stride", "res.", "split"):
        table.add_column(column)
    for name in available_protocols():
        p = load_protocol(name)
        table.add_row(name, str(p.num_real), str(p.num_fake), str(p.num_frames), str(p.stride),
                      _fmt(p.resolution), _fmt(p.split))
    console.print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    runners = {"fvd": _run_fvd, "vbench": _run_vbench, "shapes": _run_shapes, "protocols": _run_protocols}
    try:
        return runners[args.command](args, console)
    except (FileNotFoundError, ValueError) as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
