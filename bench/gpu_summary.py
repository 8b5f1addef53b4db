"""Helpers of bench/gpu_check.sh: device facts, a random-weight tokenizer folder, and the ONE summary table.

    python bench/gpu_summary.py env --json WORK/env.json [--require-cuda]   # card, torch, matmul rate, MFU peak
    python bench/gpu_summary.py tokenizer-dir --config configs/tokenizer/videoar_folder_256_d48.yaml --out DIR
    python bench/gpu_summary.py table --work WORK --mode gpu|dry-run --results bench/RESULTS.md

``table`` reads what the steps of gpu_check.sh left in WORK (steps.tsv: name, exit code, seconds,
timeout; the benches' JSON files and logs), prints one table and replaces its own section of
bench/RESULTS.md ("gpu" or "dry-run"), keeping the other section, with an atomic write.  A step
that failed or timed out shows as FAILED in the table instead of a number.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

# Dense bf16 tensor-core peaks from the vendors' datasheets (no sparsity), TFLOP/s.  MFU is
# quoted against these; the measured 8192^3 matmul rate is shown beside it for context.
DATASHEET_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                         ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0))

GOAL_MFU = 0.40
GOAL_ATTN_RATIO = 1.0
GOAL_SAMPLE_S = 0.5

SECTION_TITLES = {"gpu": "Latest GPU run", "dry-run": "Latest CPU dry-run (NOT a GPU measurement)"}


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; RESULTS.md is an ordinary repo file
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- env

def datasheet_peak(name: str) -> float | None:
    for key, peak in DATASHEET_BF16_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def measure_matmul_tflops(device, n: int, dtype, iters: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def cmd_env(args) -> int:
    import torch

    cuda = torch.cuda.is_available()
    if args.require_cuda and not cuda:
        print("no CUDA device visible to torch", torch.__version__)
        return 3
    device = torch.device("cuda" if cuda else "cpu")
    info = {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "host": platform.node(), "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info["gpu_mem_gib"] = round(props.total_memory / 2**30, 1)
        info["driver"] = nvidia_driver()
        info["sms"] = props.multi_processor_count
        info["matmul"] = "bf16 8192^3"
        info["matmul_tflops"] = measure_matmul_tflops(device, 8192, torch.bfloat16)
        info["datasheet_tflops"] = datasheet_peak(info["device"])
    else:
        info["matmul"] = "fp32 512^3"
        info["matmul_tflops"] = measure_matmul_tflops(device, 512, torch.float32, iters=5)
        info["datasheet_tflops"] = None
    override = os.environ.get("PEAK_TFLOPS")
    # MFU denominator: an explicit override, else the datasheet peak, else (CPU, unknown cards) the measured matmul.
    if override:
        info["peak_tflops"], info["peak_source"] = float(override), "PEAK_TFLOPS"
    elif info["datasheet_tflops"]:
        info["peak_tflops"], info["peak_source"] = info["datasheet_tflops"], "datasheet dense bf16"
    else:
        info["peak_tflops"], info["peak_source"] = info["matmul_tflops"], f"measured {info['matmul']} matmul"
    Path(args.json).write_text(json.dumps(info, indent=1))
    for k, v in info.items():
        print(f"{k}: {v}")
    return 0


# ----------------------------------------------------------------------------- tokenizer folder

def cmd_tokenizer_dir(args) -> int:
    """Random-weight VideoTokenizer built from a shipped YAML config, saved for tokenizer_bench --model."""
    import torch
    import yaml

    from mmgen.tokenizer import VideoTokenizer

    cfg = yaml.safe_load(Path(args.config).read_text())
    try:
        kwargs = cfg["model"]["tokenizer"]
    except (KeyError, TypeError):
        raise SystemExit(f"{args.config}: no model.tokenizer section")
    torch.manual_seed(0)
    tok = VideoTokenizer(**(kwargs or {}))
    tok.save_pretrained(args.out)
    n = sum(p.numel() for p in tok.parameters())
    print(f"saved random-weight tokenizer from {args.config} ({n / 1e6:.1f}M parameters) to {args.out}")
    return 0


# ----------------------------------------------------------------------------- table

def read_steps(work: Path) -> dict[str, dict]:
    steps = {}
    path = work / "steps.tsv"
    if path.exists():
        for line in path.read_text().splitlines():
            name, rc, secs, limit = line.split("\t")
            steps[name] = {"rc": int(rc), "s": float(secs), "limit": int(limit)}
    return steps


def step_failure(steps: dict, name: str) -> str | None:
    """None when the step ran and exited 0, else why not (shown in the table)."""
    st = steps.get(name)
    if st is None:
        return "not run"
    if st["rc"] == 125:
        return "SKIPPED: time budget spent"
    if st["rc"] in (124, 137):
        return f"FAILED: timeout after {st['limit']} s"
    if st["rc"] != 0:
        return f"FAILED: exit {st['rc']} (see log {name}.log)"
    return None


def load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def verdict(ok: bool | None, mode: str) -> str:
    if mode != "gpu":
        return "n/a (CPU)"
    return "-" if ok is None else ("MEETS" if ok else "MISSES")


def rows_tests(work, steps, mode):
    xml = work / "cuda_tests.xml"
    why = step_failure(steps, "cuda_tests")
    counts = None
    if xml.exists():
        try:
            root = ET.parse(xml).getroot()
            suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
            total = sum(int(s.get("tests", 0)) for s in suites)
            failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
            skipped = sum(int(s.get("skipped", 0)) for s in suites)
            counts = (total - failed - skipped, failed, skipped)
        except ET.ParseError:
            counts = None
    if counts is None:
        return [("CUDA tests (pytest -m cuda)", "Flex vs SDPA bf16, cached vs full decoding",
                 why or "FAILED: no report", "all pass", "FAILED")]
    passed, failed, skipped = counts
    result = f"{passed} passed, {failed} failed, {skipped} skipped"
    if why and steps.get("cuda_tests", {}).get("rc") in (124, 137):
        result += f" ({why})"
    if mode == "gpu":
        status = "PASS" if failed == 0 and passed > 0 and not why else "FAILED"
    else:
        status = "ok (skipped: no CUDA)" if failed == 0 and not why else "FAILED"
    return [("CUDA tests (pytest -m cuda)", "Flex vs SDPA bf16, cached vs full decoding", result, "all pass",
             status)]


def rows_train(work, steps, mode):
    data = load_json(work / "train.json")
    why = step_failure(steps, "train")
    if not data or not data.get("rows"):
        return [("Training tokens/s, MFU", "", why or "FAILED: no result", f"MFU >= {GOAL_MFU:.0%}", "FAILED")]
    out = []
    dtype = "bf16 autocast" if mode == "gpu" else "fp32"
    for r in data["rows"]:
        backend = {"auto": "Flex" if mode == "gpu" else "SDPA"}.get(r["backend"], r["backend"])
        setting = f"{data['preset']}, {dtype}, {backend} attention, batch {r['batch']}"
        if r["status"] != "ok":
            out.append(("Training tokens/s, MFU", setting, "out of memory", f"MFU >= {GOAL_MFU:.0%}", "does not fit"))
            continue
        mfu = r.get("mfu")
        result = (f"{r['tokens_s']:,.0f} tokens/s ({r['L']} tok/seq, {r['step_s'] * 1e3:.0f} ms/step), "
                  f"{r['tflops']:.3g} TFLOP/s, MFU {'n/a' if mfu is None else f'{mfu:.1%}'}")
        if r.get("mem_gib") is not None and not math.isnan(r["mem_gib"]):
            result += f", {r['mem_gib']:.1f} GiB"
        out.append(("Training tokens/s, MFU", setting, result, f"MFU >= {GOAL_MFU:.0%}",
                    verdict(None if mfu is None else mfu >= GOAL_MFU, mode)))
    if why:
        out.append(("Training tokens/s, MFU", "remaining batch sizes", why, "", "FAILED"))
    return out


def rows_attention(work, steps, mode, name, label):
    data = load_json(work / f"{name}.json")
    why = step_failure(steps, name)
    if why or not data:
        return [(f"Block-causal attention ({label})", "", why or "FAILED: no result",
                 "flex <= dense Flash time", "FAILED")]
    by = {r["kernel"]: r for r in data["rows"]}
    flex, dense, sdpa = by.get("flex + block mask"), by.get("dense (no mask)"), by.get("sdpa + dense mask")
    setting = (f"L={data['L']} ({data['frames']} frames x scales {data['scales']}), B{data['batch']} "
               f"H{data['heads']} D{data['head_dim']}, {data['dtype'].replace('torch.', '')}, "
               f"{data['allowed_fraction']:.0%} of pairs allowed")
    result = (f"flex {flex['ms']:.3f} ms vs dense {'Flash' if mode == 'gpu' else 'SDPA'} {dense['ms']:.3f} ms "
              f"({flex['vs_dense']:.2f}x); SDPA+mask {sdpa['vs_dense']:.2f}x; "
              f"max abs(flex - sdpa) {data['max_abs_err_flex_vs_sdpa']:.1e}")
    return [(f"Block-causal attention ({label})", setting, result, "flex <= 1.00x dense Flash",
             verdict(flex["vs_dense"] <= GOAL_ATTN_RATIO, mode))]


SAMPLE_ROW = re.compile(r"^(\S+)\s+(recompute|kv-cache|\+decode)\s+(\d+)\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S+)\s*$")


def rows_sampling(work, steps, mode):
    """Parses bench/sample_bench.py's printed table (model, decoding, batch, steps, s/batch, s/video, ...)."""
    why = step_failure(steps, "sampling")
    log = work / "sampling.log"
    parsed = []
    if log.exists():
        for line in log.read_text().splitlines():
            m = SAMPLE_ROW.match(line.strip())
            if m:
                parsed.append({"model": m[1], "mode": m[2], "batch": int(m[3]), "steps": m[4],
                               "s_video": float(m[6]), "videos_s": float(m[7]), "speedup": m[8]})
    want = "videoar-l" if mode == "gpu" else "tiny"
    rows = [r for r in parsed if r["model"] == want and r["mode"] == "kv-cache"]
    if not rows:
        return [("Sampling latency per video", "", why or f"FAILED: no {want} rows in sampling.log",
                 f"<= {GOAL_SAMPLE_S} s/video at batch 1", "FAILED")]
    recompute = {r["batch"]: r for r in parsed if r["model"] == want and r["mode"] == "recompute"}
    shape = ("L preset, 5x8x8 latents, 6 scales = 30 groups, CFG 3, bf16 KV cache" if want == "videoar-l"
             else "tiny, 5 frames x scales 1/2/4/8, CFG 3, fp32")
    out = []
    for r in rows:
        result = f"{r['s_video']:.3f} s/video ({r['videos_s']:.2f} videos/s, {r['steps']} steps)"
        if r["batch"] in recompute:
            result += f"; recompute {recompute[r['batch']]['s_video']:.3f} s/video ({r['speedup']} cache speed-up)"
        goal_ok = r["s_video"] <= GOAL_SAMPLE_S if r["batch"] == 1 else None
        out.append(("Sampling latency per video", f"{shape}, batch {r['batch']}", result,
                    f"<= {GOAL_SAMPLE_S} s/video at batch 1" if r["batch"] == 1 else "",
                    verdict(goal_ok, mode)))
    if why:
        out.append(("Sampling latency per video", "remaining rows", why, "", "FAILED"))
    return out


