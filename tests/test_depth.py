"""Depth options of the shared Block: SGT attention loops (scheduler, head subset, cache) and ITT."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmgen.ar import VideoAR
from mmgen.nn import Block, KVCache, SelfAttention
from mmgen.nn.attention import GroupMask
from mmgen.nn.itt import route, set_thinking_steps
from mmgen.nn.sgt import SGTLoop, SGTScheduler, last_query_entropy, plot_trace

GEN = dict(bits=8, scales=[[1, 1], [2, 2]], num_frames=3, width=64, depth=4, heads=4, cond="text",
           max_text_len=6)


def _model(**extra) -> VideoAR:
    """A VideoAR in eval mode with a random (not zero-initialised) output head."""
    torch.manual_seed(0)
    m = VideoAR(**GEN, **extra).eval()
    torch.nn.init.normal_(m.out_proj.weight, std=0.5)
    return m


def _reference_block(block: Block, x, mask):
    """Today's block written out by hand: x + o(attn(q, k, v)); x + down(silu(gate) * up)."""
    a = block.attn
    B, L, C = x.shape

    def heads(t):
        return t.view(B, L, a.n_heads, a.head_dim).transpose(1, 2)

    h = block.norm1(x)
    q, k, v = heads(a.q_proj(h)), heads(a.k_proj(h)), heads(a.v_proj(h))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, L, C)
    x = x + a.o_proj(o)
    return x + block.mlp(block.norm2(x))


def test_every_option_off_is_the_plain_block_bit_for_bit():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 64)
    mask = torch.ones(9, 9).tril().bool()
    plain = Block(64, 4)
    assert torch.equal(plain(x, mask=mask), _reference_block(plain, x, mask))
    for options in ({"sgt": {}}, {"itt": {"steps": 1}}, {"itt": {"steps": 3}}):
        other = Block(64, 4, **options)
        other.load_state_dict(plain.state_dict(), strict=False)
        if "itt" in options:
            set_thinking_steps(other, 1)
        other.train()  # SGT measures entropy in training, but does not loop before selection
        assert torch.equal(other(x, mask=mask), plain(x, mask=mask)), options


def test_model_with_options_off_equals_plain_model():
    plain = _model()
    inputs = [torch.randn(2, 3, h, w, 8) for h, w in plain.scales]
    ref = plain(["a", "b"], inputs)
    for extra in (dict(sgt=True), dict(itt_layers=[1, 2], itt_steps=1)):
        m = _model(**extra)
        m.load_state_dict(plain.state_dict(), strict=False)
        assert torch.equal(m(["a", "b"], inputs), ref), extra


def test_head_subset_matches_all_heads_with_the_others_zeroed():
    torch.manual_seed(0)
    attn = SelfAttention(64, 4, qk_norm=True)
    x = torch.randn(2, 7, 64)
    kept = torch.tensor([1, 3])
    zeroed = SelfAttention(64, 4, qk_norm=True)
    zeroed.load_state_dict(attn.state_dict())
    with torch.no_grad():
        for h in (0, 2):
            rows = slice(16 * h, 16 * (h + 1))
            for p in (zeroed.q_proj, zeroed.k_proj, zeroed.v_proj):
                p.weight[rows] = 0
            zeroed.o_proj.weight[:, rows] = 0
    mask = torch.ones(7, 7).tril().bool()
    torch.testing.assert_close(attn(x, mask=mask, heads=kept), zeroed(x, mask=mask), rtol=1e-5, atol=1e-6)
    # the subset really computes fewer heads
    q, _, _ = attn.project(x, heads=kept)
    assert q.shape[1] == 2


