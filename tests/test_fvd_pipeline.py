"""FVD over video folders: clip sampling, skips, counts, caching, refusal of foreign stats."""
import numpy as np
import pytest
import torch

from mmgen.io import write_video
from mmgen.metrics.frechet import FeatureStats
from mmgen.metrics.fvd import NotEnoughVideosError, evaluate_fvd
from mmgen.metrics.i3d import ExtractorInfo
from mmgen.metrics.protocols import FVDProtocol
from mmgen.metrics.videos import clip_start, iter_clips, list_videos


class CountingExtractor:
    """Stand-in for I3D (speed): a fixed random projection of pooled pixels, 400-d."""

    def __init__(self):
        self.proj = torch.randn(3 * 2 * 4 * 4, 400, generator=torch.Generator().manual_seed(0))
        self.info = ExtractorInfo("i3d_torchscript", "stub.pt", "ab" * 32)
        self.videos_seen = 0
        self.shapes = set()

    def __call__(self, videos):
        assert videos.dtype == torch.uint8 and videos.shape[1] == 3
        self.videos_seen += videos.shape[0]
        self.shapes.add(tuple(videos.shape[1:]))
        pooled = torch.nn.functional.adaptive_avg_pool3d(videos.float() / 255, (2, 4, 4))
        return pooled.flatten(1) @ self.proj


def _video(seed, frames=12, size=32):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (1, size, size, 3), generator=g, dtype=torch.uint8)
    # Frame index painted into a corner, so clip starts are visible in the features.
    video = base.repeat(frames, 1, 1, 1)
    for t in range(frames):
        video[t, :4, :4] = t * 20
    return video


@pytest.fixture()
def folders(tmp_path):
    real, fake = tmp_path / "real", tmp_path / "fake"
    for i in range(5):
        write_video(real / f"r{i}.mp4", _video(i))
    write_video(real / "short.mp4", _video(50, frames=3))
    write_video(real / "big.mp4", _video(51, size=48))
    (real / "broken.mp4").write_bytes(b"\x00not a video")
    for i in range(4):
        write_video(fake / "sub" / f"f{i}.mp4", _video(100 + i))  # nested folders are searched
    return real, fake


def _protocol(**overrides):
    fields = dict(name="tiny", num_real=5, num_fake=4, num_frames=4, stride=2, seed=0)
    fields.update(overrides)
    return FVDProtocol(**fields)


def test_result_records_protocol_counts_skips_and_extractor(folders, tmp_path):
    real, fake = folders
    ext = CountingExtractor()
    result = evaluate_fvd(real, fake, _protocol(), ext, cache_dir=tmp_path / "cache", progress=False)
    assert (result["n_real"], result["n_fake"], result["frames"], result["stride"]) == (5, 4, 4, 2)
    assert result["seed"] == 0 and result["split"] is None
    assert result["extractor"]["sha256"] == "ab" * 32
    assert result["resolution"]["real"] == [32, 32] and result["resolution"]["fake"] == [32, 32]
    assert result["real"]["skipped"]["counts"] == {"too_short": 1, "unreadable": 1, "mixed_resolution": 1}
    assert result["warnings"] == []
    assert ext.shapes == {(3, 4, 32, 32)}
    assert np.isfinite(result["fvd"]) and result["fvd"] > 0


def test_same_folder_gives_zero_and_real_stats_are_cached(folders, tmp_path):
    real, _ = folders
    ext = CountingExtractor()
    cache = tmp_path / "cache"
    # fake_clip="random" draws generated clips like real ones, so the same folder gives the same clips.
    same = _protocol(num_fake=5, fake_clip="random")
    result = evaluate_fvd(real, real, same, ext, cache_dir=cache, progress=False)
    assert ext.videos_seen == 10
    cached = list(cache.glob("*.npz"))
    assert len(cached) == 1 and cached[0].name.startswith("tiny-")
    # Same files, same seeded clip starts -> identical features -> FVD 0 (up to sqrtm's
    # accuracy on this rank-4 covariance, relative to its scale).
    stats, _ = FeatureStats.load(cached[0], same.key)
    assert abs(result["fvd"]) < 1e-5 * np.trace(stats.cov)
    again = evaluate_fvd(real, real, same, ext, cache_dir=cache, progress=False)
    assert ext.videos_seen == 15  # only the fake set was extracted again
    assert again["real"]["stats_file"] == str(cached[0])
    assert again["fvd"] == pytest.approx(result["fvd"], abs=1e-9)


def test_stats_file_as_real_and_refusal_of_other_protocols(folders, tmp_path):
    real, fake = folders
    ext = CountingExtractor()
    saved = tmp_path / "real_stats.npz"
    first = evaluate_fvd(real, fake, _protocol(), ext, cache_dir=tmp_path / "c", save_real_stats_to=saved,
                         progress=False)
    from_file = evaluate_fvd(saved, fake, _protocol(), ext, progress=False)
    assert from_file["fvd"] == pytest.approx(first["fvd"], rel=1e-12)
    with pytest.raises(ValueError, match="computed for protocol 'tiny-"):
        evaluate_fvd(saved, fake, _protocol(num_frames=5), ext, progress=False)
    other = CountingExtractor()
    other.info = ExtractorInfo("i3d_torchscript", "other.pt", "cd" * 32)
    with pytest.raises(ValueError, match="extractor sha256"):
        evaluate_fvd(saved, fake, _protocol(), other, progress=False)


