"""Blink: saliency / region / hysteresis logic, exactness against the vanilla pass, TokenSR."""
import math

import pytest
import torch

from mmgen.mllm.blink import (Blink, BlinkConfig, BlinkTrace, concentration, gather_region, hysteresis,
                              region_scores, saliency, super_resolve)
from mmgen.mllm.data import VQADataset
from mmgen.mllm.model import TinyLlava
from mmgen.mllm.text import batch_encode
from mmgen.mllm.tokensr import TokenSR, TokenSRBank, interpolate_region

TINY = dict(image_size=32, patch=8, vit_dim=32, vit_depth=1, vit_heads=1, dim=32, depth=4, heads=1, mlp_ratio=2.0,
            visual_pos_embed=True)  # the architecture `mmgen vqa fit` trains


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyLlava(**TINY).eval()


@pytest.fixture(scope="module")
def batch():
    ds = VQADataset(6, "finegrained", size=32, hires=64)
    items = [ds[i] for i in range(6)]
    ids, lengths = batch_encode([it["question"] for it in items], 16)
    return torch.stack([it["image"] for it in items]), ids, lengths


def _bank(model, layers=(1, 3)):
    torch.manual_seed(1)
    bank = TokenSRBank(tuple(range(*layers)), model.config.dim, hidden=8)
    for p in bank.parameters():  # non-trivial weights so TokenSR differs from interpolation
        torch.nn.init.normal_(p, std=0.1)
    return bank.eval()


# ------------------------------------------------------------------ pure logic
def test_saliency_is_a_distribution_and_follows_the_key_aligned_with_the_query():
    q = torch.zeros(2, 3, 4)
    q[..., 0] = 5.0
    k = torch.zeros(2, 3, 6, 4)
    k[:, :, 4, 0] = 5.0  # key 4 aligned with the query in every head
    s = saliency(q, k)
    assert s.shape == (2, 6)
    torch.testing.assert_close(s.sum(-1), torch.ones(2))
    assert (s.argmax(-1) == 4).all()


def test_saliency_averages_heads():
    q = torch.randn(1, 2, 8)
    k = torch.randn(1, 2, 5, 8)
    per_head = [saliency(q[:, h:h + 1], k[:, h:h + 1]) for h in range(2)]
    torch.testing.assert_close(saliency(q, k), (per_head[0] + per_head[1]) / 2)


def test_region_scores_sum_tiles_row_major():
    sal = torch.arange(16.0).reshape(1, 16)  # 4x4 grid, value = r*4+c
    regions = region_scores(sal, (4, 4), 2)
    # tile (0,0): 0+1+4+5, (0,1): 2+3+6+7, (1,0): 8+9+12+13, (1,1): 10+11+14+15
    assert regions.tolist() == [[10.0, 18.0, 42.0, 50.0]]
    with pytest.raises(ValueError, match="not divisible"):
        region_scores(sal, (4, 4), 3)


def test_concentration_ratio_and_top():
    rho, top = concentration(torch.tensor([[1.0, 1.0, 6.0, 2.0], [1.0, 1.0, 1.0, 1.0]]))
    torch.testing.assert_close(rho, torch.tensor([0.6, 0.25]))
    assert top[0] == 2


def test_hysteresis_expand_keep_drop():
    tau_exp, tau_drop = 0.5, 0.2
    active = torch.zeros(1, dtype=torch.bool)
    states = []
    for rho in [0.3, 0.6, 0.4, 0.25, 0.1, 0.3, 0.55]:
        active, expand, drop = hysteresis(active, torch.tensor([rho]), tau_exp, tau_drop)
        states.append((bool(active), bool(expand), bool(drop)))
    assert [s[0] for s in states] == [False, True, True, True, False, False, True]
    assert [s[1] for s in states] == [False, True, False, False, False, False, True]
    assert [s[2] for s in states] == [False, False, False, False, True, False, False]


def test_hysteresis_no_drop_keeps_forever():
    active = torch.ones(2, dtype=torch.bool)
    new, _, drop = hysteresis(active, torch.tensor([0.0, 0.9]), 0.5, 0.2, allow_drop=False)
    assert new.all() and not drop.any()


def test_gather_region_picks_the_tile_cells():
    vis = torch.arange(16.0).reshape(1, 16, 1).repeat(2, 1, 1)  # token value = r*4+c
    tokens, r0, c0 = gather_region(vis, (4, 4), 2, torch.tensor([3, 1]))
    assert tokens.shape == (2, 1, 2, 2)
    assert tokens[0, 0].tolist() == [[10.0, 11.0], [14.0, 15.0]] and (r0[0], c0[0]) == (2, 2)
    assert tokens[1, 0].tolist() == [[2.0, 3.0], [6.0, 7.0]] and (r0[1], c0[1]) == (0, 2)


