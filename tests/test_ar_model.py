"""VideoAR: KV-cached decoding equals the teacher-forced forward; conditions and configs are checked."""
import pytest
import torch

from mmgen.ar import VideoAR
from mmgen.ar import text as text_tokens
from mmgen.ar.presets import preset_config


def _model(**kw):
    cfg = dict(bits=8, scales=[[1, 1], [2, 2], [3, 3]], num_frames=3, width=64, depth=2, heads=4,
               cond="text", max_text_len=6)
    cfg.update(kw)
    torch.manual_seed(0)
    m = VideoAR(**cfg).eval()
    torch.nn.init.normal_(m.out_proj.weight, std=0.5)  # zero-init head would make every logit 0
    return m


def _inputs(m, B=2):
    lay = m.layout()
    return [torch.randn(B, lay.num_frames, h, w, m.config.bits) for h, w in lay.scales]


@pytest.mark.parametrize("kw", [dict(), dict(cond="class", num_classes=5), dict(frame_window=1),
                                dict(pos_mode="finest_grid", qk_norm=False)])
def test_cached_group_by_group_logits_equal_full_forward(kw):
    m = _model(**kw)
    cond = ["ab", "xyz"] if m.config.cond == "text" else [1, 4]
    inputs = _inputs(m)
    with torch.no_grad():
        full = m(cond, inputs)
    lay = m.layout()
    cache = m.new_cache(2)
    m.prefill(cache, cond)
    for t in range(lay.num_frames):
        for k in range(lay.num_scales):
            x = None if (t, k) == (0, 0) else inputs[k][:, t]
            logits = m.forward_group(cache, x, t, k)
            assert torch.allclose(logits, full[:, lay.visual_slice(t, k)], atol=1e-4), (t, k)
    window = m.config.frame_window
    kept = lay.num_frames if window is None else min(lay.num_frames, window + 1)
    assert cache.length == lay.prefix_len + kept * lay.tokens_per_frame  # older frames evicted


def test_forward_group_order_and_shape_errors():
    m = _model()
    cache = m.new_cache(1)
    with pytest.raises(RuntimeError, match="prefill"):
        m.forward_group(cache, None, 0, 0)
    m.prefill(cache, ["a"])
    with pytest.raises(RuntimeError, match="in order"):
        m.forward_group(cache, torch.zeros(1, 2, 2, 8), 0, 1)
    m.forward_group(cache, None, 0, 0)
    with pytest.raises(ValueError, match=r"\[1, 2, 2, 8\]"):
        m.forward_group(cache, torch.zeros(1, 3, 3, 8), 0, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Flex runs only on CUDA (elsewhere attention takes SDPA)")
def test_flex_backend_matches_sdpa_in_the_model():
    m = _model()
    inputs = _inputs(m)
    with torch.no_grad():
        ref = m(["ab", "c"], inputs)
        for b in m.blocks:
            b.attn.backend = "flex"
        out = m(["ab", "c"], inputs)
    assert torch.allclose(out, ref, atol=1e-4)


def test_condition_errors_are_clear():
    text_model = _model()
    with pytest.raises(ValueError, match="at most 6"):
        text_model.condition_tokens(["a much too long prompt"])
    with pytest.raises(ValueError, match="outside the text vocabulary"):
        text_model.condition_tokens(["caf\u00e9"])
    with pytest.raises(TypeError, match="text-conditional"):
        text_model.condition_tokens([3])
    class_model = _model(cond="class", num_classes=5)
    with pytest.raises(ValueError, match="class id 7 out of range"):
        class_model.condition_tokens([1, 7])
    with pytest.raises(TypeError, match="class-conditional"):
        class_model.condition_tokens(["a red circle"])
    assert class_model.null_condition(2).tolist() == [[5], [5]]
    assert text_model.null_condition(1).tolist() == [[text_tokens.PAD_ID] * 6]


def test_tokenizer_mismatch_is_reported():
    from mmgen.tokenizer.model import VideoTokenizer

    tok = VideoTokenizer()  # the tiny default, which the tiny preset is matched to
    VideoAR(**preset_config("tiny")).check_tokenizer(tok)
    with pytest.raises(ValueError, match=f"{tok.quantizer.bits} bits.*bits=8"):
        _model().check_tokenizer(tok)
    with pytest.raises(ValueError, match="scales"):
        VideoAR(**preset_config("tiny", scales=[[1, 1], [8, 8]])).check_tokenizer(tok)


def test_initial_loss_is_chance_and_gradients_flow():
    from mmgen.ar.training import ar_loss

    m = VideoAR(bits=8, scales=[[1, 1], [2, 2]], num_frames=2, width=32, depth=1, heads=2, cond="class", num_classes=3)
    inputs = [torch.randn(2, 2, 1, 1, 8), torch.randn(2, 2, 2, 2, 8)]
    targets = [torch.randn(2, 2, 1, 1, 8).sign(), torch.randn(2, 2, 2, 2, 8).sign()]
    loss, acc = ar_loss(m([0, 2], inputs), targets, m)
    assert abs(loss.item() - 0.693147) < 1e-5
    loss.backward()
    assert m.out_proj.weight.grad.abs().sum() > 0


def test_index_head():
    from mmgen.ar.training import ar_loss

    m = VideoAR(bits=8, scales=[[1, 1], [2, 2]], num_frames=2, width=32, depth=1, heads=2, cond="class",
                num_classes=3, head="index", codebook_size=10)
    logits = m([0, 1], [torch.randn(2, 2, 1, 1, 8), torch.randn(2, 2, 2, 2, 8)])
    assert logits.shape == (2, 10, 10)
    targets = [torch.randint(0, 10, (2, 2, 1, 1)), torch.randint(0, 10, (2, 2, 2, 2))]
    loss, _ = ar_loss(logits, targets, m)
    assert abs(loss.item() - torch.log(torch.tensor(10.0)).item()) < 1e-4


def test_save_and_load_roundtrip(tmp_path):
    m = _model(cond="class", num_classes=5)
    m.save_pretrained(tmp_path / "gen")
    m2 = VideoAR.from_pretrained(tmp_path / "gen").eval()
    inputs = _inputs(m, 1)
    with torch.no_grad():
        assert torch.equal(m([3], inputs), m2([3], inputs))
    assert m2.scales == m.scales


@pytest.mark.parametrize("name,expected", [("videoar-l", 0.926e9), ("videoar-xl", 2.0e9)])
def test_preset_parameter_counts_match_the_paper_ballpark(name, expected):
    """Built on the meta device (no memory); within 10% of the paper's counts (0.91B / 2.15B)."""
    with torch.device("meta"):
        m = VideoAR(**preset_config(name))
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - expected) / expected < 0.10, n
    assert (m.config.depth, m.config.width, m.config.heads) == {"videoar-l": (24, 1536, 12),
                                                                "videoar-xl": (32, 2048, 16)}[name]


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown VideoAR preset"):
        preset_config("huge")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_flex_forward_and_bf16_cache_match_fp32_reference():
    """CUDA, bf16 autocast: Flex full forward and the bf16 KV-cached path vs the fp32 SDPA reference
    (max abs logit error < 0.1 for logits of scale ~1; bf16 keeps ~3 significant digits)."""
    m = _model()
    inputs = _inputs(m)
    with torch.no_grad():
        ref = m(["ab", "xyz"], inputs)
        m = m.cuda()
        cuda_inputs = [x.cuda() for x in inputs]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            full = m(["ab", "xyz"], cuda_inputs)
            lay = m.layout()
            cache = m.new_cache(2)
            assert cache.layers[0].k.dtype == torch.bfloat16
            m.prefill(cache, ["ab", "xyz"])
            cached = torch.cat([m.forward_group(cache, cuda_inputs[k][:, t], t, k)
                                for t in range(lay.num_frames) for k in range(lay.num_scales)], 1)
    scale = ref.abs().max().item()
    assert (full.cpu() - ref).abs().max().item() < 0.1 * scale
    assert (cached.cpu() - ref).abs().max().item() < 0.1 * scale


