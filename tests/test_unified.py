"""The unified model (mmgen.ar.unified): text head off = the plain generator, text after video,
cached caption decoding == recompute, the word vocabulary, the mixed training step."""
import pytest
import torch

from mmgen.ar.caption import NoTextHeadError, generate_text, text_prompt
from mmgen.ar.layout import GroupLayout
from mmgen.ar.model import VideoAR
from mmgen.ar.unified import IGNORE, scale_weights, text_loss, text_sequences
from mmgen.ar.words import CAPTION, EOS, WordVocab
from mmgen.data.unified import grammar_words, questions
from mmgen.data.moving_shapes import parse_caption

BASE = dict(bits=8, scales=[1, 2, 4], num_frames=2, width=32, depth=2, heads=2, max_text_len=12)


def _inputs(B=2, F=2, bits=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, F, s, s, bits, generator=g).sign() for s in (1, 2, 4)]


def _unified(**kw):
    torch.manual_seed(0)
    return VideoAR(**BASE, text_vocab=grammar_words(), text_len=16, **kw).eval()


def test_head_off_is_bit_identical():
    torch.manual_seed(0)
    plain = VideoAR(**BASE).eval()
    torch.manual_seed(0)
    again = VideoAR(**BASE, text_vocab=None, mtp_heads=2).eval()
    assert plain.state_dict().keys() == again.state_dict().keys()
    for k, v in plain.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    x = _inputs()
    assert torch.equal(plain(["a red circle", ""], x), again(["a red circle", ""], x))
    assert GroupLayout(4, 2, [1, 2]).pos.shape == GroupLayout(4, 2, [1, 2], text_len=0).pos.shape


def test_text_after_video_layout_and_causality():
    lay = GroupLayout(3, 2, [1, 2], text_len=4)
    P, V = 3, lay.num_visual
    assert lay.length == P + V + 4 and lay.num_groups == 3 + 2 * 2 + 4
    text_pos = lay.pos[P + V:]
    assert torch.equal(text_pos[:, 0], text_pos[:, 1]) and torch.equal(text_pos[:, 0], text_pos[:, 2])
    assert text_pos[0, 0] > lay.pos[:P + V].max()  # uni-RoPE: text placed after every visual coordinate
    mask = lay.group_mask()
    assert mask[P + V:, :P + V].all()  # text sees the prompt and the whole video
    assert not mask[:P + V, P + V:].any()  # nothing before the text sees it
    assert not mask[P + V, P + V + 1]  # text is causal
    # text tokens change neither the visual logits nor anything before them
    m = _unified()
    x = _inputs()
    plain = m(["a red circle", "a big blue square"], x)
    text = torch.randint(5, 20, (2, 16))
    visual, heads = m(["a red circle", "a big blue square"], x, text=text)
    assert torch.allclose(plain, visual, atol=1e-6) and len(heads) == 1 and heads[0].shape == (2, 16, m.words.VOCAB_SIZE)


def test_cached_caption_equals_recompute():
    m = _unified(mtp_heads=2)
    for p in m.text_head.parameters():  # random weights emit varied words instead of one repeated token
        torch.nn.init.normal_(p, std=1.0)
    x = _inputs(B=3, seed=1)
    for question in (None, "what shape is the red object?"):
        cached = generate_text(m, x, question)
        recomputed = generate_text(m, x, question, use_cache=False)
        assert cached == recomputed
        assert any(len(r) > 1 for r in cached)


def test_model_owned_text_cache_equals_full_forward():
    """VideoAR.new_cache(text_len) + feed_video + forward_text (a chunk, then one token at a time)
    give the full teacher-forced forward's text logits, every head."""
    m = _unified(mtp_heads=2)
    x = _inputs(B=2, seed=2)
    text = torch.randint(5, m.words.VOCAB_SIZE, (2, 16))
    _, full = m(m.null_condition(2), x, text=text)
    cache = m.new_cache(2, 2, text_len=16)
    with pytest.raises(RuntimeError, match="after feed_video"):
        m.forward_text(cache, text[:, :1])
    m.feed_video(cache, m.null_condition(2), x)
    with pytest.raises(RuntimeError, match="fresh cache"):
        m.feed_video(cache, m.null_condition(2), x)
    steps = [m.forward_text(cache, text[:, :5])] + [m.forward_text(cache, text[:, i:i + 1]) for i in range(5, 16)]
    for h, head in enumerate(full):
        assert torch.allclose(torch.cat([s[h] for s in steps], 1), head, atol=1e-5)
    with pytest.raises(RuntimeError, match="fresh cache"):
        m.feed_video(m.new_cache(2, 2), [""] * 2, x)  # no room for text


