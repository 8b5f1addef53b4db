"""Speed of the whole: CLI start-up, cached decoding vs matmul, training vs a nanoGPT block,
tokenizer decode batch 8 vs 1, and time per frame over a long windowed video — ratios only,
each against a baseline measured in the same run (the machine is shared; absolute times drift).

    OMP_NUM_THREADS=1 python bench/speed_bench.py [--repeats 3]

Every row is measured ``--repeats`` times, interleaved with its baseline, and printed as the
median ratio with the (min..max) spread. Everything runs on CPU, one thread (the per-process
setting of the issue this answers). Rows and goals:

* ``sample / import torch``: wall time of ``mmgen sample`` of one default video (17 frames,
  shipped model) over a bare ``python -c "import torch"``, both as fresh processes. Goal <= 1.3x.
* ``cached decoding / matmul, batch B``: model FLOP/s of KV-cached token sampling
  (``sample_codes`` with the shipped generator, CFG on so 2B rows; FLOPs from mmgen.ar.flops,
  attention over the allowed pairs only) over the FLOP/s of one fp32 matmul of the model's
  widest layer on 1024 tokens ([1024, width] @ [width, hidden]). Goals >= 0.40 (B=1), >= 0.65 (B=8).
  A second row per batch divides by the FLOP/s of the decode's own matmuls run bare (the same
  [rows x group tokens, width] products, group by group, with nothing else): the share of the
  attainable rate at these small shapes that dispatch and the other ops leave.
* ``train FLOP/s / nanoGPT``: a VideoAR training step (forward, BCE, backward, AdamW) against a
  nanoGPT-style model (LayerNorm, one qkv Linear, causal SDPA, GELU MLP) of the same width,
  depth and sequence length; achieved model FLOP/s of each (6N + attention). Goal >= 0.9x.
* ``tokenizer decode / clip, b8 / b1``: the shipped tokenizer's default ``decode``, time per clip
  at batch 8 over batch 1. Goal <= 1.0x.
* ``last / first frame step``: a windowed generator (the shipped shape, ``frame_window=2``, random
  weights) samples 65 latent frames (= 257 video frames); mean time of frames 1-5 vs the last 5.
  Goal <= 1.1x.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchutil import median_seconds

from mmgen.ar.flops import forward_flops
from mmgen.ar.model import VideoAR
from mmgen.ar.sampling import SamplerSettings, sample_codes

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "mmgen" / "assets" / "default"
CPU = torch.device("cpu")
PROMPT = "a red circle moving right"


# --------------------------------------------------------------------------- start-up
def _wall(cmd: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def startup_ratio() -> float:
    with tempfile.TemporaryDirectory() as out:
        torch_s = _wall([sys.executable, "-c", "import torch"])
        sample_s = _wall([sys.executable, "-m", "mmgen.cli", "sample", "--prompt", PROMPT, "--num-frames", "17",
                          "--out", out, "--no-progress", "--device", "cpu"])
    return sample_s / torch_s


# --------------------------------------------------------------------------- decoding vs matmul
def matmul_flops_per_s(width: int, hidden: int) -> float:
    a, b = torch.randn(1024, width), torch.randn(width, hidden)
    t = median_seconds(lambda: a @ b, CPU, iters=20, warmup=3)
    return 2 * 1024 * width * hidden / t


def group_matmuls_flops_per_s(model: VideoAR, batch: int) -> float:
    """FLOP/s of the decode's projections as bare matmuls, group by group (2*batch rows, CFG)."""
    c = model.config
    hidden = model.blocks[0].mlp.down_proj.in_features
    sizes = [model.prefix_len] + [h * w for h, w in model.scales] * c.num_frames
    shapes = [(c.width, 3 * c.width), (c.width, c.width), (c.width, 2 * hidden), (hidden, c.width)]
    weights = [torch.randn(i, o) for i, o in shapes]
    xs = {n: torch.randn(2 * batch * n, max(c.width, hidden)) for n in set(sizes)}

    def run():
        for n in sizes:
            x = xs[n]
            for _ in range(c.depth):
                for w in weights:
                    x[:, :w.shape[0]] @ w

    t = median_seconds(run, CPU, iters=3, warmup=1)
    flops = sum(2 * 2 * batch * n * c.depth * sum(i * o for i, o in shapes) for n in sizes)
    return flops / t


def decoding_flops_per_s(model: VideoAR, quantizer, batch: int) -> float:
    settings = SamplerSettings(guidance=3.0)
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    t = median_seconds(lambda: sample_codes(model, quantizer, [PROMPT] * batch, model.config.num_frames,
                                            settings, gens, keep_codes=False), CPU, iters=2, warmup=1)
    return 2 * batch * forward_flops(model.config)["total"] / t