def test_config_validation():
    with pytest.raises(ValueError, match="tau_drop"):
        BlinkConfig(tau_exp=0.1, tau_drop=0.2)
    with pytest.raises(ValueError, match="mode"):
        BlinkConfig(mode="magic")
    with pytest.raises(ValueError, match="TokenSR"):
        Blink(BlinkConfig(mode="tokensr"), None)


def test_tokensr_serves_only_the_region_and_factor_it_was_trained_for(tmp_path):
    TokenSRBank((1, 2), 16, hidden=8, region=1).save_pretrained(tmp_path / "sr")
    bank = TokenSRBank.from_pretrained(tmp_path / "sr")
    assert bank.config.region == 1
    Blink(BlinkConfig(region=1), bank)
    with pytest.raises(ValueError, match="trained for region 1 but BlinkConfig.region is 2"):
        Blink(BlinkConfig(region=2), bank)
    with pytest.raises(ValueError, match="factor"):
        Blink(BlinkConfig(region=1, factor=3), bank)
    Blink(BlinkConfig(region=2), TokenSRBank((1, 2), 16, hidden=8))  # not recorded (older folders): allowed


# ------------------------------------------------------------------ exactness and behaviour on the MLLM
def test_blink_never_expanding_is_bit_identical_to_vanilla(model, batch):
    images, ids, lengths = batch
    with torch.no_grad():
        vanilla = model(images, ids, lengths)
        for mode, bank in [("interp", None), ("tokensr", _bank(model))]:
            cfg = BlinkConfig(layers=(1, 3), mode=mode, tau_exp=math.inf, tau_drop=0.0)
            out = Blink(cfg, bank).run(model, model.prepare(images, ids, lengths))
            assert torch.equal(out, vanilla)


def test_blink_expanding_changes_the_answer_logits_and_traces(model, batch):
    images, ids, lengths = batch
    trace = BlinkTrace()
    cfg = BlinkConfig(layers=(1, 3), mode="tokensr", tau_exp=0.0, tau_drop=0.0)
    with torch.no_grad():
        vanilla = model(images, ids, lengths)
        out = Blink(cfg, _bank(model)).run(model, model.prepare(images, ids, lengths), trace)
    assert trace.layers == [1, 2]
    assert all(a.all() for a in trace.active)  # rho > 0 always -> expanded from the first scanned layer on
    assert (trace.tiles[0] == trace.top[0]).all()  # the salient tile is the one expanded
    assert (trace.tiles[1] == trace.tiles[0]).all()  # kept, not re-chosen, while expanded
    assert not torch.allclose(out, vanilla)


def test_expand_then_drop_restores_the_sequence(model, batch):
    images, ids, lengths = batch
    blink = Blink(BlinkConfig(layers=(1, 3), mode="interp", region=2, factor=2), None)
    state = model.prepare(images, ids, lengths)
    B = len(images)
    top = torch.zeros(B, dtype=torch.long)
    everyone = torch.ones(B, dtype=torch.bool)
    expanded = blink._edit(model, 1, state, everyone, everyone, top)
    assert expanded.n_extra == 16 and expanded.h.shape[1] == state.h.shape[1] + 16
    assert torch.equal(expanded.h[:, :state.n_visual], state.h[:, :state.n_visual])
    assert torch.equal(expanded.h[:, expanded.text_start:], state.h[:, state.text_start:])
    dropped = blink._edit(model, 2, expanded, ~everyone, ~everyone, top)
    assert dropped.n_extra == 0 and torch.equal(dropped.h, state.h) and torch.equal(dropped.pos, state.pos)


def test_batched_blink_equals_per_sample_blink(model, batch):
    """Decisions are per sample: padding other samples' slots must not change anyone's answer.  The
    threshold is the median first-layer rho, so the batch holds samples that expand and samples
    that do not (asserted), and the single-batch path gives the latter invisible slots."""
    images, ids, lengths = batch
    probe = BlinkTrace()
    with torch.no_grad():
        Blink(BlinkConfig(layers=(1, 3), mode="interp", tau_exp=math.inf), None).run(
            model, model.prepare(images, ids, lengths), probe)
    tau_exp = float(probe.rho[0].median())
    blink = Blink(BlinkConfig(layers=(1, 3), mode="interp", tau_exp=tau_exp, tau_drop=0.0, split_batches=False), None)
    with torch.no_grad():
        trace = BlinkTrace()
        together = blink.run(model, model.prepare(images, ids, lengths), trace)
        alone = torch.cat([blink.run(model, model.prepare(images[i:i + 1], ids[i:i + 1, :lengths[i]], lengths[i:i + 1]))
                           for i in range(len(images))])
        vanilla = model(images, ids, lengths)
    expanded = torch.stack(trace.active).any(0)  # at either scanned layer
    assert bool(expanded.any()) and not bool(expanded.all())  # the padded case happened
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[~expanded], vanilla[~expanded], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[expanded], vanilla[expanded], atol=1e-4)


