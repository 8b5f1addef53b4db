"""Bit sampling and group-by-group decoding: cached decoding == full recomputation."""
import pytest
import torch

from mmgen.ar.model import VideoAR
from mmgen.ar.sampling import SamplerSettings, forward_steps, sample_bits, sample_codes
from mmgen.tokenizer import BitwiseResidualQuantizer

SCALES = [(1, 1), (2, 2), (3, 3)]
BITS = 6


def tiny_model(cond="class", frame_window=None, seed=0, **config):
    torch.manual_seed(seed)
    model = VideoAR(bits=BITS, scales=SCALES, num_frames=3, width=32, depth=2, heads=2, cond=cond,
                    num_classes=5, max_text_len=12, frame_window=frame_window, attn_backend="sdpa", **config)
    # the head starts at zero (every logit 0); give it weights so samples depend on the inputs
    torch.nn.init.normal_(model.out_proj.weight, std=0.5)
    return model.eval()


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# --------------------------------------------------------------------------- sample_bits
def test_sample_bits_values_and_probabilities():
    logits = torch.tensor([[4.0, -4.0, 0.0]]).expand(4000, 3)
    bits = sample_bits(logits, generator=torch.Generator().manual_seed(0))
    assert set(bits.unique().tolist()) <= {-1.0, 1.0}
    p_one = (bits > 0).float().mean(0)
    assert torch.allclose(p_one, torch.sigmoid(torch.tensor([4.0, -4.0, 0.0])), atol=0.03)


def test_temperature_zero_is_greedy_and_temperature_flattens():
    logits = torch.tensor([[1.0, -0.5, 0.0]])
    assert sample_bits(logits, temperature=0).tolist() == [[1.0, -1.0, 1.0]]
    many = torch.full((4000, 1), 1.0)
    hot = (sample_bits(many, temperature=4.0, generator=torch.Generator().manual_seed(1)) > 0).float().mean()
    assert abs(hot - torch.sigmoid(torch.tensor(0.25))) < 0.03


