"""Multi-process training (DDP, 2 CPU processes over gloo) finishes, writes its checkpoint and resumes.

Slow: each run starts two Python processes. `mmgen ... fit` is started as a subprocess, as a user
would, so Lightning's launcher re-runs the same command for rank 1.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


def _run(args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mmgen.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _ckpts(run: Path) -> list[Path]:
    return sorted(run.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)


def test_ar_fit_ddp_finishes_writes_and_resumes(tmp_path):
    from test_ar_training import GEN, TOK

    run = tmp_path / "run"
    cfg = {
        "seed_everything": 0,
        "model": {"preset": None, "generator": GEN, "tokenizer_config": TOK, "warmup_steps": 2, "ema_decay": 0.9},
        "data": {"train": {"class_path": "mmgen.data.MovingShapes",
                           "init_args": {"num_samples": 8, "size": 32, "num_frames": 5}}, "batch_size": 2},
        "trainer": {"max_steps": 4, "default_root_dir": str(run), "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    # plots every 2 steps: on the old code rank 0 alone asked for trainer.log_dir (a
                    # collective) there, and the run hung
                    "callbacks": [{"class_path": "mmgen.ar.callbacks.LossCurve", "init_args": {"every_n_steps": 2}}],
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}}},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _run(["ar", "fit", "--config", str(path), *DDP])
    last = _ckpts(run)[-1]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4
    assert (last.parents[1] / "loss_curve.png").is_file()
    _run(["ar", "fit", "--config", str(path), *DDP, "--trainer.max_steps", "6", "--ckpt_path", str(last)])
    resumed = _ckpts(run)[-1]
    assert resumed != last and torch.load(resumed, map_location="cpu", weights_only=True)["global_step"] == 6


def test_tokenizer_fit_with_gan_ddp_finishes_writes_and_resumes(tmp_path):
    from test_tokenizer_cli import _config

    run = tmp_path / "run"
    cfg = _config(run, 3, gan_weight=1.0)
    cfg["model"]["gan_start_step"] = 2  # steps 0-1 leave the discriminator unused, then both train
    cfg["trainer"].pop("devices")
    cfg["data"]["init_args"]["num_train"] = 4  # one full batch of 2 per rank (the loader drops partial ones)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _run(["tokenizer", "fit", "--config", str(path), *DDP])
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 and any(k.startswith("discriminator.") for k in state["state_dict"])
    cfg["trainer"]["max_steps"] = 4
    path.write_text(yaml.safe_dump(cfg))
    _run(["tokenizer", "fit", "--config", str(path), *DDP, "--ckpt_path", str(last)])
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4
