"""VideoTokenizer: shapes, strict causality (chunked == full), inflation, save/load, bad input."""
import pytest
import torch

from mmgen.tokenizer import VideoTokenizer, config_mismatches
from mmgen.tokenizer.inflate import inflate_2d_state_dict, inflate_into
from mmgen.tokenizer.layers import CausalConv3d

SMALL = dict(
    base_channels=8, channel_mult=(1, 1, 2), temporal_downsample=(True, True), latent_dim=8,
    scales=(1, 2, 4), sample_size=32, num_frames=9, norm_groups=4,
)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return VideoTokenizer(**SMALL).eval()


def _video(t=9, size=32, b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, size, size, generator=g) * 2 - 1


def test_default_is_tiny_and_maps_17_frames_to_5_latents():
    tok = VideoTokenizer().eval()
    assert sum(p.numel() for p in tok.parameters()) < 5_000_000
    assert tok.spatial_compression == 8 and tok.temporal_compression == 4
    with torch.no_grad():
        z = tok.encode(_video(17, 64))
        assert z.shape == (1, 32, 5, 8, 8)
        q = tok.quantize(z)
        assert tok.quantizer.scales[-1] == (8, 8) and tok.quantizer.bits == 32
        assert [c.shape for c in q.codes] == [(1, 5, s, s, 32) for s in (1, 2, 4, 8)]
        assert tok.decode(q.z_q).shape == (1, 3, 17, 64, 64)


@pytest.mark.parametrize("chunk", [4, 8])
def test_chunked_encode_equals_full(small, chunk):
    x = _video(17)
    with torch.no_grad():
        full = small.encode(x)
        chunked = small.encode(x, chunk_frames=chunk)
    assert chunked.shape == full.shape == (1, 8, 5, 4, 4)
    assert (chunked - full).abs().max() <= 1e-5


@pytest.mark.parametrize("chunk", [1, 3])
def test_chunked_decode_equals_full(small, chunk):
    z = torch.randn(1, 8, 5, 4, 4)
    with torch.no_grad():
        full = small.decode(z, chunk_frames=None)
        chunked = small.decode(z, chunk_frames=chunk)
    assert chunked.shape == full.shape == (1, 3, 17, 32, 32)
    assert (chunked - full).abs().max() <= 1e-5


def test_interleaved_streams_keep_their_own_state(small):
    """The stream state is an explicit object, not on the modules: two videos decoded frame by
    frame in alternation each equal their one-pass decode."""
    from mmgen.tokenizer import StreamState

    za, zb = torch.randn(1, 8, 4, 4, 4), torch.randn(1, 8, 4, 4, 4)
    sa, sb = StreamState(), StreamState()
    parts_a, parts_b = [], []
    with torch.no_grad():
        for t in range(4):
            parts_a.append(small.decode(za[:, :, t:t + 1], state=sa))
            parts_b.append(small.decode(zb[:, :, t:t + 1], state=sb))
        for z, parts in ((za, parts_a), (zb, parts_b)):
            assert (torch.cat(parts, dim=2) - small.decode(z, chunk_frames=None)).abs().max() <= 1e-5


def test_encoder_and_decoder_are_causal(small):
    x = _video(17)
    x2 = x.clone()
    x2[:, :, 9:] = -x2[:, :, 9:]  # change frames 9..16: latents 0..2 cover frames 0..8
    with torch.no_grad():
        z, z2 = small.encode(x), small.encode(x2)
        assert torch.equal(z[:, :, :3], z2[:, :, :3])
        assert not torch.allclose(z[:, :, 3:], z2[:, :, 3:])
        lat = torch.randn(1, 8, 5, 4, 4)
        lat2 = lat.clone()
        lat2[:, :, 3:] += 1.0  # decoded frames 0..8 depend on latents 0..2 only
        y, y2 = small.decode(lat), small.decode(lat2)
        assert torch.equal(y[:, :, :9], y2[:, :, :9])
        assert not torch.allclose(y[:, :, 9:], y2[:, :, 9:])


def test_images_are_one_frame_videos(small):
    x = _video(9)
    with torch.no_grad():
        z_img = small.encode(x[:, :, :1])
        assert z_img.shape[2] == 1
        assert torch.allclose(z_img, small.encode(x)[:, :, :1], atol=1e-6)  # frame 0 has its own latent
        assert small.decode(z_img).shape == (1, 3, 1, 32, 32)