def test_top_p_makes_confident_bits_deterministic():
    logits = torch.tensor([[3.0, 0.2]]).expand(2000, 2)
    bits = sample_bits(logits, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert torch.all(bits[:, 0] == 1.0)  # p = 0.95 >= 0.9: always the likelier bit
    assert 0.4 < (bits[:, 1] > 0).float().mean() < 0.7  # p = 0.55: still sampled
    with pytest.raises(ValueError):
        sample_bits(logits, top_p=0.0)
    with pytest.raises(ValueError):
        sample_bits(logits, temperature=-1)


def test_per_row_generators_do_not_depend_on_the_batch():
    logits = torch.randn(3, 10)
    together = sample_bits(logits, generator=gens([1, 2, 3]))
    alone = sample_bits(logits[1:2], generator=gens([2]))
    assert torch.equal(together[1:2], alone)
    with pytest.raises(ValueError, match="generators"):
        sample_bits(logits, generator=gens([1]))


# --------------------------------------------------------------------------- decoding
def decode(model, cond, frames, seeds, **settings):
    q = BitwiseResidualQuantizer(BITS, SCALES)
    return sample_codes(model, q, cond, frames, SamplerSettings(**settings), generator=gens(seeds))


@pytest.mark.parametrize("guidance", [1.0, "adaptive", "linear:5:3"])
def test_cached_equals_recompute(guidance):
    model = tiny_model()
    cached = decode(model, [0, 3], 3, [7, 8], guidance=guidance, temperature="1.2:0.8")
    recomputed = decode(model, [0, 3], 3, [7, 8], guidance=guidance, temperature="1.2:0.8", use_cache=False)
    assert [c.shape for c in cached] == [(2, 3, h, w, BITS) for h, w in SCALES]
    for a, b in zip(cached, recomputed):
        assert torch.equal(a, b)


def test_cached_equals_recompute_text_model():
    model = tiny_model(cond="text")
    prompts = ["a red circle", "blue"]
    cached = decode(model, prompts, 2, [1, 2], guidance=3.0)
    recomputed = decode(model, prompts, 2, [1, 2], guidance=3.0, use_cache=False)
    assert all(torch.equal(a, b) for a, b in zip(cached, recomputed))


@pytest.mark.parametrize("frame_window", [None, 1])
def test_reveal_passes_cached_equal_recompute_and_keep_what_they_reveal(frame_window):
    model = tiny_model(frame_window=frame_window, reveal_scales=[1, 2])
    cached = decode(model, [0, 3], 4, [7, 8], guidance=2.0, reveal_steps=3)
    recomputed = decode(model, [0, 3], 4, [7, 8], guidance=2.0, reveal_steps=3, use_cache=False)
    assert all(torch.equal(a, b) for a, b in zip(cached, recomputed))
    one_pass = decode(model, [0, 3], 4, [7, 8], guidance=2.0)
    assert torch.equal(cached[0][:, :1], one_pass[0][:, :1])  # scale 0 (1 token) is drawn once either way
    assert not all(torch.equal(a, b) for a, b in zip(cached[1:], one_pass[1:]))  # the passes change the draw


def test_rewind_group_restores_the_cache():
    model = tiny_model(reveal_scales=[2])
    cache = model.new_cache(1, 2)
    model.prefill(cache, torch.tensor([[1]]))
    model.forward_group(cache, None, 0, 0)
    model.forward_group(cache, torch.randn(1, 2, 2, BITS), 0, 1)
    x = torch.randn(1, 3, 3, BITS)
    first = model.forward_group(cache, x, 0, 2)
    length = cache.length
    with pytest.raises(RuntimeError, match="rewind_group"):
        model.rewind_group(cache, 0, 1)  # not the last group fed
    model.rewind_group(cache, 0, 2)
    assert cache.length == length - 9
    assert torch.equal(model.forward_group(cache, x, 0, 2), first)
    model.rewind_group(cache, 0, 2)
    shown = torch.zeros(1, 3, 3, BITS)
    shown[0, 1, 1] = 1.0  # one token revealed: the group's logits change
    again = model.forward_group(cache, x, 0, 2, revealed=shown)
    assert cache.length == length and not torch.allclose(first, again)


def test_reveal_needs_a_model_trained_for_it():
    with pytest.raises(ValueError, match="reveal_scales"):
        VideoAR(bits=BITS, scales=SCALES, reveal_scales=[0])  # one token: nothing to reveal
    with pytest.raises(ValueError, match="bit head"):
        VideoAR(bits=BITS, scales=SCALES, reveal_scales=[1], head="index", codebook_size=8)
    model = tiny_model()
    with pytest.raises(ValueError, match="partial reveal"):
        model(torch.tensor([1]), [torch.zeros(1, 3, h, w, BITS) for h, w in SCALES],
              revealed=[torch.zeros(1, 3, h, w, BITS) for h, w in SCALES])
    with pytest.raises(ValueError, match="reveal_steps"):
        SamplerSettings(reveal_steps=0)


def test_windowed_cache_evicts_and_equals_windowed_recompute():
    model = tiny_model(frame_window=1)
    cached = decode(model, [1, 2], 4, [3, 4], guidance=2.0)
    recomputed = decode(model, [1, 2], 4, [3, 4], guidance=2.0, use_cache=False)
    assert all(torch.equal(a, b) for a, b in zip(cached, recomputed))
    # a window changes the result (frame 3 can no longer see frames 0-1)
    full = tiny_model(frame_window=None)
    full.load_state_dict(model.state_dict())
    assert not all(torch.equal(a, b) for a, b in zip(cached, decode(full, [1, 2], 4, [3, 4], guidance=2.0)))


def test_same_seed_same_video_and_batch_independence():
    model = tiny_model()
    a = decode(model, [0, 1, 2], 2, [5, 6, 7], guidance=3.0)
    b = decode(model, [1], 2, [6], guidance=3.0)
    assert all(torch.equal(x[1:2], y) for x, y in zip(a, b))
    c = decode(model, [1], 2, [9], guidance=3.0)
    assert not all(torch.equal(x, y) for x, y in zip(b, c))


def test_condition_changes_the_sample():
    model = tiny_model()
    a = decode(model, [0], 2, [5], guidance=3.0)
    b = decode(model, [4], 2, [5], guidance=3.0)
    assert not all(torch.equal(x, y) for x, y in zip(a, b))


def test_context_frames_are_kept_and_callback_sees_every_frame():
    model = tiny_model()
    q = BitwiseResidualQuantizer(BITS, SCALES)
    first = sample_codes(model, q, [2], 3, generator=gens([0]))
    context = [c[:, :1] for c in first]
    seen = []
    out = sample_codes(model, q, [2], 3, generator=gens([0]), context=context,
                       on_frame=lambda t, codes: seen.append((t, [c.shape for c in codes])))
    assert all(torch.equal(o[:, :1], c) for o, c in zip(out, context))
    assert [t for t, _ in seen] == [0, 1, 2]
    assert seen[0][1] == [(1, 1, h, w, BITS) for h, w in SCALES]
    # the continuation depends on the context: replace it and frame 1 changes
    flipped = [-c for c in context]
    other = sample_codes(model, q, [2], 3, generator=gens([0]), context=flipped)
    assert not all(torch.equal(a[:, 1:], b[:, 1:]) for a, b in zip(out, other))


def test_context_scales_force_the_coarse_layout_of_the_next_frame():
    model = tiny_model()
    q = BitwiseResidualQuantizer(BITS, SCALES)
    K = len(SCALES)
    real = sample_codes(model, q, [2], 2, generator=gens([7]))
    context = [c[:, :1] if k < 1 else c[:, :0] for k, c in enumerate(real)]  # frame 0's first scale
    out = sample_codes(model, q, [2], 2, generator=gens([0]), context=context, context_scales=1)
    free = sample_codes(model, q, [2], 2, generator=gens([0]))
    assert torch.equal(out[0][:, :1], real[0][:, :1])
    assert not torch.equal(free[0][:, :1], real[0][:, :1])  # the forced scale is not what seed 0 draws
    # the finer scales are sampled, conditioned on the forced layout
    assert not all(torch.equal(a, b) for a, b in zip(out[1:], free[1:]))
    with pytest.raises(ValueError, match="context_scales"):
        sample_codes(model, q, [2], 2, generator=gens([0]), context=[c[:, :1] for c in real], context_scales=1)
    with pytest.raises(ValueError, match="context_scales"):
        sample_codes(model, q, [2], 2, context_scales=K)


def test_progress_counts_forward_steps():
    model = tiny_model()
    steps = []
    sample_codes(model, BitwiseResidualQuantizer(BITS, SCALES), [0], 2, generator=gens([0]),
                 progress=steps.append)
    assert sum(steps) == forward_steps(2, len(SCALES)) == 7


def test_settings_and_window_errors():
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplerSettings.from_dict({"guidence": 3})
    s = SamplerSettings.from_dict({"guidance": "adaptive", "temperature": 0.9})
    assert SamplerSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="without a frame window"):
        tiny_model().decoding_window(2)
    with pytest.raises(ValueError, match="exceeds"):
        tiny_model(frame_window=1).decoding_window(2)
    assert tiny_model(frame_window=2).decoding_window(None) == 2
    with pytest.raises(ValueError, match="out of range"):
        decode(tiny_model(), [9], 1, [0])


