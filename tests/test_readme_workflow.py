"""README "Train on your own videos": train -> export -> sample, run exactly as written (a few steps).

Slow: two tiny trainings. The commands are read from README.md, so the README cannot drift from
what works; only step- and data-size flags are appended to make them short.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SHORT = {  # appended to the README's command to make it quick; the command itself is unchanged
    "tokenizer fit": ["--trainer.max_steps", "2", "--data.init_args.num_train", "8", "--data.init_args.num_val", "2"],
    "ar fit": ["--trainer.max_steps", "2", "--data.train.init_args.num_samples", "8"],
}


def readme_workflow() -> list[list[str]]:
    """The `mmgen` commands of the README's train -> export -> sample block, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Train on your own videos", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("mmgen "):
            commands.append(shlex.split(line))
    return commands


def test_readme_train_export_sample(tmp_path):
    commands = readme_workflow()
    wanted = ["tokenizer fit", "tokenizer export", "ar fit", "ar export", "sample"]
    assert [" ".join(c[1:3]) if c[1] != "sample" else "sample" for c in commands
            if " ".join(c[1:3]) in wanted or c[1] == "sample"] == wanted
    os.symlink(ROOT / "configs", tmp_path / "configs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    for argv in commands:
        key = " ".join(argv[1:3])
        if key not in wanted and argv[1] != "sample":
            continue  # reconstruct / tokenize / the multi-GPU line need data or GPUs the test has not
        proc = subprocess.run([sys.executable, "-m", "mmgen.cli", *argv[1:], *SHORT.get(key, [])], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-4000:])
    out = re.search(r"--out (\S+)", " ".join(commands[-1])).group(1)
    videos = list((tmp_path / out).glob("*.mp4"))
    assert videos and all(v.with_suffix(".json").is_file() for v in videos)