def test_random_frame_mask_reaches_the_model():
    m = _model(cond="class", num_classes=5)
    inputs = _inputs(m)
    lay = m.layout()
    keep = torch.ones(2, lay.num_frames, lay.num_frames, dtype=torch.bool)
    keep[1] = False  # sample 1: every frame loses its history (prefix and own frame stay)
    with torch.no_grad():
        full = m([1, 2], inputs)
        masked = m([1, 2], inputs, frame_keep=keep)
    f0 = slice(0, lay.tokens_per_frame)
    assert torch.allclose(masked[0], full[0], atol=1e-5)  # sample 0 kept everything
    assert torch.allclose(masked[1, f0], full[1, f0], atol=1e-5)  # frame 0 has no history to drop
    assert not torch.allclose(masked[1, lay.tokens_per_frame:], full[1, lay.tokens_per_frame:], atol=1e-3)


def test_frame_offset_makes_a_short_clip_stand_for_late_frames_of_a_windowed_sample():
    m = _model(frame_window=1, depth=1)  # one layer: frame t's output reads frames t-1 and t only
    lay5, lay3 = m.layout(5), m.layout(3)
    long_inputs = [torch.randn(2, 5, h, w, m.config.bits) for h, w in lay5.scales]
    short_inputs = [x[:, 2:5] for x in long_inputs]  # frames 2..4 of the long clip
    with torch.no_grad():
        long = m(["ab", "xyz"], long_inputs)
        plain = m(["ab", "xyz"], short_inputs)
        assert torch.equal(m(["ab", "xyz"], short_inputs, frame_offset=0), plain)  # off = the plain path
        shifted = m(["ab", "xyz"], short_inputs, frame_offset=2)
    # with window 1, the last frame sees the prompt and the frame before it: the same tokens at the
    # same relative positions as frame 4 of the long clip once the short clip is moved 2 frames on
    last3, last5 = slice(2 * lay3.tokens_per_frame, None), slice(4 * lay5.tokens_per_frame, None)
    assert torch.allclose(shifted[:, last3], long[:, last5], atol=1e-4)
    assert not torch.allclose(plain[:, last3], long[:, last5], atol=1e-3)
