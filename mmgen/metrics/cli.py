"""`mmgen eval fvd | vbench | shapes | protocols`: print a table, write a JSON record.

Each command imports its modules when it runs, so `mmgen eval --help` stays fast.
Expected errors (missing or corrupt files, too few videos, foreign statistics, an output
that cannot be written) print one line ``mmgen eval CMD: error: ...`` and exit 2
(``--debug`` shows the traceback). Folder commands score every readable video, name each
skipped one on its own line with the reason, print the counts, and exit 1 only with
``--strict`` when something was skipped (nothing scorable at all is an error).

Skipped videos are reported by `_report_batch` (stdout, with the per-set counts) rather
than `mmgen.cli_utils.run_batch`: scoring streams clips into batched feature extraction, so
the skips come back from the scorers as records, not as per-item exceptions.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mmgen import cli_utils
from mmgen.cli_utils import add_strict_flag

PROG = "mmgen eval"


EXTRACTORS = ("i3d", "efficientnet-lite0")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    batch = argparse.ArgumentParser(add_help=False)
    add_strict_flag(batch)
    parser = argparse.ArgumentParser(prog=PROG, description="Evaluate generated videos.")
    sub = parser.add_subparsers(dest="command", required=True)

    fvd = sub.add_parser("fvd", help="Fréchet Video Distance under a named protocol", parents=[common, batch],
                         description="FVD of --fake against --real (a folder, or an .npz of saved statistics).")
    fvd.add_argument("--real", required=True, type=Path, help="real videos folder or statistics .npz")
    fvd.add_argument("--fake", type=Path, help="generated videos folder (omit to only compute/save real statistics)")
    fvd.add_argument("--protocol", required=True, help="preset name (see `mmgen eval protocols`) or YAML path")
    fvd.add_argument("--extractor", choices=EXTRACTORS, default="i3d",
                     help="i3d (FVD; default) or efficientnet-lite0: a PROXY from per-frame ImageNet features "
                          "(pip packages, no download), reported as a proxy, never as FVD")
    fvd.add_argument("--i3d", type=Path, default=None, help="I3D weights (default: $MMGEN_I3D_PATH)")
    fvd.add_argument("--i3d-input-scale", type=float, default=1.0, choices=(1.0, 0.5),
                     help="state-dict I3D only: feed [-1, 1] (default; TATS) or [-0.5, 0.5] (VideoGPT's code)")
    fvd.add_argument("--allow-small", action="store_true",
                     help="compute with fewer generated videos than the protocol needs (the result carries a "
                          "warning; a smaller real set is always used whole, as StyleGAN-V does)")
    fvd.add_argument("--real-list", type=Path, default=None,
                     help="file listing the real videos (relative to --real), e.g. UCF-101 trainlist01.txt")
    fvd.add_argument("--batch-size", type=int, default=8)
    fvd.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    fvd.add_argument("--cache-dir", type=Path, default=None,
                     help="real-statistics cache (default: $MMGEN_CACHE_DIR/fvd or ~/.cache/mmgen/fvd)")
    fvd.add_argument("--save-real-stats", type=Path, default=None, help="also write the real statistics here (.npz)")
    fvd.add_argument("--out", type=Path, default=None,
                     help="result JSON (default: FAKE/mmgen_eval_fvd_PROTOCOL.json, or "
                          "FAKE/mmgen_eval_fvdproxy_EXTRACTOR_PROTOCOL.json for a proxy)")

    vb = sub.add_parser("vbench", help="VBench dimensions mmgen implements, and VBench's aggregation",
                        parents=[common, batch],
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
    vb.add_argument("--scores-file", type=Path, default=None,
                    help="per-video scores, appended as computed and reused by the next run "
                         "(default: OUT with .scores.jsonl)")

    sh = sub.add_parser("shapes", help="analytic MovingShapes prompt-adherence benchmark (no weights)",
                        parents=[common, batch])
    sh.add_argument("--videos", required=True, type=Path,
                    help="folder with manifest.jsonl (mmgen data synth) or <name>.json sidecars (mmgen sample)")
    sh.add_argument("--out", type=Path, default=None, help="result JSON (default: VIDEOS/mmgen_eval_shapes.json)")

    sub.add_parser("protocols", help="list the FVD protocol presets", parents=[common])
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


def _check_writable(path: Path) -> None:
    """Fail before hours of scoring, not after, when the result cannot be written."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {str(path)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"cannot write {str(path)!r}: no write permission; choose another --out")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a folder; give a file name to --out")