def test_scans_that_cannot_change_any_state_are_skipped(model, batch, monkeypatch):
    """Expanding everyone at layer 1 with tau_drop = 0 leaves nothing for layer 2's scan to decide:
    without a trace to fill it is skipped, and the answers are those of the full scan."""
    images, ids, lengths = batch
    blink = Blink(BlinkConfig(layers=(1, 3), mode="interp", tau_exp=0.0, tau_drop=0.0), None)
    with torch.no_grad():
        traced = blink.run(model, model.prepare(images, ids, lengths), BlinkTrace())
        calls = []
        real = model.query_keys
        monkeypatch.setattr(model, "query_keys", lambda i, *a, **k: calls.append(i) or real(i, *a, **k))
        fast = blink.run(model, model.prepare(images, ids, lengths))
    assert calls == [1]
    assert torch.equal(fast, traced)


def _scan_rhos(model, batch) -> torch.Tensor:
    """rho of every sample at each of layers 1-3 without expanding (thresholds are picked from these)."""
    probe = BlinkTrace()
    with torch.no_grad():
        Blink(BlinkConfig(layers=(1, 4), mode="interp", tau_exp=math.inf, tau_drop=0.0), None).run(
            model, model.prepare(*batch), probe)
    return torch.cat(probe.rho)


def test_split_batches_equals_the_single_batch_reference(model, batch):
    """Fast path: samples that expand, drop or stay run on as sub-batches; answers and trace must
    match the reference that carries invisible slots for the unexpanded samples."""
    images, ids, lengths = batch
    rhos = _scan_rhos(model, batch)
    seen = {"split": False, "drop": False, "late expand": False}
    for q_exp, q_drop in [(0.5, 0.45), (0.4, 0.35), (0.6, 0.2)]:
        tau_exp, tau_drop = float(rhos.quantile(q_exp)), float(rhos.quantile(q_drop))
        outs, traces = [], []
        for split in (False, True):
            cfg = BlinkConfig(layers=(1, 4), mode="tokensr", tau_exp=tau_exp, tau_drop=tau_drop, split_batches=split)
            trace = BlinkTrace()
            with torch.no_grad():
                outs.append(Blink(cfg, _bank(model, (1, 4))).run(model, model.prepare(images, ids, lengths), trace))
            traces.append(trace)
        torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
        for a, b in zip(traces[0].active + traces[0].tiles, traces[1].active + traces[1].tiles):
            assert torch.equal(a, b)
        torch.testing.assert_close(torch.stack(traces[1].rho), torch.stack(traces[0].rho))
        active = torch.stack(traces[1].active)  # [layers, B]
        seen["split"] |= bool(active.any(1).any() and not active.all(1).all())
        seen["drop"] |= bool((active[:-1] & ~active[1:]).any())
        seen["late expand"] |= bool((~active[:-1] & active[1:]).any())
    assert all(seen.values()), seen  # every kind of regrouping was exercised


def test_random_region_ablation_ignores_saliency(model, batch):
    images, ids, lengths = batch
    cfg = BlinkConfig(layers=(1, 3), mode="interp", tau_exp=0.0, tau_drop=0.0, region_choice="random", seed=3)
    trace_r, trace_s = BlinkTrace(), BlinkTrace()
    with torch.no_grad():
        Blink(cfg, None).run(model, model.prepare(images, ids, lengths), trace_r)
        Blink(BlinkConfig(layers=(1, 3), mode="interp", tau_exp=0.0, tau_drop=0.0), None).run(
            model, model.prepare(images, ids, lengths), trace_s)
    salient = concentration(region_scores(trace_r.saliency[0], model.grid, cfg.region))[1]
    assert torch.equal(salient, trace_s.top[0])
    assert not torch.equal(trace_r.top[0], trace_s.top[0])


