"""Comparability fixes of issue 20: which clips are taken, what keys the statistics cache,
what a result records, and that corrupt weights are refused without unsafe advice."""
import json
import pickle

import pytest
import torch
import torch.nn.functional as F

from mmgen.io import write_video
from mmgen.metrics.fvd import evaluate_fvd, real_stats_cache_path
from mmgen.metrics.i3d import ExtractorInfo, InceptionI3d, PyTorchI3D, WeightsFileError, load_i3d
from mmgen.metrics.protocols import FVDProtocol, load_protocol
from mmgen.metrics.videos import SkipReport, clip_start, iter_clips

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _video(level: int, frames: int = 12, size: int = 16) -> torch.Tensor:
    """Flat colour ``level``; frame t has 6t painted in its top-left corner (readable up to t = 42)."""
    video = torch.full((frames, size, size, 3), level, dtype=torch.uint8)
    for t in range(frames):
        video[t, :4, :4] = (t * 6) % 256
    return video


class RecordingExtractor:
    """Remembers, per clip, its flat colour and the frame index of its first frame."""

    def __init__(self, preprocess: str = ""):
        self.info = ExtractorInfo("i3d_torchscript", "stub.pt", "ab" * 32, preprocess)
        self.seen: list[tuple[int, int]] = []

    def __call__(self, videos):
        for v in videos:
            # Colours come back from H.264 within a few levels.
            self.seen.append((round(int(v[0, 0, 8, 8]) / 10) * 10, round(int(v[0, 0, 1, 1]) / 6)))
        pooled = F.adaptive_avg_pool3d(videos.float() / 255, (2, 2, 2)).flatten(1)
        return torch.cat([pooled, torch.randn(len(videos), 400 - pooled.shape[1],
                                              generator=torch.Generator().manual_seed(len(self.seen)))], 1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    real, fake = root / "real", root / "fake"
    for i in range(6):  # written out of order: selection must not depend on creation order
        j = 5 - i
        write_video(real / f"r{j}.mp4", _video(10 * (j + 1), frames=40))
        write_video(fake / f"f{j}.mp4", _video(10 * (j + 1), frames=40))
    return real, fake


def _protocol(**overrides):
    fields = dict(name="t", num_real=3, num_fake=3, num_frames=4, stride=2, clip="random", seed=0)
    fields.update(overrides)
    return FVDProtocol(**fields)


def test_generated_clips_start_at_frame_0_real_ones_at_random(folders, tmp_path):
    real, fake = folders
    ext = RecordingExtractor()
    evaluate_fvd(real, fake, _protocol(), ext, cache_dir=tmp_path, progress=False)
    real_starts, fake_starts = [s for _, s in ext.seen[:3]], [s for _, s in ext.seen[3:]]
    assert fake_starts == [0, 0, 0]
    assert any(s > 0 for s in real_starts)
    # The named deliberate difference: fake_clip "random" draws generated clips like real ones.
    ext = RecordingExtractor()
    evaluate_fvd(real, fake, _protocol(fake_clip="random"), ext, cache_dir=tmp_path, progress=False)
    assert any(s > 0 for _, s in ext.seen[3:])


def test_real_subset_is_the_first_n_videos_in_sorted_order(folders, tmp_path):
    real, fake = folders
    ext = RecordingExtractor()
    evaluate_fvd(real, fake, _protocol(), ext, cache_dir=tmp_path, progress=False)
    assert [level for level, _ in ext.seen[:3]] == [10, 20, 30]  # r0, r1, r2
    assert [level for level, _ in ext.seen[3:]] == [10, 20, 30]  # f0, f1, f2


def test_stride8_preset_needs_the_128_frame_window(tmp_path):
    preset = load_protocol("fvd2048_128f_subsample8f")
    assert (preset.span, preset.min_frames, preset.window) == (121, 128, 128)
    assert preset.fake_clip == "first"
    write_video(tmp_path / "a125.mp4", _video(50, frames=125, size=8))
    write_video(tmp_path / "b130.mp4", _video(60, frames=130, size=8))
    files = sorted(tmp_path.glob("*.mp4"))
    report = SkipReport()
    kept = list(iter_clips(files, 16, 8, None, "random", 0, report, root=tmp_path, min_frames=preset.min_frames))
    assert [p.name for p, _ in kept] == ["b130.mp4"]
    assert report.counts == {"too_short": 1} and "125 frames < 128" in report.files[0]["detail"]
    # Without min_frames (the named difference) the 125-frame video is long enough.
    assert len(list(iter_clips(files, 16, 8, None, "first", 0, root=tmp_path))) == 2
    # The random start leaves room for the whole window, not just the 121-frame span.
    assert {clip_start(130, 128, "random", s, "b130.mp4") for s in range(50)} <= {0, 1, 2}
    with pytest.raises(ValueError, match="min_frames"):
        _protocol(min_frames=3)


def test_stats_cache_key_and_saved_stats_cover_every_preprocessing_choice(folders, tmp_path):
    real, fake = folders
    one, half = PyTorchI3D(None, size=32), PyTorchI3D(None, size=32, input_scale=0.5)
    assert one.info.sha256 == half.info.sha256  # same weights; only the input scale differs
    protocol = _protocol()
    paths = {real_stats_cache_path(real, protocol, e.info.as_dict(), None, tmp_path) for e in (one, half)}
    assert len(paths) == 2

    a, b = RecordingExtractor("[-1, 1]"), RecordingExtractor("[-0.5, 0.5]")
    evaluate_fvd(real, fake, protocol, a, cache_dir=tmp_path / "c", progress=False)
    evaluate_fvd(real, fake, protocol, b, cache_dir=tmp_path / "c", progress=False)
    assert len(b.seen) == 6  # real statistics recomputed, not reused from the [-1, 1] run
    assert len(list((tmp_path / "c").glob("*.npz"))) == 2
    saved = tmp_path / "real.npz"
    evaluate_fvd(real, fake, protocol, a, cache_dir=tmp_path / "c", save_real_stats_to=saved, progress=False)
    with pytest.raises(ValueError, match="other extractor settings.*preprocess"):
        evaluate_fvd(saved, fake, protocol, b, progress=False)


def test_results_record_software_versions_and_decoders(folders, tmp_path):
    real, fake = folders
    result = evaluate_fvd(real, fake, _protocol(), RecordingExtractor(), cache_dir=tmp_path, progress=False)
    versions = result["versions"]
    assert versions["mmgen"] and versions["torch"] == torch.__version__
    assert versions["decoders"] and all(isinstance(v, str) for v in versions["decoders"].values())
    assert sum(result["fake"]["skipped"]["decoded_by"].values()) == 3
    assert set(result["fake"]["skipped"]["decoded_by"]) <= set(versions["decoders"])
    assert result["fvd"] >= 0 and result["proxy"] is False


class _FlagEcho(torch.nn.Module):
    """Stands in for i3d_torchscript.pt and returns the flags it was called with, so a
    call that drops or changes any of them is caught: [mean input, rescale, resize, features]."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        y = x.float()
        if rescale:
            y = y / 127.5 - 1.0
        flags = torch.tensor([float(rescale), float(resize), float(return_features)])
        return torch.cat([y.mean(dim=(1, 2, 3, 4))[:, None], flags.expand(x.shape[0], 3)], dim=1)


def test_torchscript_extractor_passes_every_reference_flag(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_FlagEcho()).save(str(path))
    ext = load_i3d(path)
    out = ext(torch.full((2, 3, 4, 8, 8), 255, dtype=torch.uint8))
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0, 1.0, 1.0]] * 2))


def test_full_size_i3d_endpoints_match_the_published_architecture():
    # 16 x 224 x 224 in: the TF-Hub I3D's endpoint sizes (stride-2 stem in time and space,
    # pools at 3a/4a/5a), a final [2, 7, 7] pool that is not clipped, one logits step in time.
    torch.manual_seed(0)
    model = InceptionI3d().eval()
    shapes = {}
    for name in ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Mixed_3c", "Mixed_4f", "Mixed_5c"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape[1:]))
    x = torch.rand(2, 3, 16, 224, 224) * 2 - 1
    with torch.no_grad():
        per_time = model(x)
    assert shapes == {
        "Conv3d_1a_7x7": (64, 8, 112, 112), "MaxPool3d_2a_3x3": (64, 8, 56, 56), "Mixed_3c": (480, 8, 28, 28),
        "Mixed_4f": (832, 4, 14, 14), "Mixed_5c": (1024, 2, 7, 7),
    }
    assert per_time.shape == (2, 400, 1)
    feats = per_time.mean(2)
    assert torch.isfinite(feats).all() and not torch.allclose(feats[0], feats[1])
    # The logits are a 1x1x1 conv of the pooled features: check it against the pool by hand.
    with torch.no_grad():
        trunk = x
        for name in InceptionI3d.TRUNK:
            trunk = getattr(model, name)(trunk)
        pooled = trunk.mean(dim=(2, 3, 4))
        manual = pooled @ model.logits.conv3d.weight.flatten(1).T + model.logits.conv3d.bias
    torch.testing.assert_close(feats, manual, rtol=1e-4, atol=1e-4)


class _RunsCode:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_corrupt_or_code_carrying_weights_are_refused_without_unsafe_advice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                    dtype=torch.uint8).numpy().tobytes())
    torch.save({"w": _RunsCode()}, tmp_path / "code.pt")
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"w": _RunsCode()}))
    for name in ("noise.pt", "code.pt", "legacy.pt"):
        with pytest.raises(WeightsFileError) as err:
            load_i3d(tmp_path / name)
        assert "not a valid TorchScript archive or state dict" in str(err.value)
        assert "weights_only" not in str(err.value)
    assert not (tmp_path / "PWNED").exists()


def test_record_is_json_serialisable(folders, tmp_path):
    real, fake = folders
    result = evaluate_fvd(real, fake, _protocol(), RecordingExtractor(), cache_dir=tmp_path, progress=False)
    assert json.loads(json.dumps(result))["protocol_fields"]["fake_clip"] == "first"
