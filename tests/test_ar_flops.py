"""FLOP counting on a tiny layout, by hand."""
from mmgen.ar.flops import forward_flops
from mmgen.ar.presets import preset_config


def test_forward_flops_by_hand():
    # class prefix (1 token), 2 frames, scales 1x1 and 2x2: L = 1 + 2*5 = 11, visual 10.
    cfg = dict(bits=4, scales=[[1, 1], [2, 2]], num_frames=2, width=64, depth=2, heads=4,
               mlp_ratio=1.0, cond="class", num_classes=3, head="bits")
    f = forward_flops(cfg)
    # groups: prefix(1), f0s0(1), f0s1(4), f1s0(1), f1s1(4); token of group g sees all tokens of groups <= g
    pairs = 1 * 1 + 1 * 2 + 4 * 6 + 1 * 7 + 4 * 11
    assert f["allowed_pairs"] == pairs == 78
    per_layer = 4 * 64 * 64 + 3 * 64 * 64  # hidden = 64 (ratio 1, multiple of 64)
    dense = 2 * (11 * 2 * per_layer + 10 * (4 * 64 + 64 * 4))
    assert f["dense"] == dense
    assert f["attention"] == 2 * 2 * 2 * 64 * pairs
    assert f["train_per_token"] == 3 * (dense + f["attention"]) / 11


def test_attention_counts_fewer_pairs_than_dense():
    f = forward_flops(preset_config("videoar-l"))
    L = f["tokens"]
    # block-causal: more than token-causal (groups see themselves fully), far less than dense
    assert L * (L + 1) // 2 < f["allowed_pairs"] < 0.6 * L * L
    # 24 layers of width 1536 dominate: ~2 * 0.9e9 FLOPs per token
    assert 1.6e9 < f["dense"] / L < 2.0e9


def test_depth_options_add_their_flops():
    cfg = dict(bits=4, scales=[[1, 1], [2, 2]], num_frames=2, width=64, depth=2, heads=4,
               mlp_ratio=1.0, cond="class", num_classes=3, head="bits")
    base = forward_flops(cfg)
    assert base["extra"] == base["probe"] == 0
    layer = (base["dense"] - 2 * 10 * (4 * 64 + 64 * 4)) // 2 + base["attention"] // 2
    assert forward_flops({**cfg, "loop_layers": [1]})["extra"] == layer  # one more whole layer
    # ITT, frac 0.5: groups of 1,1,4,1,4 tokens route 1,1,2,1,2 = 7 tokens; routed pairs by hand
    routed_pairs = 1 * 1 + 1 * 2 + 2 * 4 + 1 * 5 + 2 * 7
    per_layer = 4 * 64 * 64 + 3 * 64 * 64
    itt = forward_flops({**cfg, "itt_layers": [1], "itt_steps": 3, "itt_frac": 0.5})
    assert itt["extra"] == 2 * 2 * (11 * 64 + 7 * per_layer + 2 * 64 * routed_pairs)
    # SGT: a loop of 2 of 4 heads costs half the attention part of a layer (projections + pairs)
    sgt = forward_flops(cfg, loop_heads=[2], probing_layers=1)
    assert sgt["extra"] == 2 * (11 * 4 * 64 * 32 + 2 * 32 * 78)
    assert sgt["probe"] == 2 * 64 * 11
    assert sgt["train_per_token"] == (3 * sgt["total"] + sgt["probe"]) / 11


def test_sgt_state_follows_the_model():
    from mmgen.ar import VideoAR
    from mmgen.ar.flops import sgt_state

    m = VideoAR(bits=4, scales=[[1, 1]], num_frames=2, width=64, depth=3, heads=4, cond="class",
                num_classes=3, sgt=True)
    assert sgt_state(m) == {"loop_heads": [], "probing_layers": 2}
    m.sgt_loops()[2].select(step=0, window=2)
    assert sgt_state(m)["loop_heads"] == [4]
    m.sgt_loops()[2].update(2)
    assert sgt_state(m)["loop_heads"] == [2]
