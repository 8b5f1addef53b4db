"""Fréchet distance, streaming statistics, stats files, protocols and the torchmetrics wrapper."""
import numpy as np
import pytest
import scipy.linalg
import torch

from mmgen.metrics.frechet import FeatureStats, frechet_distance, frechet_distance_from_stats
from mmgen.metrics.fvd import FrechetVideoDistance, to_uint8_video
from mmgen.metrics.protocols import FVDProtocol, available_protocols, load_protocol


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def _random_spd(rng, dim, scale=1.0):
    a = rng.standard_normal((dim, dim))
    return scale * (a @ a.T / dim + 0.1 * np.eye(dim))


def test_closed_form_commuting_gaussians():
    # Σ1 = Q diag(a) Qᵀ, Σ2 = Q diag(b) Qᵀ commute, so tr sqrtm(Σ1Σ2) = Σ sqrt(a b) and
    # FD = |μ1-μ2|² + Σ (sqrt(a) - sqrt(b))².
    rng = np.random.default_rng(0)
    dim = 32
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    a, b = rng.uniform(0.1, 4.0, dim), rng.uniform(0.1, 4.0, dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert _rel(got, expected) < 1e-6


def test_closed_form_univariate():
    # 1-D Gaussians: (m1-m2)² + (s1-s2)².
    got = frechet_distance([1.5], [[4.0]], [-0.5], [[0.25]])
    assert _rel(got, 2.0**2 + (2.0 - 0.5) ** 2) < 1e-12


def test_streaming_stats_match_direct_scipy_computation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 400)) * 3 + 5
    y = rng.standard_normal((250, 400)) @ (np.eye(400) + 0.05 * rng.standard_normal((400, 400))) + 4.5
    sx, sy = FeatureStats(400), FeatureStats(400)
    for chunk in np.array_split(x, 7):
        sx.update(chunk)
    for chunk in np.array_split(y, 3):
        sy.update(torch.from_numpy(chunk).float().double())  # tensors are accepted too
    cx, cy = np.cov(x, rowvar=False, bias=True), np.cov(y, rowvar=False, bias=True)
    np.testing.assert_allclose(sx.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sx.cov, cx, rtol=1e-9, atol=1e-10)
    direct = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(cx + cy - 2 * np.real(scipy.linalg.sqrtm(cx @ cy)))
    assert _rel(frechet_distance_from_stats(sx, sy), direct) < 1e-6


def test_self_distance_is_zero_and_distance_is_symmetric():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(64), rng.standard_normal(64)
    s1, s2 = _random_spd(rng, 64), _random_spd(rng, 64, 2.0)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-6 * np.trace(s1)
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert d12 > 1.0
    assert _rel(d12, d21) < 1e-6


def test_merge_equals_single_pass_and_rejects_bad_input():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 8))
    whole, a, b = FeatureStats(8), FeatureStats(8), FeatureStats(8)
    whole.update(x)
    a.update(x[:15])
    b.update(x[15:])
    a.merge(b)
    assert a.count == 40
    np.testing.assert_allclose(a.cov, whole.cov, rtol=1e-12)
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        a.update(np.zeros((2, 7)))
    bad = np.zeros((2, 8))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        a.update(bad)
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats(8).cov


def test_stats_file_roundtrip_and_protocol_refusal(tmp_path):
    rng = np.random.default_rng(4)
    stats = FeatureStats(16)
    stats.update(rng.standard_normal((30, 16)))
    path = tmp_path / "real.npz"
    stats.save(path, "fvd2048_16f-abc", {"source": "x"})
    loaded, meta = FeatureStats.load(path, "fvd2048_16f-abc")
    assert loaded.count == 30 and meta == {"source": "x"}
    np.testing.assert_array_equal(loaded.sum_outer, stats.sum_outer)
    with pytest.raises(ValueError, match="computed for protocol 'fvd2048_16f-abc'"):
        FeatureStats.load(path, "fvd2048_128f-def")
    with pytest.raises(ValueError, match="must end in .npz"):
        stats.save(tmp_path / "real.stats", "k", {})
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not an mmgen FVD statistics file"):
        FeatureStats.load(tmp_path / "junk.npz", "k")
    np.savez(tmp_path / "other.npz", mu=np.zeros(3))  # e.g. another tool's FID statistics
    with pytest.raises(ValueError, match="missing \\['count'"):
        FeatureStats.load(tmp_path / "other.npz", "k")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_presets_load_and_differ():
    names = available_protocols()
    for required in ("fvd2048_16f", "fvd2048_128f", "fvd2048_128f_subsample8f", "ucf101_fvd10k_16f_train"):
        assert required in names
    p16, p128, sub = (load_protocol(n) for n in ("fvd2048_16f", "fvd2048_128f", "fvd2048_128f_subsample8f"))
    assert (p16.num_real, p16.num_fake, p16.num_frames, p16.stride) == (2048, 2048, 16, 1)
    assert p128.num_frames == 128 and p128.span == 128
    assert (sub.num_frames, sub.stride, sub.span) == (16, 8, 121)
    ucf = load_protocol("ucf101_fvd10k_16f_train")
    assert ucf.num_fake == 10000 and ucf.split == "trainlist01"
    assert len({p.key for p in (p16, p128, sub, ucf)}) == 4
    assert all(p.extractor == "i3d_torchscript" for p in (p16, p128, sub, ucf))