def _report_batch(console: Console, what: str, n_ok: int, skipped: list[dict], strict: bool) -> int:
    """One line per skipped item with its reason, the counts, and the exit status."""
    for item in skipped:
        detail = f" ({item['detail']})" if item.get("detail") else ""
        console.print(f"skipped {item['file']}: {item['reason']}{detail}", markup=False, highlight=False,
                      soft_wrap=True)
    console.print(f"{what}: {n_ok} scored, {len(skipped)} skipped")
    return 1 if strict and skipped else 0


def _load_extractor(args):
    if args.extractor == "efficientnet-lite0":
        if args.i3d is not None or args.i3d_input_scale != 1.0:
            raise ValueError("--i3d and --i3d-input-scale apply to --extractor i3d only")
        from mmgen.metrics.efficientnet import EfficientNetLite0

        return EfficientNetLite0(_device(args.device))
    from mmgen.metrics.i3d import load_i3d

    return load_i3d(args.i3d, _device(args.device), args.i3d_input_scale)


def _run_fvd(args, console: Console) -> int:
    from mmgen.metrics.fvd import compute_set_stats, evaluate_fvd, save_real_stats
    from mmgen.metrics.protocols import load_protocol
    from mmgen.metrics.results import write_json_atomic

    protocol = load_protocol(args.protocol)
    if args.fake is None and args.save_real_stats is None:
        raise ValueError("give --fake to compute FVD, or --save-real-stats PATH to only compute real statistics")
    proxy = args.extractor != "i3d"
    out = None
    if args.fake is not None:
        name = f"fvdproxy_{args.extractor}_{protocol.name}" if proxy else f"fvd_{protocol.name}"
        out = args.out or args.fake / f"mmgen_eval_{name}.json"
        _check_writable(out)
    if args.save_real_stats is not None:
        _check_writable(args.save_real_stats)
    extractor = _load_extractor(args)
    if args.fake is None:
        stats, warnings = compute_set_stats(args.real, protocol, extractor, protocol.num_real, "real",
                                            args.allow_small, args.batch_size, args.real_list)
        save_real_stats(args.save_real_stats, stats, protocol, extractor.info.as_dict())
        for warning in warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        code = _report_batch(console, "real", stats.stats.count, stats.skipped.get("files", []), args.strict)
        console.print(f"saved statistics of {stats.stats.count} real clips ({protocol.key}) to {args.save_real_stats}")
        return code
    result = evaluate_fvd(args.real, args.fake, protocol, extractor, args.allow_small, args.batch_size,
                          args.real_list, args.cache_dir, args.save_real_stats)
    write_json_atomic(out, result)
    kind = result["extractor"]["kind"]
    title = (f"PROXY Fréchet distance ({kind} features; not FVD) — protocol {protocol.name}" if proxy
             else f"FVD — protocol {protocol.name}")
    table = Table(title=title)
    for column in ("proxy FD" if proxy else "FVD", "N real", "N fake", "frames", "stride", "resolution", "split",
                   "extractor"):
        table.add_column(column)
    res = result["resolution"]
    table.add_row(
        f"{result['fvd']:.2f}", str(result["n_real"]), str(result["n_fake"]), str(result["frames"]),
        str(result["stride"]), str(res["protocol"] or f"real {res['real']} / fake {res['fake']}"),
        str(result["split"]), f"{kind} {result['extractor']['sha256'][:12]}",
    )
    console.print(table)
    code = 0
    for role in ("real", "fake"):
        record = result[role]
        code |= _report_batch(console, role, record["n"], record["skipped"].get("files", []), args.strict)
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"wrote {out}")
    return code


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
        status = record["status"]
        if status == "unsupported":
            status = f"unsupported (needs {BY_NAME[name].model})"
        elif record.get("caveat"):
            status += " (see note)"
        table.add_row(name, BY_NAME[name].category, _fmt(record.get("score")), _fmt(normalized.get(name)), status)
    console.print(table)
    for name, record in result["dimensions"].items():
        if record.get("caveat"):
            console.print(f"note on {name}: {record['caveat']}", soft_wrap=True)
    agg = result["aggregate"]
    for key in ("quality", "semantic"):
        missing = agg[f"{key}_missing"]
        note = f"  (not computed: missing {', '.join(missing)})" if missing else ""
        console.print(f"{key.capitalize()} score: {_fmt(agg[key])}{note}")
    console.print(f"Total score: {_fmt(agg['total'])}")