def test_decoding_inputs_equal_the_teacher_forcing_inputs(monkeypatch):
    """The inputs the sampler builds group by group are exactly what training feeds
    (quantizer.next_scale_inputs), so a model sees at sampling what it was trained on."""
    from mmgen.ar import sampling

    model = tiny_model()
    q = BitwiseResidualQuantizer(BITS, SCALES)
    codes = [torch.randn(2, 3, h, w, BITS).sign() for h, w in SCALES]
    seen = {}

    class Spy(sampling.RecomputeStepper):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["inputs"] = self.inputs

    monkeypatch.setattr(sampling, "RecomputeStepper", Spy)
    out = sample_codes(model, q, [0, 1], 3, SamplerSettings(use_cache=False), context=codes)
    assert all(torch.equal(a, b) for a, b in zip(out, codes))
    for a, b in zip(seen["inputs"], q.next_scale_inputs(codes)):
        assert torch.allclose(a, b, atol=1e-6)


# --------------------------------------------------------------------------- index head (VQ)
def test_sample_indices_follows_the_distribution_and_top_p():
    from mmgen.ar.sampling import sample_indices

    logits = torch.log(torch.tensor([0.6, 0.3, 0.1])).expand(6000, 3)
    idx = sample_indices(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(idx, minlength=3).float() / len(idx)
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.03)
    nucleus = sample_indices(logits, top_p=0.8, generator=torch.Generator().manual_seed(0))
    assert set(nucleus.unique().tolist()) == {0, 1}  # 0.6 + 0.3 covers 0.8; code 2 is cut
    assert torch.equal(sample_indices(logits[:3], temperature=0), torch.zeros(3, dtype=torch.long))


def test_index_head_cached_equals_recompute():
    from mmgen.tokenizer import IndexResidualQuantizer

    torch.manual_seed(0)
    model = VideoAR(bits=BITS, scales=SCALES, num_frames=3, width=32, depth=2, heads=2, cond="class",
                    num_classes=5, head="index", codebook_size=16, attn_backend="sdpa")
    torch.nn.init.normal_(model.out_proj.weight, std=0.5)
    model.eval()
    q = IndexResidualQuantizer(BITS, SCALES, codebook_size=16).eval()
    out = [sample_codes(model, q, [0, 3], 3, SamplerSettings(guidance=2.0, use_cache=c), generator=gens([7, 8]))
           for c in (True, False)]
    assert [tuple(c.shape) for c in out[0]] == [(2, 3, h, w) for h, w in SCALES]
    assert all(c.dtype == torch.long and int(c.max()) < 16 for c in out[0])
    assert all(torch.equal(a, b) for a, b in zip(*out))
    assert q.codes_to_latent(out[0]).shape[:3] == (2, BITS, 3)