def rows_tokenizer(work, steps, mode):
    meta = load_json(work / "tokenizer_meta.json") or {}
    setting = f"{meta.get('config', '?')} (random weights), {meta.get('size', '?')}x{meta.get('size', '?')}x{meta.get('frames', '?')}, batch 1"
    out = []
    for name, label in (("tokenizer_decode_full", "fp32 decode"), ("tokenizer_decode_fast", "fast_decode (bf16, channels-last-3d)")):
        if name not in steps and mode != "gpu" and name.endswith("fast"):
            continue  # fast_decode is a CUDA path; the dry-run times only the plain decode
        why = step_failure(steps, "tokenizer_prepare") or step_failure(steps, name)
        data = load_json(work / f"{name}.json")
        if why or not data:
            out.append((f"Tokenizer {label}", setting, why or "FAILED: no result", "", "FAILED"))
            continue
        out.append((f"Tokenizer {label}", setting,
                    f"{1000 / data['ms']:.2f} clips/s ({data['ms']:.1f} ms/clip, peak {data['peak_mb']:.0f} MB)",
                    "", "-" if mode == "gpu" else "n/a (CPU)"))
    return out


def render(rows) -> str:
    head = ("check", "setting", "result", "goal", "status")
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines)


def update_results(path: Path, mode: str, body: str) -> None:
    """Replace this mode's section of RESULTS.md; keep the other mode's section as it was."""
    sections = {}
    if path.exists():
        for m in re.finditer(r"<!-- gpu-check:(\S+):begin -->\n(.*?)<!-- gpu-check:\1:end -->", path.read_text(), re.S):
            sections[m[1]] = m[2]
    sections[mode] = body
    gpu_ran = "gpu" in sections
    intro = ["# mmgen GPU check results", "",
             "Written by `bench/gpu_check.sh` (one script, one call on one H100/H200, under 5 minutes;",
             "see its header for the exact command).  Goals from issue 8: training MFU >= 40% (VideoAR-L,",
             "bf16), block-causal attention at most as slow as dense FlashAttention at L ~ 9k,",
             "sampling <= 0.5 s per 5x8x8 video at batch 1 (VideoAR-L).", "",
             "Run it: `bash bench/prepare_gpu_wheels.sh` here (diffusers wheel into the ignored .whl/), then",
             "one device call `bash bench/gpu_check.sh` with carry `.whl` and timeout_s 420; copy the",
             "RESULTS.md it returns under $OUT over this file.  `bash bench/gpu_check.sh --dry-run` runs",
             "the same steps on tiny CPU shapes.", ""]
    if not gpu_ran:
        intro += ["**The GPU check has NOT run on a GPU yet** (no device machine was lent to the task that",
                  "wrote this script).  The table below is only the CPU dry-run of the same script on tiny",
                  "shapes: it shows the script works end to end, its numbers say nothing about GPU speed.", ""]
    text = "\n".join(intro)
    for key in ("gpu", "dry-run"):
        if key in sections:
            text += f"\n<!-- gpu-check:{key}:begin -->\n{sections[key]}<!-- gpu-check:{key}:end -->\n"
    write_text_atomic(path, text)