def test_too_few_fake_videos_is_an_error_unless_allowed_a_small_real_set_is_used_whole(folders, tmp_path):
    real, fake = folders
    ext = CountingExtractor()
    with pytest.raises(NotEnoughVideosError, match="fake set .* has 4 videos; protocol 'tiny' needs 10"):
        evaluate_fvd(real, fake, _protocol(num_fake=10), ext, cache_dir=tmp_path / "c", progress=False)
    small = evaluate_fvd(real, fake, _protocol(num_fake=10), ext, allow_small=True, cache_dir=tmp_path / "c",
                         progress=False)
    assert small["n_fake"] == 4 and any("fake set" in w and "needs 10" in w for w in small["warnings"])
    # StyleGAN-V does not fail on a real set smaller than the protocol's count: it uses all of it.
    result = evaluate_fvd(real, fake, _protocol(num_real=6), ext, cache_dir=tmp_path / "c", progress=False)
    assert result["n_real"] == 5
    assert any("5 usable clips" in w and "needs 6" in w and "1 mixed_resolution" in w for w in result["warnings"])


def test_extractor_mismatch_is_recorded_as_a_warning(folders, tmp_path):
    real, fake = folders
    ext = CountingExtractor()
    ext.info = ExtractorInfo("i3d_pytorch", "rgb_imagenet.pt", "ef" * 32)
    result = evaluate_fvd(real, fake, _protocol(), ext, cache_dir=tmp_path / "c", progress=False)
    assert any("not comparable" in w for w in result["warnings"])


def test_clip_sampling_stride_resolution_and_seeded_starts(folders):
    real, _ = folders
    files = [real / f"r{i}.mp4" for i in range(5)]
    clips = dict(iter_clips(files, num_frames=3, stride=4, resolution=16, clip_policy="first"))
    assert all(c.shape == (3, 16, 16, 3) for c in clips.values())
    # Frame t has t*20 painted in its corner: stride 4 from frame 0 -> 0, 80, 160.
    corner = dict(iter_clips(files[:1], num_frames=3, stride=4, clip_policy="first"))[files[0]][:, 1, 1, 0]
    assert [round(v / 20) for v in corner.tolist()] == [0, 4, 8]
    starts = {clip_start(100, 16, "random", seed, "a.mp4") for seed in range(20)}
    assert len(starts) > 5 and all(0 <= s <= 84 for s in starts)
    assert clip_start(100, 16, "random", 3, "a.mp4") == clip_start(100, 16, "random", 3, "a.mp4")
    assert clip_start(16, 16, "random", 3, "a.mp4") == 0


def test_real_list_selects_files(folders, tmp_path):
    real, _ = folders
    listing = tmp_path / "trainlist.txt"
    listing.write_text("r1.mp4 1\nr3.mp4 2\n")
    assert [p.name for p in list_videos(real, listing)] == ["r1.mp4", "r3.mp4"]
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(FileNotFoundError, match="no video files"):
        list_videos(real, empty)
    with pytest.raises(FileNotFoundError, match="video folder not found"):
        list_videos(tmp_path / "nowhere")
    # A `mmgen sample` folder: the videos with sidecars, not the grid.
    sample = tmp_path / "sample"
    for name in ("a", "b", "grid"):
        write_video(sample / f"{name}.mp4", _video(7, frames=2))
    for name in ("a", "b"):
        (sample / f"{name}.json").write_text("{}")
    assert [p.name for p in list_videos(sample)] == ["a.mp4", "b.mp4"]
    # A `mmgen data synth` folder: the manifest's clips, not its preview grid.
    (real / "preview.gif").write_bytes(b"GIF89a")
    (real / "manifest.jsonl").write_text('{"file": "r0.mp4"}\n{"file": "r2.mp4"}\n')
    assert [p.name for p in list_videos(real)] == ["r0.mp4", "r2.mp4"]


def test_batched_streaming_equals_one_pass(folders, tmp_path):
    real, fake = folders
    ext = CountingExtractor()
    saved = tmp_path / "real.npz"
    evaluate_fvd(real, fake, _protocol(), ext, cache_dir=tmp_path / "c", batch_size=2,
                 save_real_stats_to=saved, progress=False)
    streamed, _ = FeatureStats.load(saved, _protocol().key)
    files = sorted(real.glob("r*.mp4"))
    clips = [c.permute(3, 0, 1, 2) for _, c in iter_clips(files, 4, 2, None, "random", 0, root=real)]
    assert len(clips) == 5
    one_pass = FeatureStats(400)
    one_pass.update(ext(torch.stack(clips)))
    assert streamed.count == one_pass.count == 5
    # float32 features from different batch sizes differ in the last bits; the sums are float64.
    np.testing.assert_allclose(streamed.mean, one_pass.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(streamed.cov, one_pass.cov, rtol=1e-4, atol=1e-5)


def test_pipeline_with_the_pytorch_i3d(folders, tmp_path):
    # The real InceptionI3d (random weights, 64 px input to stay fast) end to end.
    from mmgen.metrics.i3d import PyTorchI3D

    real, fake = folders
    torch.manual_seed(0)
    ext = PyTorchI3D(None, size=64)
    result = evaluate_fvd(real, fake, _protocol(num_frames=8, stride=1), ext, cache_dir=tmp_path / "c",
                          progress=False)
    assert result["extractor"]["kind"] == "i3d_pytorch"
    assert any("not comparable" in w for w in result["warnings"])  # protocol asks for the TorchScript file
    assert np.isfinite(result["fvd"]) and result["fvd"] >= 0