def test_vocab_errors_and_roundtrip():
    v = WordVocab(grammar_words())
    ids = v.encode("A big red circle, moving to the left.")
    assert v.decode(ids) == "a big red circle, moving to the left."
    with pytest.raises(ValueError, match=r"'purple', 'hexagon' not in this model's vocabulary"):
        v.encode("a purple hexagon moving left")
    with pytest.raises(ValueError, match="'#1'"):
        v.encode("a red circle #1")
    with pytest.raises(ValueError, match="at most 3"):
        v.encode_batch(["a red circle moving"], 3)
    m = _unified()
    with pytest.raises(ValueError, match="'purple'"):
        text_prompt(m, "what color is the purple object?")
    with pytest.raises(NoTextHeadError):
        text_prompt(VideoAR(**BASE), None)
    with pytest.raises(ValueError, match="'purple'"):
        m.condition_tokens(["a purple circle"])


def test_text_sequences_targets_and_loss():
    v = WordVocab(grammar_words())
    inputs, targets = text_sequences(v, ["", "what size is the red object?", ""], ["a red circle", "small", ""], 12)
    assert inputs[0, 0] == CAPTION and targets[0, 0] == v.index["a"] and targets[0, 3] == EOS
    assert (targets[0, 4:] == IGNORE).all()
    q_len = len(v.encode("what size is the red object?")) + 2
    assert (targets[1, :q_len - 1] == IGNORE).all() and targets[1, q_len - 1] == v.index["small"]
    assert (targets[2] == IGNORE).all() and (inputs[2] == 0).all()
    logits = [torch.zeros(3, 12, v.VOCAB_SIZE, requires_grad=True) for _ in range(3)]
    loss, _ = text_loss(logits, targets, (0.3, 0.1))
    n = torch.log(torch.tensor(float(v.VOCAB_SIZE)))
    assert torch.isclose(loss, n * 1.4, atol=1e-5)  # uniform logits: CE = log V per head, weights 1 + 0.3 + 0.1
    loss.backward()
    assert logits[2].grad.abs().sum() > 0


def test_scale_weights_emphasise_early_scales():
    lay = GroupLayout(2, 2, [1, 2, 4])
    flat = scale_weights(lay, 0.0)
    assert torch.equal(flat, torch.ones_like(flat))
    w = scale_weights(lay, 0.5)
    assert torch.isclose(w.mean(), torch.tensor(1.0)) and w[0] == 4 * w[-1]


def test_questions_cover_every_field():
    qa = dict(questions(parse_caption("a small red circle moving left and a large blue circle bouncing")))
    assert qa["how many objects are there?"] == "two"
    assert qa["how is the blue object moving?"] == "bouncing"
    assert "what color is the circle?" not in qa  # two circles: ambiguous, not asked
    v = WordVocab(grammar_words())
    for q, a in qa.items():
        v.encode(q), v.encode(a)


TOKENIZER = dict(base_channels=8, channel_mult=(1, 1, 1), temporal_downsample=(True, True), patch_size=1,
                 norm_groups=4, latent_dim=8, scales=(1, 2, 4), sample_size=16, num_frames=5)


def test_mixed_training_step_and_dataset(tmp_path):
    from mmgen.ar.training import load_tokenizer
    from mmgen.ar.unified_training import UnifiedModule
    from mmgen.data.latents import tokenize_dataset
    from mmgen.data.moving_shapes import MovingShapes
    from mmgen.data.unified import UnifiedLatents

    torch.manual_seed(0)
    tokenize_dataset(MovingShapes(6, size=16, num_frames=5, seed=3), load_tokenizer(config=TOKENIZER), tmp_path)
    data = UnifiedLatents(str(tmp_path), understand_ratio=0.5, question_ratio=0.5, seed=0)
    items = [data[i % len(data)] for i in range(24)]
    kinds = {("gen" if not it["answer"] else "caption" if not it["query"] else "question") for it in items}
    assert kinds == {"gen", "caption", "question"}
    assert all(it["caption"] == " and ".join(it["caption"].split(" and ")) for it in items)
    with pytest.raises(ValueError, match="understand_ratio"):
        UnifiedLatents(str(tmp_path), understand_ratio=1.5)
    with pytest.raises(ValueError, match="caption_order"):
        UnifiedLatents(str(tmp_path), caption_order="size")

    module = UnifiedModule(preset=None, generator={**BASE, "max_text_len": 16, "text_vocab": grammar_words(), "text_len": 20,
                                                    "mtp_heads": 2}, tokenizer_config=TOKENIZER, scale_alpha=0.5)
    batch = {k: [it[k] for it in items[:4]] for k in ("caption", "query", "answer")}
    batch["latent"] = torch.stack([it["latent"] for it in items[:4]])
    batch["answer"][0], batch["answer"][1] = "", data.captions[0]  # one row of each direction at least
    loss, _ = module._step(batch, train=True)
    loss.backward()
    assert torch.isfinite(loss)
    assert module.model.out_proj.weight.grad.abs().sum() > 0  # the generation row's visual loss
    assert all(h.weight.grad.abs().sum() > 0 for h in module.model.text_head.heads)  # text + both MTP heads
    visual, text, _, _ = module.losses(batch, train=False)
    module.hparams.text_weight = 0.1  # the shipped config's: the text loss is scaled, the visual one not
    assert torch.allclose(module._step(batch, train=False)[0], visual + 0.1 * text)
    assert text > 0 and visual > 0
    with pytest.raises(ValueError, match="text_vocab"):
        UnifiedModule(preset=None, generator=BASE, tokenizer_config=TOKENIZER)