def test_last_query_entropy_is_normalised():
    q = torch.zeros(3, 2, 5, 8)
    k = torch.randn(3, 2, 5, 8)
    assert torch.allclose(last_query_entropy(q, k), torch.ones(2))  # uniform over 5 keys -> 1
    q = torch.zeros(1, 1, 4, 8)
    q[..., -1, 0] = 100.0
    k = torch.zeros(1, 1, 4, 8)
    k[..., 2, 0] = 1.0
    assert last_query_entropy(q, k).item() < 1e-3  # all attention on one key -> 0
    # a mask that lets the last query see 2 of 4 keys normalises by log 2
    mask = GroupMask(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]),
                     torch.tensor([[True, False], [False, True]]))
    assert torch.allclose(last_query_entropy(torch.zeros(1, 1, 4, 8), torch.randn(1, 1, 4, 8), mask),
                          torch.ones(1))


def _loops(entropies: dict[int, float], heads=4):
    loops = {}
    for layer, e in entropies.items():
        loops[layer] = SGTLoop(heads, keep_heads=2, ema=0.0)
        loops[layer].entropy.copy_(torch.tensor([e, e + 0.01, e - 0.01, e + 0.02]))
    return loops


def test_scheduler_grows_deep_to_shallow_with_windows_and_limits():
    # layers 1..7; the three highest-entropy layers are always 2, 5, 6 then 1, 3, 4 ...
    loops = _loops({1: 0.5, 2: 0.9, 3: 0.4, 4: 0.3, 5: 0.8, 6: 0.85, 7: 0.1})
    sched = SGTScheduler(warmup=10, window=5, top_k=3, max_layers=3)
    events = {s: sched.step(loops, s, total_steps=100) for s in range(40)}
    picked = {s: layer for s, layer in events.items() if layer is not None}
    # first at the warm-up: deepest of the top-3 {2, 6, 5} = 6; a window later the deepest top-3
    # layer shallower than 6 = 5; then 2; then the limit of 3 layers fixes the structure
    assert picked == {10: 6, 15: 5, 20: 2}
    assert bool(sched.fixed) and not any(bool(lp.probing) for lp in loops.values())
    assert sched.trace(loops) == [{"layer": 6, "heads": [1, 3], "step": 10, "subset_from": 15},
                                  {"layer": 5, "heads": [1, 3], "step": 15, "subset_from": 20},
                                  {"layer": 2, "heads": [1, 3], "step": 20, "subset_from": 25}]
    assert [lp.looping.item() for lp in loops.values()] == [False, True, False, False, True, True, False]


def test_scheduler_stops_when_no_shallower_layer_is_top_k_and_entropy_moves_picks():
    loops = _loops({1: 0.1, 2: 0.2, 3: 0.9, 4: 0.8, 5: 0.7})
    sched = SGTScheduler(warmup=0.1, window=0.05, top_k=3, max_layers=3)  # fractions of 100 steps
    assert [sched.step(loops, s, 100) for s in range(9)] == [None] * 9
    assert sched.step(loops, 10, 100) == 5
    # after the pick the entropy ranking changes: layer 1 rises into the top-3
    loops[1].entropy.fill_(0.95)
    assert [sched.step(loops, s, 100) for s in range(11, 15)] == [None] * 4
    assert sched.step(loops, 15, 100) == 4  # deepest top-3 {1, 3, 4} shallower than 5
    assert sched.step(loops, 20, 100) == 3
    assert sched.layers == [5, 4, 3] and sched.step(loops, 25, 100) is None and bool(sched.fixed)
    loops = _loops({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.9, 5: 0.8})
    sched = SGTScheduler(warmup=1, window=1, top_k=2, max_layers=3)
    assert [sched.step(loops, s, 10) for s in range(4)] == [None, 5, 4, None]
    assert bool(sched.fixed) and sched.layers == [5, 4]  # nothing in the top-2 is shallower than 4