def test_bad_input_raises_clear_errors(small):
    with pytest.raises(ValueError, match=r"1 \+ 4k"):
        small.encode(_video(8))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        small.encode(torch.zeros(1, 4, 9, 32, 32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        small.encode(_video(9) * 100)
    with pytest.raises(ValueError, match="uint8"):
        small.encode(torch.zeros(1, 3, 9, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="divisible"):
        small.encode(_video(9, 36))
    with pytest.raises(ValueError, match="multiple of 4"):
        small.encode(_video(17), chunk_frames=3)
    with pytest.raises(ValueError, match="latent size"):
        VideoTokenizer(**{**SMALL, "scales": (1, 2, 8)})


def test_save_and_load_roundtrip(tmp_path, small):
    small.quantizer.calibrate(small.encode(_video(9)).detach())  # non-default buffer values
    small.save_pretrained(tmp_path / "tok")
    loaded = VideoTokenizer.from_pretrained(tmp_path / "tok").eval()
    assert torch.equal(loaded.quantizer.magnitudes, small.quantizer.magnitudes)
    x = _video(9)
    with torch.no_grad():
        assert torch.equal(loaded.tokenize(x)[-1], small.tokenize(x)[-1])
        torch.testing.assert_close(loaded.detokenize(small.tokenize(x)), small.detokenize(small.tokenize(x)))


def test_config_mismatch_names_the_fields(small):
    other = VideoTokenizer(**{**SMALL, "latent_dim": 4, "base_channels": 4})
    bad = config_mismatches(dict(other.config), dict(small.config))
    assert any(b.startswith("latent_dim: checkpoint 4 vs model 8") for b in bad)
    assert any(b.startswith("base_channels") for b in bad) and len(bad) == 2


def test_inflated_2d_kernel_sits_in_last_tap():
    conv = CausalConv3d(3, 5, 3)
    w2d, b2d = torch.randn(5, 3, 3, 3), torch.randn(5)
    inflate_into(conv, {"conv.weight": w2d, "conv.bias": b2d})
    assert torch.equal(conv.conv.weight[:, :, -1], w2d) and conv.conv.weight[:, :, :-1].abs().max() == 0
    frames = torch.randn(2, 3, 4, 8, 8)
    ref = torch.nn.functional.conv2d(frames[:, :, 2], w2d, b2d, padding=1)
    torch.testing.assert_close(conv(frames)[:, :, 2], ref)


def test_inflated_tokenizer_encodes_frames_independently():
    torch.manual_seed(1)
    tok = VideoTokenizer(**SMALL).eval()
    # A "2D checkpoint": the same names, 2D kernels (no .conv level for causal convs).
    state_2d = {}
    for name, tensor in tok.state_dict().items():
        if tensor.dim() == 5 and tensor.shape[2] == 3:
            state_2d[name.replace(".conv.weight", ".weight")] = torch.randn_like(tensor[:, :, 0]) * 0.1
        else:
            state_2d[name] = tensor
    inflated = inflate_2d_state_dict(state_2d, tok)
    tok.load_state_dict(inflated)
    x = _video(9)
    with torch.no_grad():
        z = tok.encode(x)
        for i in range(3):  # latent i sees frame 4i only
            torch.testing.assert_close(z[:, :, i], tok.encode(x[:, :, 4 * i : 4 * i + 1])[:, :, 0], atol=1e-5, rtol=0)
    with pytest.raises(KeyError, match="lacks"):
        inflate_2d_state_dict({}, tok)


def test_index_quantizer_option():
    tok = VideoTokenizer(**{**SMALL, "quantizer_type": "index", "codebook_size": 32}).eval()
    with torch.no_grad():
        codes = tok.tokenize(_video(9))
        assert [c.shape for c in codes] == [(1, 3, s, s) for s in (1, 2, 4)]
        assert tok.detokenize(codes).shape == (1, 3, 9, 32, 32)


@pytest.mark.parametrize("name", ["moving_shapes_tiny", "videoar_ucf101_128_d32", "videoar_ucf101_128_d48",
                                  "videoar_folder_256_d48"])
def test_shipped_configs_build(name):
    from pathlib import Path

    import yaml

    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tokenizer" / f"{name}.yaml").read_text())
    with torch.device("meta"):
        tok = VideoTokenizer(**cfg["model"]["tokenizer"])
    assert tok.temporal_compression == 4
    assert tok.latent_frames(17) == 5
    assert tok.config.sample_size // tok.spatial_compression == tok.quantizer.scales[-1][0]
    if name.startswith("videoar"):
        assert tok.spatial_compression == 16 and tok.config.latent_dim in (32, 48)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_decode_matches_float32_on_cuda():
    torch.manual_seed(0)
    tok = VideoTokenizer(**SMALL).cuda().eval()
    z = torch.randn(2, 8, 5, 4, 4, device="cuda")
    with torch.no_grad():
        ref = tok.decode(z)
        fast = tok.fast_decode(z)
        chunked = tok.fast_decode(z, chunk_frames=2)
    assert fast.dtype == torch.float32 and fast.shape == ref.shape
    assert (fast - ref).abs().max() < 0.05 * ref.abs().max()
    assert (chunked - fast).abs().max() < 0.05 * ref.abs().max()


def test_fast_decode_off_cuda_is_plain_decode(small):
    z = torch.randn(1, 8, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(small.fast_decode(z), small.decode(z))


@pytest.mark.parametrize("frames,stride", [(3, 1), (6, 1), (19, 2)])
def test_cpu_inference_conv_fast_path_matches_conv3d(frames, stride):
    conv = CausalConv3d(8, 6, 3, stride=(stride, 1, 1))
    x = torch.randn(1, 8, frames, 16, 16)
    with torch.no_grad():
        fast = conv(x)  # batch 1, no grad: the oneDNN call on CPU
        ref = conv.conv(conv._pad_past(x))  # plain nn.Conv3d
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


VARIANTS = {
    "3d-group-no-shortcuts": dict(time_kernel=3, shortcuts=False),
    "3d-channel-norm-shortcuts": dict(time_kernel=3, norm_type="channel", shortcuts=True),
    "framewise-no-norm": dict(time_kernel=1, norm_type="none", shortcuts=True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_chunked_equals_full_for_every_norm_and_shortcut_variant(variant):
    torch.manual_seed(0)
    tok = VideoTokenizer(**{**SMALL, **VARIANTS[variant]}).eval()
    x = _video(17)
    with torch.no_grad():
        z = tok.encode(x)
        assert (tok.encode(x, chunk_frames=4) - z).abs().max() <= 1e-5
        y = tok.decode(z, chunk_frames=None)
        assert (tok.decode(z, chunk_frames=1) - y).abs().max() <= 1e-5


def test_resampling_shortcuts_are_pooling_and_channel_to_space():
    from mmgen.tokenizer.layers import Downsample, Upsample

    x = torch.randn(2, 4, 5, 6, 6)
    down = Downsample(4, temporal=True, shortcut=True)
    torch.nn.init.zeros_(down.conv.conv.weight)
    torch.nn.init.zeros_(down.conv.conv.bias)
    pooled = torch.nn.functional.avg_pool3d(x[:, :, 0::2], (1, 2, 2))  # frames 0, 2, 4
    assert torch.allclose(down(x), pooled, atol=1e-6)

    up = Upsample(4, 2, temporal=False, shortcut=True)  # 4 in -> 2 out: every input channel once
    torch.nn.init.zeros_(up.conv.conv.weight)
    torch.nn.init.zeros_(up.conv.conv.bias)
    y = up(x)
    assert y.shape == (2, 2, 5, 12, 12)
    # output channel c at sub-pixel (i, j) is input channel 2c + (2i + j) // 2
    assert torch.equal(y[:, 0, :, 0::2, 0::2], x[:, 0]) and torch.equal(y[:, 0, :, 1::2, 1::2], x[:, 1])
    assert torch.equal(y[:, 1, :, 0::2, 1::2], x[:, 2]) and torch.equal(y[:, 1, :, 1::2, 0::2], x[:, 3])


def test_norm_and_shortcut_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="norm type 'batch'"):
        VideoTokenizer(**{**SMALL, "norm_type": "batch"})
    with pytest.raises(ValueError, match="divisible by latent_dim 12"):
        VideoTokenizer(**{**SMALL, "latent_dim": 12})


def test_channel_norm_normalises_each_pixel_over_channels():
    from mmgen.tokenizer.layers import ChannelNorm

    x = torch.randn(2, 8, 3, 4, 4) * torch.arange(1, 17.0).reshape(1, 1, 1, 4, 4)
    y = ChannelNorm(8)(x)
    assert torch.allclose(y.mean(1), torch.zeros(2, 3, 4, 4), atol=1e-5)
    assert torch.allclose(y.var(1, unbiased=False), torch.ones(2, 3, 4, 4), atol=1e-3)