def test_appended_positions_are_sub_grid_positions_inside_the_region(model):
    r0, c0 = torch.tensor([2]), torch.tensor([0])
    pos = model.region_positions(r0, c0, size=2, factor=2)[0]
    vis = model.visual_positions(*model.grid)
    s = model.config.pos_stride
    assert pos.shape == (16, 3)
    assert pos[0].tolist() == vis[2 * model.grid[1] + 0].tolist()  # sub-cell (0,0) = its cell
    assert pos[:, 1].min() == s * 2 and pos[:, 1].max() == s * 2 + 3  # rows 2..3 -> fine rows 4..7
    assert len({tuple(p) for p in pos.tolist()}) == 16  # distinct
    with pytest.raises(ValueError, match="pos_stride"):
        model.region_positions(r0, c0, size=2, factor=3)


# ------------------------------------------------------------------ TokenSR
def test_fresh_tokensr_equals_interpolation_and_upsamples():
    sr = TokenSR(dim=8, hidden=4, factor=2)
    x = torch.randn(3, 8, 2, 2)
    y = sr(x)
    assert y.shape == (3, 8, 4, 4)
    torch.testing.assert_close(y, interpolate_region(x, 2))


def test_tokensr_learns_a_mapping():
    torch.manual_seed(0)
    sr = TokenSR(dim=4, hidden=16, factor=2)
    x = torch.randn(64, 4, 2, 2)
    target = -interpolate_region(x, 2)  # something interpolation alone cannot give
    opt = torch.optim.Adam(sr.parameters(), lr=1e-2)
    first = torch.nn.functional.mse_loss(sr(x), target).item()
    for _ in range(150):
        loss = torch.nn.functional.mse_loss(sr(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_comparison_table_rows_are_consistent(model, capsys):
    from mmgen.mllm.evaluate import comparison, comparison_steps, print_table

    n, ticks = 10, []
    rows = [row for split in ("finegrained", "val")
            for row in comparison(model, _bank(model), BlinkConfig(layers=(1, 3), tau_exp=0.0, tau_drop=0.0),
                                  split, n=n, batch_size=5, seed=0, repeats=1, device=torch.device("cpu"),
                                  tick=lambda: ticks.append(1))]
    assert len(ticks) == 2 * comparison_steps(n, 5, 1)  # the progress count is exact
    variants = ["vanilla", "Blink-interp", "Blink", "random-region", "no-drop", "ViCrop"]
    assert [(r["split"], r["variant"]) for r in rows] == [(s, v) for s in ("finegrained", "val") for v in variants]
    for split_rows in (rows[:6], rows[6:]):
        vanilla = split_rows[0]
        assert vanilla["ratio"] == vanilla["flops_ratio"] == 1.0 and vanilla["expanded"] is None
        assert vanilla["fixed"] == vanilla["broken"] == 0
        assert split_rows[-1]["expanded"] is None and split_rows[-1]["flops_ratio"] > 1.5  # ViCrop runs twice
        for r in split_rows[1:]:
            assert r["variant"] == "ViCrop" or r["expanded"] == 1.0  # tau_exp = 0: every question expands
            assert r["flops_ratio"] > 1.0  # appended tokens and the saliency scan are extra work
            assert round((r["acc"]["all"] - vanilla["acc"]["all"]) * n) == r["fixed"] - r["broken"]
    print_table(rows)
    assert "fixed/broken vs vanilla" in capsys.readouterr().out


def test_sign_test_matches_the_binomial_tails():
    from mmgen.mllm.evaluate import sign_test

    assert sign_test(0, 0) == 1.0
    assert sign_test(3, 3) == 1.0
    assert abs(sign_test(5, 0) - 2 / 32) < 1e-12  # all five the same way: 2 * (1/2)^5
    assert abs(sign_test(9, 1) - 2 * 11 / 1024) < 1e-12  # P(<= 1 of 10) = 11/1024, both tails
    assert sign_test(1, 9) == sign_test(9, 1)


def test_super_resolve_moves_position_embeddings_to_the_sub_cells(model):
    """The upsampler sees content only; each new token carries its own sub-cell's embedding."""
    r0, c0 = torch.tensor([0, 2]), torch.tensor([2, 0])
    cells = model.region_positions(r0, c0, 2, 1)
    content = torch.randn(2, 1, model.config.dim).expand(-1, 4, -1)  # the same content in all four cells
    region = (content + model.position_embedding(cells)).transpose(1, 2).reshape(2, -1, 2, 2)
    seen = []
    sr, pos = super_resolve(model, lambda x: seen.append(x) or interpolate_region(x, 2), region, r0, c0, 2)
    torch.testing.assert_close(seen[0], content.transpose(1, 2).reshape(2, -1, 2, 2))
    torch.testing.assert_close(pos, model.region_positions(r0, c0, 2, 2))
    torch.testing.assert_close(sr, content[:, :1].expand(-1, 16, -1) + model.position_embedding(pos))