def test_head_decay_is_linear_then_only_kept_heads_loop():
    loop = _loops({1: 0.5})[1]
    loop.select(step=100, window=4)
    assert loop.kept.tolist() == [1, 3]
    scales = []
    for s in range(100, 106):
        loop.update(s)
        scales.append((loop.scale.tolist(), bool(loop.subset)))
    assert scales[0] == ([1.0, 1.0, 1.0, 1.0], False)
    assert scales[2] == ([0.5, 1.0, 0.5, 1.0], False)
    assert scales[4] == ([0.0, 1.0, 0.0, 1.0], True) and scales[5][1]


def test_entropy_ema_over_steps_and_checkpointing_counts_once():
    torch.manual_seed(0)
    block = Block(64, 4, sgt={"ema": 0.5}, checkpointing=True).train()
    x = torch.randn(2, 9, 64, requires_grad=True)
    block(x).sum().backward()  # the backward recomputes the block: the entropy is counted once
    assert block.sgt._count == 1
    e1 = block.sgt._sum.clone()
    block.sgt.finalize()
    assert torch.allclose(block.sgt.entropy, 0.5 * e1) and block.sgt._count == 0
    assert ((e1 > 0) & (e1 <= 1)).all()


def _looping_model(subset: bool, **extra):
    m = _model(sgt=True, **extra)
    loops = m.sgt_loops()
    loops[3].select(step=0, window=4)
    loops[3].update(2 if not subset else 4)
    loops[2].select(step=0, window=4)
    loops[2].update(4)
    return m


def _cached_logits(m, cond, inputs):
    cache = m.new_cache(len(cond))
    m.prefill(cache, cond)
    out = []
    for t in range(m.config.num_frames):
        for k in range(len(m.scales)):
            out.append(m.forward_group(cache, None if (t, k) == (0, 0) else inputs[k][:, t], t, k))
    return torch.cat(out, 1)


@pytest.mark.parametrize("kind", ["sgt_decaying", "sgt_subset", "itt", "itt_window", "loop"])
def test_cached_decoding_equals_full_forward(kind):
    if kind.startswith("sgt"):
        m = _looping_model(kind == "sgt_subset")
    else:
        extra = (dict(loop_layers=[1, 2]) if kind == "loop" else
                 dict(itt_layers=[1, 3], itt_steps=3, frame_window=1 if kind == "itt_window" else None))
        m = _model(**extra)
    cond = ["red", "blue"]
    inputs = [torch.randn(2, 3, h, w, 8) for h, w in m.scales]
    full = m(cond, inputs)
    torch.testing.assert_close(_cached_logits(m, cond, inputs), full, rtol=1e-4, atol=1e-5)
    plain = VideoAR(**GEN).eval()
    plain.load_state_dict(m.state_dict(), strict=False)
    assert not torch.allclose(plain(cond, inputs), full, atol=1e-4)  # the option does change the model


def test_itt_routes_per_group_and_steps_are_elastic():
    scores = torch.tensor([[0.0, 5.0, 1.0, 2.0, 3.0, -1.0, 4.0]])
    groups = torch.tensor([0, 1, 1, 2, 2, 2, 2])
    # group 0: its only token; group 1 (2 tokens): ceil(0.5*2)=1 -> token 1; group 2: 2 best of 4
    assert route(scores, 0.5, groups).tolist() == [[0, 1, 4, 6]]
    assert route(scores, 0.5, None).tolist() == [[1, 3, 4, 6]]
    m = _model(itt_layers=[1, 2], itt_steps=3)
    inputs = [torch.randn(2, 3, h, w, 8) for h, w in m.scales]
    outs = []
    for steps in (3, 2, 1):
        set_thinking_steps(m, steps)
        outs.append(m(["a", "b"], inputs))
    plain = VideoAR(**GEN).eval()
    plain.load_state_dict(m.state_dict(), strict=False)
    assert torch.equal(outs[2], plain(["a", "b"], inputs))  # one step = the plain model
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


def test_itt_scorer_and_step_weights_learn():
    torch.manual_seed(0)
    block = Block(32, 4, itt={"steps": 2, "frac": 0.5})
    block(torch.randn(2, 6, 32)).square().sum().backward()
    assert block.itt.scorer.weight.grad.abs().sum() > 0 and block.itt.alpha.grad.abs().sum() > 0
    assert block.itt.step_embed.grad.abs().sum() > 0


