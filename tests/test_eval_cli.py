"""`mmgen eval fvd | vbench | shapes | protocols` end to end on tiny folders."""
import json

import pytest
import torch

from mmgen.data.cli import main as data_main
from mmgen.io import write_video
from mmgen.metrics.cli import main

# The reference I3D exists only as TorchScript; its deprecation warnings are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


class _StubI3D(torch.nn.Module):
    """TorchScript stand-in with the reference I3D's call signature and 400-d output."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Parameter(torch.randn(3 * 2 * 4 * 4, 400, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        y = x.float()
        if rescale:
            y = y / 127.5 - 1.0
        return torch.nn.functional.adaptive_avg_pool3d(y, [2, 4, 4]).flatten(1) @ self.proj


@pytest.fixture()
def stub_i3d(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_StubI3D()).save(str(path))
    return path


def _folder(path, n, seed):
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        write_video(path / f"{i}.mp4", torch.randint(0, 256, (8, 32, 32, 3), generator=g, dtype=torch.uint8))
    return path


def test_fvd_command_writes_a_complete_record(tmp_path, stub_i3d, capsys):
    real, fake = _folder(tmp_path / "real", 4, 0), _folder(tmp_path / "fake", 4, 1)
    protocol = tmp_path / "tiny.yaml"
    protocol.write_text("num_real: 4\nnum_fake: 4\nnum_frames: 4\nstride: 2\n")
    out = tmp_path / "fvd.json"
    code = main(["fvd", "--real", str(real), "--fake", str(fake), "--protocol", str(protocol), "--i3d",
                 str(stub_i3d), "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--device", "cpu"])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["protocol"] == "tiny" and record["n_real"] == 4 and record["n_fake"] == 4
    assert record["extractor"]["kind"] == "i3d_torchscript" and len(record["extractor"]["sha256"]) == 64
    assert record["fvd"] > 0
    assert "FVD" in capsys.readouterr().out

    # Too few videos: an error naming the counts; --allow-small turns it into a warning.
    protocol.write_text("num_real: 4\nnum_fake: 9\nnum_frames: 4\n")
    assert main(["fvd", "--real", str(real), "--fake", str(fake), "--protocol", str(protocol), "--i3d",
                 str(stub_i3d), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "has 4 videos; protocol 'tiny' needs 9" in capsys.readouterr().err
    assert main(["fvd", "--real", str(real), "--fake", str(fake), "--protocol", str(protocol), "--i3d",
                 str(stub_i3d), "--cache-dir", str(tmp_path / "cache"), "--allow-small", "--out", str(out)]) == 0
    assert any("--allow-small" in w for w in json.loads(out.read_text())["warnings"])


def test_fvd_command_real_stats_only_and_reuse(tmp_path, stub_i3d):
    real, fake = _folder(tmp_path / "real", 3, 0), _folder(tmp_path / "fake", 3, 1)
    protocol = tmp_path / "p.yaml"
    protocol.write_text("num_real: 3\nnum_fake: 3\nnum_frames: 8\n")
    stats = tmp_path / "real.npz"
    assert main(["fvd", "--real", str(real), "--protocol", str(protocol), "--i3d", str(stub_i3d),
                 "--save-real-stats", str(stats)]) == 0
    out = tmp_path / "r.json"
    assert main(["fvd", "--real", str(stats), "--fake", str(fake), "--protocol", str(protocol), "--i3d",
                 str(stub_i3d), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["real"]["stats_file"] == str(stats)


def test_fvd_command_missing_weights_names_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MMGEN_I3D_PATH", raising=False)
    real = _folder(tmp_path / "real", 1, 0)
    assert main(["fvd", "--real", str(real), "--fake", str(real), "--protocol", "fvd2048_16f"]) == 2
    err = capsys.readouterr().err
    assert "i3d_torchscript.pt" in err and "MMGEN_I3D_PATH" in err


def test_vbench_command_scores_flicker_and_reports_the_rest(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MMGEN_DINO_PATH", raising=False)
    videos = tmp_path / "videos"
    write_video(videos / "still.mp4", torch.full((6, 32, 32, 3), 90, dtype=torch.uint8))
    (videos / "bad.mp4").write_bytes(b"nope")
    out = tmp_path / "vb.json"
    assert main(["vbench", "--videos", str(videos), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    dims = record["dimensions"]
    assert len(dims) == 16
    assert dims["temporal_flickering"]["status"] == "ok" and dims["temporal_flickering"]["score"] > 0.99
    assert dims["subject_consistency"]["status"] == "missing_weights"
    assert dims["dynamic_degree"]["status"] == "unsupported" and dims["dynamic_degree"]["score"] is None
    assert record["aggregate"]["quality"] is None and record["aggregate"]["total"] is None
    assert record["skipped"]["counts"] == {"unreadable": 1} and record["n_videos"] == 1
    printed = capsys.readouterr().out
    assert "unsupported" in printed and "Quality score" in printed

    assert main(["vbench", "--videos", str(videos), "--preset", "no_weights", "--out", str(out)]) == 0
    assert list(json.loads(out.read_text())["dimensions"]) == ["temporal_flickering"]
    assert main(["vbench", "--videos", str(videos), "--preset", "nope"]) == 2
    assert "unknown VBench preset 'nope'" in capsys.readouterr().err

    # An explicitly given but missing DINO file is an error, not a skip.
    assert main(["vbench", "--videos", str(videos), "--dims", "subject_consistency", "--dino",
                 str(tmp_path / "dino.pth")]) == 2


def test_vbench_command_aggregates_vbench_results(tmp_path):
    from mmgen.metrics.vbench import DIMENSIONS

    path = tmp_path / "all_eval_results.json"
    path.write_text(json.dumps({d.name: [d.max, []] for d in DIMENSIONS}))
    out = tmp_path / "agg.json"
    assert main(["vbench", "--aggregate", str(path), "--out", str(out)]) == 0
    agg = json.loads(out.read_text())["aggregate"]
    assert agg["total"] == pytest.approx(1.0)


def test_shapes_command_on_synthesised_data(tmp_path, capsys):
    synth = tmp_path / "synth"
    assert data_main(["synth", "--out", str(synth), "--num", "4", "--frames", "9", "--background", "textured"]) == 0
    assert main(["shapes", "--videos", str(synth)]) == 0
    record = json.loads((synth / "mmgen_eval_shapes.json").read_text())
    assert record["n_videos"] == 4
    assert record["summary"]["all_correct"]["mean"] == 1.0
    assert "all_correct" in capsys.readouterr().out
    assert main(["shapes", "--videos", str(tmp_path / "none")]) == 2


def test_protocols_command_lists_presets(capsys):
    assert main(["protocols"]) == 0
    out = capsys.readouterr().out
    assert "fvd2048_128f_subsample8f" in out and "ucf101_fvd10k_16f_train" in out