def _video_seen(module_or_model):
    """Record the visual features the model embeds (in_proj's input) on its next forwards."""
    seen = []
    model = getattr(module_or_model, "model", module_or_model)
    handle = model.in_proj.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    return seen, handle


def test_video_inputs_carry_each_groups_own_content():
    """Understanding reads the whole clip: group (t, k) = scales 0..k of frame t (the last group of a
    frame is the frame's full latent), where the generation inputs stop at scale k-1."""
    from mmgen.ar.training import load_tokenizer
    from mmgen.ar.unified import video_inputs

    torch.manual_seed(0)
    q = load_tokenizer(config=TOKENIZER).quantizer
    codes = [torch.randn(2, 2, s, s, q.bits).sign() for s in (1, 2, 4)]
    own, gen = video_inputs(q, codes), q.next_scale_inputs(codes)
    full = q.codes_to_latent(codes)  # [B, d, t, h, w]
    assert torch.allclose(own[-1], full.permute(0, 2, 3, 4, 1), atol=1e-5)
    assert torch.allclose(own[0], q.down_to(q.dequant_up(codes[0], 0), 0), atol=1e-5)
    assert torch.allclose(own[1], q.down_to(q.dequant_up(codes[0], 0) + q.dequant_up(codes[1], 1), 1), atol=1e-5)
    changed = [c.clone() for c in codes]
    changed[-1][:, -1] *= -1  # the last frame's finest codes: invisible to the generation inputs
    assert all(torch.equal(a, b) for a, b in zip(q.next_scale_inputs(changed), gen))
    assert not torch.allclose(video_inputs(q, changed)[-1], own[-1])


def test_training_feeds_understanding_rows_the_whole_clean_clip(tmp_path):
    """The bug behind chance-level captions: understanding rows were fed the generation inputs,
    which never hold a frame's finest scale (most of a small object), and corrupted ones."""
    from mmgen.ar.training import load_tokenizer
    from mmgen.ar.unified import video_inputs
    from mmgen.ar.unified_training import UnifiedModule
    from mmgen.data.latents import tokenize_dataset
    from mmgen.data.moving_shapes import MovingShapes
    from mmgen.data.unified import UnifiedLatents

    torch.manual_seed(0)
    tokenize_dataset(MovingShapes(4, size=16, num_frames=5, seed=3), load_tokenizer(config=TOKENIZER), tmp_path)
    data = UnifiedLatents(str(tmp_path), understand_ratio=0.0)
    module = UnifiedModule(preset=None, generator={**BASE, "max_text_len": 16, "text_vocab": grammar_words(),
                                                    "text_len": 20}, tokenizer_config=TOKENIZER,
                           corruption={"enabled": True, "p_max": 0.5})
    items = [data[i] for i in range(2)]
    batch = {"caption": [it["caption"] for it in items], "query": ["", ""], "answer": ["", data.captions[1]],
             "latent": torch.stack([it["latent"] for it in items])}
    seen, handle = _video_seen(module)
    module._step(batch, train=True)
    handle.remove()
    q, layout = module.tokenizer.quantizer, module.model.layout(batch["latent"].shape[2])
    clean = q.residual_pass(batch["latent"].float())[0]
    own = layout.flatten_visual(video_inputs(q, clean))
    assert torch.allclose(seen[0][1], own[1], atol=1e-5)  # the understanding row: its own clean content
    assert not torch.allclose(seen[0][0], own[0], atol=1e-3)  # the generation row: history (and corrupted)