def test_sgt_state_survives_save_pretrained(tmp_path):
    m = _looping_model(True)
    m.save_pretrained(tmp_path)
    back = VideoAR.from_pretrained(tmp_path).eval()
    inputs = [torch.randn(1, 3, h, w, 8) for h, w in m.scales]
    assert back.sgt_loops()[3].kept.tolist() == m.sgt_loops()[3].kept.tolist()
    assert torch.equal(back(["x"], inputs), m(["x"], inputs))


def test_plot_trace(tmp_path):
    path = tmp_path / "trace.png"
    plot_trace([{"layer": 3, "heads": [0, 2], "step": 10, "subset_from": 20}], 4, 40, path)
    assert path.stat().st_size > 1000


def test_kv_cache_child_is_created_once():
    cache = KVCache(2, 4, 10, 8, torch.float32, "cpu")
    a = cache.child("x", 2)
    assert cache.child("x") is a and a.k.shape == (2, 2, 10, 8)
    assert math.isclose(a.max_len, 10)


def _fit(tmp_path, name, max_steps, resume=None, every=None):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from mmgen.ar.training import ARModule
    from mmgen.data import MovingShapes

    pl.seed_everything(0)
    module = ARModule(preset=None, generator={**GEN, "bits": 16, "scales": [[1, 1], [2, 2], [4, 4]], "num_frames": 2,
                                              "max_text_len": 88, "sgt": True, "sgt_warmup": 2, "sgt_window": 2},
                      tokenizer_config=dict(base_channels=8, latent_dim=16, sample_size=32, scales=[1, 2, 4],
                                            num_frames=5),
                      cond_dropout=0.0, corruption={"enabled": False}, warmup_steps=1, ema_decay=0.5)
    callbacks = [pl.callbacks.ModelCheckpoint(dirpath=tmp_path / name, every_n_train_steps=every,
                                              save_top_k=-1)] if every else []
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks, default_root_dir=tmp_path / name,
                         enable_checkpointing=bool(every))
    data = DataLoader(MovingShapes(4, size=32, num_frames=5, seed=0), batch_size=4)
    trainer.fit(module, data, ckpt_path=resume, weights_only=True)
    return module


@pytest.mark.slow
def test_resuming_mid_schedule_continues_exactly(tmp_path):
    straight = _fit(tmp_path, "a", 7, every=5)
    loops = straight.model.sgt_loops()
    assert straight.model.sgt_scheduler.trace(loops)[:2] == [
        {"layer": 3, "heads": loops[3].kept.tolist(), "step": 2, "subset_from": 4},
        {"layer": 2, "heads": loops[2].kept.tolist(), "step": 4, "subset_from": 6}]
    # the checkpoint after step 5 is mid-window of the second selection
    ckpt = next((tmp_path / "a").glob("*step=5.ckpt"))
    resumed = _fit(tmp_path, "b", 7, resume=str(ckpt))
    a, b = straight.state_dict(), resumed.state_dict()
    for key in a:
        if "sgt" in key and "entropy" not in key:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
    assert (tmp_path / "b" / "sgt_trace.png").stat().st_size > 1000
    # the EMA copy exported by `mmgen ar export` loops the same heads
    assert torch.equal(resumed.ema.blocks[2].sgt.kept, resumed.model.blocks[2].sgt.kept)


def test_conflicting_depth_options_are_refused():
    for bad in (dict(sgt=True, itt_layers=[1]), dict(itt_layers=[1], loop_layers=[1]), dict(loop_layers=[4])):
        with pytest.raises(ValueError, match="depth options"):
            VideoAR(**GEN, **bad)
    with pytest.raises(ValueError, match="at most one"):
        Block(32, 4, sgt={}, repeat=2)