def test_protocol_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="unknown FVD protocol 'nope'"):
        load_protocol("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_real: 4\nnum_fake: 4\nnum_frames: 8\nframes_per_second: 3\n")
    with pytest.raises(ValueError, match="unknown protocol fields \\['frames_per_second'\\]"):
        load_protocol(bad)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        FVDProtocol(name="x", num_real=1, num_fake=1, num_frames=4, stride=0)


class _ProjectionExtractor:
    """A cheap deterministic stand-in for I3D: random projection of pooled pixels."""

    def __init__(self, dim=12):
        self.proj = torch.randn(3 * 2 * 2 * 2, dim, generator=torch.Generator().manual_seed(0))

    def __call__(self, videos):
        assert videos.dtype == torch.uint8
        pooled = torch.nn.functional.adaptive_avg_pool3d(videos.float() / 255, (2, 2, 2))
        return torch.tanh(pooled.flatten(1) @ self.proj) * 3


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # `merged` gets states, not updates
def test_torchmetrics_wrapper_matches_stats_and_sums_across_shards():
    torch.manual_seed(0)
    ext = _ProjectionExtractor()
    real = torch.randint(0, 256, (10, 3, 4, 8, 8), dtype=torch.uint8)
    fake = torch.rand(9, 3, 4, 8, 8) * 2 - 1  # model layout: float in [-1, 1]

    single = FrechetVideoDistance(ext, feature_dim=12)
    single.update(real, real=True)
    assert single(fake, real=False) is None  # forward only accumulates
    expected_real, expected_fake = FeatureStats(12), FeatureStats(12)
    expected_real.update(ext(real))
    expected_fake.update(ext(to_uint8_video(fake)))
    expected = frechet_distance_from_stats(expected_real, expected_fake)
    assert _rel(single.compute().item(), expected) < 1e-9

    # Two "ranks" each see half; summing their states (what DDP's dist_reduce_fx="sum" does)
    # must give the single-process value.
    shards = [FrechetVideoDistance(ext, feature_dim=12) for _ in range(2)]
    for i, metric in enumerate(shards):
        metric.update(real[i::2], real=True)
        metric.update(fake[i::2], real=False)
    merged = FrechetVideoDistance(ext, feature_dim=12)
    for name in merged._defaults:
        setattr(merged, name, sum(getattr(m, name) for m in shards))
    assert _rel(merged.compute().item(), expected) < 1e-9

    fixed = FrechetVideoDistance(ext, feature_dim=12, real_stats=expected_real)
    fixed.update(fake, real=False)
    assert _rel(fixed.compute().item(), expected) < 1e-9
    with pytest.raises(ValueError, match="generated videos only"):
        fixed.update(real, real=True)
    fixed.reset()
    assert fixed.fake_count.item() == 0 and fixed.fixed_real is expected_real


def test_to_uint8_video_range():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 1, 4)
    assert to_uint8_video(x).flatten().tolist() == [0, 128, 255, 255]
    with pytest.raises(ValueError):
        to_uint8_video(torch.zeros(1, dtype=torch.int32))


def test_every_fvd_preset_file_loads():
    names = available_protocols()
    assert len(names) >= 7
    smoke = {"real_clips_16f"}  # the 12 clips of `mmgen data real`: a smoke set, never a published protocol
    assert smoke <= set(names)
    for name in names:
        protocol = load_protocol(name)
        assert protocol.name == name and (protocol.num_real >= 256 or name in smoke)