def cmd_table(args) -> int:
    work = Path(args.work)
    steps = read_steps(work)
    env = load_json(work / "env.json") or {}
    mode = args.mode
    rows = rows_tests(work, steps, mode)
    rows += rows_train(work, steps, mode)
    rows += rows_attention(work, steps, mode, "attention_fwd", "forward")
    if "attention_fwdbwd" in steps:
        rows += rows_attention(work, steps, mode, "attention_fwdbwd", "forward+backward")
    rows += rows_sampling(work, steps, mode)
    rows += rows_tokenizer(work, steps, mode)
    total = sum(s["s"] for s in steps.values())
    failed = [n for n in steps if step_failure(steps, n)]
    title = SECTION_TITLES[mode]
    header = [f"## {title}", "",
              f"- card: {env.get('device', 'unknown (env step failed)')}"
              + (f", {env['gpu_mem_gib']} GiB, {env['sms']} SMs, driver {env.get('driver')}" if "sms" in env else ""),
              f"- date: {env.get('date_utc', datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}",
              f"- torch {env.get('torch', '?')}, CUDA {env.get('cuda')}, Python {env.get('python', platform.python_version())}",
              f"- {env.get('matmul', 'matmul')} measured: {env.get('matmul_tflops', float('nan')):.3g} TFLOP/s; "
              f"MFU denominator: {env.get('peak_tflops', float('nan')):.4g} TFLOP/s ({env.get('peak_source', '?')})",
              f"- steps: {len(steps) - len(failed)} of {len(steps)} ok, {total:.0f} s in all"
              + (f"; failed or skipped: {', '.join(failed)}" if failed else ""),
              f"- command: `{args.command}`", ""]
    body = "\n".join(header) + "\n" + render(rows) + "\n\n"
    print("\n".join(header))
    print(render(rows))
    if args.results:
        update_results(Path(args.results), mode, body)
        print(f"\nwrote {args.results} ({mode} section)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="device facts, measured matmul rate and the MFU peak -> JSON")
    e.add_argument("--json", required=True)
    e.add_argument("--require-cuda", action="store_true", help="exit 3 when no CUDA device is visible")
    t = sub.add_parser("tokenizer-dir", help="save a random-weight tokenizer built from a YAML config")
    t.add_argument("--config", required=True)
    t.add_argument("--out", required=True)
    s = sub.add_parser("table", help="print the summary table and update RESULTS.md")
    s.add_argument("--work", required=True)
    s.add_argument("--mode", choices=("gpu", "dry-run"), required=True)
    s.add_argument("--results", default=None)
    s.add_argument("--command", default="bash bench/gpu_check.sh")
    args = p.parse_args(argv)
    return {"env": cmd_env, "tokenizer-dir": cmd_tokenizer_dir, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