def _run_vbench(args, console: Console) -> int:
    from mmgen.metrics.results import write_json_atomic
    from mmgen.metrics.vbench import aggregate, evaluate_folder, load_preset, load_vbench_results

    if args.aggregate is not None:
        raw = load_vbench_results(args.aggregate)
        out = args.out or args.aggregate.with_name(args.aggregate.stem + "_mmgen_aggregate.json")
        _check_writable(out)
        result = {"metric": "vbench", "source": str(args.aggregate),
                  "dimensions": {name: {"status": "given", "score": value} for name, value in raw.items()},
                  "aggregate": aggregate(raw)}
        write_json_atomic(out, result)
        _vbench_table(result, console)
        console.print(f"wrote {out}")
        return 0
    if args.preset and args.dims:
        raise ValueError("give --dims or --preset, not both")
    dims = load_preset(args.preset) if args.preset else _expand_dims(args.dims or ["all"])
    out = args.out or args.videos / "mmgen_eval_vbench.json"
    scores_file = args.scores_file or out.with_suffix(".scores.jsonl")
    _check_writable(out)
    _check_writable(scores_file)
    result = evaluate_folder(args.videos, dims, args.dino, _device(args.device), scores_file)
    if result["n_videos"] == 0 and result["skipped"]["skipped"]:
        first = result["skipped"]["files"][0]
        raise ValueError(f"no scorable videos in {str(args.videos)!r} ({result['skipped']['skipped']} skipped; "
                         f"e.g. {first['file']}: {first['detail'] or first['reason']})")
    write_json_atomic(out, result)
    _vbench_table(result, console)
    code = _report_batch(console, "videos", result["n_videos"], result["skipped"]["files"], args.strict)
    console.print(f"wrote {out} (per-video scores: {scores_file})")
    return code


def _run_shapes(args, console: Console) -> int:
    from mmgen.metrics.results import write_json_atomic
    from mmgen.metrics.shapes import evaluate_folder

    out = args.out or args.videos / "mmgen_eval_shapes.json"
    _check_writable(out)
    result = evaluate_folder(args.videos)
    write_json_atomic(out, result)
    table = Table(title=f"MovingShapes benchmark — {result['n_videos']} videos")
    table.add_column("metric")
    table.add_column("mean")
    table.add_column("videos")
    for name, entry in result["summary"].items():
        table.add_row(name, _fmt(entry["mean"]), str(entry["n"]))
    console.print(table)
    code = _report_batch(console, "videos", result["n_videos"], result["skipped"], args.strict)
    console.print(f"wrote {out}")
    return code


def _run_protocols(args, console: Console) -> int:
    from mmgen.metrics.protocols import available_protocols, eval_dir, load_protocol

    table = Table(title=f"FVD protocols ({eval_dir() / 'fvd'})")
    table.add_column("name", no_wrap=True)
    for column in ("N real", "N fake", "frames", "stride", "min len", "res.", "split", "start real/fake"):
        table.add_column(column)
    for name in available_protocols():
        p = load_protocol(name)
        table.add_row(name, str(p.num_real), str(p.num_fake), str(p.num_frames), str(p.stride), str(p.window),
                      _fmt(p.resolution), _fmt(p.split), f"{p.clip}/{p.fake_clip}")
    console.print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    runners = {"fvd": _run_fvd, "vbench": _run_vbench, "shapes": _run_shapes, "protocols": _run_protocols}
    try:
        return runners[args.command](args, console)
    except (OSError, ValueError) as err:  # missing/corrupt/unwritable files, bad input
        if args.debug or cli_utils.DEBUG:  # `mmgen --debug` is taken off the arguments by the dispatcher
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