# --------------------------------------------------------------------------- training vs nanoGPT
class NanoBlock(nn.Module):
    """nanoGPT's block: LayerNorm, one qkv Linear, causal SDPA, GELU MLP (4x), no biases."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width, bias=False), nn.LayerNorm(width, bias=False)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.fc, self.out = nn.Linear(width, 4 * width, bias=False), nn.Linear(4 * width, width, bias=False)

    def forward(self, x):
        B, L, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, L, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


def _train_step_seconds(model: nn.Module, step_fn) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        step_fn().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return median_seconds(step, CPU, iters=3, warmup=1)


def train_ratio(config: dict, batch: int = 2) -> float:
    torch.manual_seed(0)
    model = VideoAR(**config).train()
    layout = model.layout()
    inputs = [torch.randn(batch, layout.num_frames, h, w, config["bits"]) for h, w in layout.scales]
    target = (torch.rand(batch, layout.num_visual, config["bits"]) > 0.5).float()
    cond = [PROMPT] * batch
    t_ar = _train_step_seconds(model, lambda: F.binary_cross_entropy_with_logits(model(cond, inputs), target))
    ar_flops = batch * 3 * forward_flops(model.config)["total"]

    W, D, L = config["width"], config["depth"], layout.length
    nano = nn.Sequential(*[NanoBlock(W, config["heads"]) for _ in range(D)]).train()
    x = torch.randn(batch, L, W)
    t_nano = _train_step_seconds(nano, lambda: nano(x).square().mean())
    n_params = sum(p.numel() for p in nano.parameters() if p.ndim == 2)
    nano_flops = batch * (6 * n_params * L + 3 * 2 * D * 2 * W * L * (L + 1) / 2)
    return (ar_flops / t_ar) / (nano_flops / t_nano)


# --------------------------------------------------------------------------- tokenizer batch
def tokenizer_ratio(tokenizer) -> float:
    d = tokenizer.config.latent_dim
    h = tokenizer.config.sample_size // tokenizer.spatial_compression
    t = tokenizer.latent_frames(tokenizer.config.num_frames)
    per_clip = {}
    for b in (1, 8):
        z = torch.randn(b, d, t, h, h)
        with torch.no_grad():
            per_clip[b] = median_seconds(lambda: tokenizer.decode(z), CPU, iters=3, warmup=1) / b
    return per_clip[8] / per_clip[1]


# --------------------------------------------------------------------------- long windowed video
def frame_step_ratio(config: dict, quantizer, latent_frames: int = 65, edge: int = 5) -> float:
    torch.manual_seed(0)
    model = VideoAR(**{**config, "frame_window": 2}).eval()
    stamps = []
    sample_codes(model, quantizer, [PROMPT], latent_frames, SamplerSettings(guidance=3.0),
                 [torch.Generator().manual_seed(0)], keep_codes=False,
                 on_frame=lambda t, codes: stamps.append(time.perf_counter()))
    steps = [b - a for a, b in zip(stamps, stamps[1:])]  # frame t's time = stamps[t] - stamps[t-1]
    return statistics.mean(steps[-edge:]) / statistics.mean(steps[:edge])


# --------------------------------------------------------------------------- main
def _fmt(values: list[float], pct: bool = False) -> str:
    med, lo, hi = statistics.median(values), min(values), max(values)
    if pct:
        return f"{med:6.1%} ({lo:.1%}..{hi:.1%})"
    return f"{med:6.2f}x ({lo:.2f}..{hi:.2f})"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-startup", action="store_true", help="skip the subprocess start-up row")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from mmgen.pipelines import VideoARPipeline

    pipe = VideoARPipeline.from_pretrained(str(DEFAULT))
    model, tokenizer, quantizer = pipe.transformer.eval(), pipe.tokenizer.eval(), pipe.tokenizer.quantizer
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    hidden = int(-(-config["mlp_ratio"] * config["width"] // 64) * 64)

    rows: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        if not args.skip_startup:
            rows.setdefault("sample / import torch (goal <= 1.3x)", []).append(startup_ratio())
        mm = matmul_flops_per_s(config["width"], hidden)
        for b, goal in ((1, 40), (8, 65)):
            dec = decoding_flops_per_s(model, quantizer, b)
            rows.setdefault(f"cached decoding / matmul, batch {b} (goal >= {goal}%)", []).append(dec / mm)
            rows.setdefault(f"cached decoding / same-shape matmuls, batch {b}", []).append(
                dec / group_matmuls_flops_per_s(model, b))
        rows.setdefault("train FLOP/s / nanoGPT (goal >= 0.9x)", []).append(train_ratio(config))
        rows.setdefault("tokenizer decode / clip, b8 / b1 (goal <= 1.0x)", []).append(tokenizer_ratio(tokenizer))
        rows.setdefault("last / first frame step, 257 frames, window 2 (goal <= 1.1x)", []).append(
            frame_step_ratio(config, quantizer))

    print(f"speed benchmark, cpu, 1 thread, torch {torch.__version__}, {args.repeats} repeats: median (min..max)")
    for name, values in rows.items():
        print(f"  {name:<62} {_fmt(values, pct='matmul' in name)}")


if __name__ == "__main__":
    main()