def _latent(B=2, F=2, bits=8, seed=0):
    """A continuous latent [B, d, t, h, w] at the finest scale of BASE (4 x 4)."""
    return torch.randn(B, bits, F, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_understand_input_codes_is_the_model_before():
    """The default (codes) builds the same weights as before the option existed and ignores a latent."""
    torch.manual_seed(0)
    before = VideoAR(**BASE, text_vocab=grammar_words(), text_len=16).eval()
    codes = _unified(understand_input="codes")
    assert before.state_dict().keys() == codes.state_dict().keys() and not hasattr(codes, "latent_proj")
    for k, v in before.state_dict().items():
        assert torch.equal(v, codes.state_dict()[k]), k
    x, text = _inputs(), torch.randint(5, 20, (2, 16))
    plain = codes(["", ""], x, text=text)
    with_latent = codes(["", ""], x, text=text, latent=_latent())
    assert torch.equal(plain[0], with_latent[0]) and torch.equal(plain[1][0], with_latent[1][0])
    with pytest.raises(ValueError, match="understand_input"):
        VideoAR(**BASE, understand_input="latent")  # no text head: nothing reads the latent
    with pytest.raises(ValueError, match="understand_input"):
        _unified(understand_input="pixels")


def test_understand_input_latent_reads_the_latent_in_caption_rows_only():
    """understand_input="latent": an understanding row's text depends on the latent, not on its codes;
    a generation row (all-padding text) depends on its codes, not on the latent."""
    m = _unified(understand_input="latent")
    assert set(m.state_dict()) - set(_unified().state_dict()) == {"latent_proj.weight"}  # its own projection
    torch.nn.init.normal_(m.out_proj.weight, std=1.0)  # zero at init: the visual logits would not move
    x, z = _inputs(), _latent()
    text = torch.zeros(2, 16, dtype=torch.long)
    text[0] = torch.randint(5, 20, (16,))  # row 0 captions, row 1 generates
    cond = ["", "a big red circle"]
    visual, heads = m(cond, x, text=text, latent=z)
    other_codes = [v.clone() for v in x]
    for v in other_codes:
        v[:, 1:] *= -1  # every group but <SOS> (0, 0)
    v2, h2 = m(cond, other_codes, text=text, latent=z)
    assert torch.allclose(heads[0][0], h2[0][0], atol=1e-6)  # caption row: codes unread
    assert not torch.allclose(visual[1], v2[1], atol=1e-4)  # generation row: reads its codes
    v3, h3 = m(cond, x, text=text, latent=_latent(seed=1))
    assert not torch.allclose(heads[0][0], h3[0][0], atol=1e-4)  # caption row: reads the latent
    assert torch.allclose(visual[1], v3[1], atol=1e-6)  # generation row: latent unread
    scaled = m(cond, x, text=text, latent=z * 7.0)[1][0]
    assert torch.allclose(heads[0][0], scaled[0], atol=1e-4)  # per clip RMS 1: the overall scale is unread
    with pytest.raises(ValueError, match="pass latent="):
        m(cond, x, text=text)
    assert torch.equal(m(cond, x)[1], m(cond, x, latent=z)[1])  # no text: every row generates


def test_understand_input_latent_cached_caption_equals_recompute_and_roundtrip(tmp_path):
    m = _unified(understand_input="latent", mtp_heads=1)
    for p in m.text_head.parameters():
        torch.nn.init.normal_(p, std=1.0)
    x, z = _inputs(B=3, seed=1), _latent(B=3, seed=2)
    for question in (None, "what shape is the red object?"):
        cached = generate_text(m, x, question, latent=z)
        assert cached == generate_text(m, x, question, use_cache=False, latent=z)
        assert any(len(r) > 1 for r in cached)
    m.save_pretrained(tmp_path)
    back = VideoAR.from_pretrained(tmp_path).eval()
    assert back.config.understand_input == "latent"
    for k, v in m.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    assert generate_text(back, x, latent=z) == generate_text(m, x, latent=z)


def test_training_step_with_latent_understanding(tmp_path):
    """UnifiedModule passes the cache's continuous latent; the understanding row trains latent_proj."""
    from mmgen.ar.training import load_tokenizer
    from mmgen.ar.unified_training import UnifiedModule
    from mmgen.data.latents import tokenize_dataset
    from mmgen.data.moving_shapes import MovingShapes
    from mmgen.data.unified import UnifiedLatents

    torch.manual_seed(0)
    tokenize_dataset(MovingShapes(2, size=16, num_frames=5, seed=3), load_tokenizer(config=TOKENIZER), tmp_path)
    data = UnifiedLatents(str(tmp_path), understand_ratio=0.0)
    module = UnifiedModule(preset=None, generator={**BASE, "max_text_len": 16, "text_vocab": grammar_words(),
                                                    "text_len": 20, "understand_input": "latent"},
                           tokenizer_config=TOKENIZER)
    items = [data[i] for i in range(2)]
    batch = {"caption": [it["caption"] for it in items], "query": ["", ""], "answer": ["", data.captions[1]],
             "latent": torch.stack([it["latent"] for it in items])}
    loss, _ = module._step(batch, train=True)
    loss.backward()
    m = module.model
    assert m.latent_proj.weight.grad.abs().sum() > 0  # the caption row's text loss
    assert m.out_proj.weight.grad.abs().sum() > 0  # the generation row's visual loss


def test_understand_encoder_conv_reads_a_cell_with_its_neighbours(tmp_path):
    """understand_encoder="conv": a residual conv stem over each frame's latent, so the finest-scale
    input of a cell depends on its neighbours (the linear reader's does not); generation rows
    still ignore the latent; cached captions equal recompute and the stem round-trips."""
    linear, conv = _unified(understand_input="latent"), _unified(understand_input="latent", understand_encoder="conv")
    assert set(conv.state_dict()) - set(linear.state_dict()) == {
        "latent_stem.0.weight", "latent_stem.0.bias", "latent_stem.2.weight", "latent_stem.2.bias"}
    z = _latent()
    nudged = z.clone()
    nudged[:, :, :, 1, 1] *= -1  # one cell of every frame (the clip's RMS, which scales every cell, stays)
    for m, moves in ((linear, False), (conv, True)):
        a, b = m.latent_inputs(z)[-1], m.latent_inputs(nudged)[-1]  # [B, t, 4, 4, d]
        assert not torch.allclose(a[:, :, 1, 1], b[:, :, 1, 1], atol=1e-6)
        assert torch.allclose(a[:, :, 3, 3], b[:, :, 3, 3], atol=1e-6)  # two cells away: unread by both
        assert torch.allclose(a[:, :, 1, 2], b[:, :, 1, 2], atol=1e-6) != moves  # the neighbour
    torch.nn.init.normal_(conv.out_proj.weight, std=1.0)
    x, text = _inputs(), torch.zeros(2, 16, dtype=torch.long)
    text[0] = torch.randint(5, 20, (16,))
    visual, heads = conv(["", "a big red circle"], x, text=text, latent=z)
    v2, h2 = conv(["", "a big red circle"], x, text=text, latent=nudged)
    assert torch.allclose(visual[1], v2[1], atol=1e-6) and not torch.allclose(heads[0][0], h2[0][0], atol=1e-4)
    for p in conv.text_head.parameters():
        torch.nn.init.normal_(p, std=1.0)
    assert generate_text(conv, x, latent=z) == generate_text(conv, x, use_cache=False, latent=z)
    conv.save_pretrained(tmp_path)
    back = VideoAR.from_pretrained(tmp_path).eval()
    assert back.config.understand_encoder == "conv" and generate_text(back, x, latent=z) == generate_text(conv, x, latent=z)
    with pytest.raises(ValueError, match="understand_encoder"):
        _unified(understand_encoder="conv")  # the codes reader has no latent to convolve
    with pytest.raises(ValueError, match="understand_encoder"):
        _unified(understand_input="latent", understand_encoder="mlp")


def test_caption_order_color_sorts_understanding_targets_only(tmp_path):
    from mmgen.ar.training import load_tokenizer
    from mmgen.data.latents import tokenize_dataset
    from mmgen.data.moving_shapes import COLORS, MovingShapes, parse_caption
    from mmgen.data.unified import UnifiedLatents

    torch.manual_seed(0)
    tokenize_dataset(MovingShapes(12, size=16, num_frames=5, seed=3), load_tokenizer(config=TOKENIZER), tmp_path)
    drawn = UnifiedLatents(str(tmp_path), understand_ratio=1.0, question_ratio=0.0)
    by_color = UnifiedLatents(str(tmp_path), understand_ratio=1.0, question_ratio=0.0, caption_order="color")
    palette = list(COLORS)
    swapped = 0
    for i in range(len(drawn)):
        assert by_color.captions[i] == drawn.captions[i]  # generation prompts keep the drawn order
        assert drawn[i]["answer"] == drawn.captions[i]
        colors = [o.color for o in parse_caption(by_color[i]["answer"])]
        assert colors == sorted(colors, key=palette.index)
        assert sorted(parse_caption(by_color[i]["answer"]), key=str) == sorted(parse_caption(drawn.captions[i]), key=str)
        swapped += by_color[i]["answer"] != drawn.captions[i]
    assert swapped > 0  # some two-object clip was drawn out of palette order
