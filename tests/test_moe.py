"""Sparse MoE FFN: kernels agree, dispatch equals per-token routing, loss-free balancing moves the
bias, the dense block is unchanged, VideoAR saves/loads/validates its expert layout and elastic settings."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmgen.ar import VideoAR
from mmgen.ar.flops import forward_flops
from mmgen.nn import Block, Rope3D
from mmgen.nn.elastic import parse_setting
from mmgen.nn.moe import (SparseMoE, aux_loss, grouped_mm_available, max_violation, moe_layers,
                          update_routing_bias)

DATA = Path(__file__).parent / "data"


def _moe(**kw):
    torch.manual_seed(0)
    args = dict(dim=32, n_experts=6, top_k=2, dense_hidden=128, n_shared=1)
    args.update(kw)
    return SparseMoE(**args)


def test_dense_block_equals_main():
    # block_main.safetensors: state dict, input and output of Block(32, 4, qk_norm=True) written by main's code.
    # Equal up to float rounding: another CPU's kernels (AVX2 vs AVX-512) round differently, by ~1 ulp.
    t = load_file(DATA / "block_main.safetensors")
    block = Block(32, 4, 4.0, qk_norm=True).eval()
    block.load_state_dict({k[len("block."):]: v for k, v in t.items() if k.startswith("block.")}, strict=True)
    pos = torch.stack([torch.arange(10)] * 3, -1)
    with torch.no_grad():
        y = block(t["x"], Rope3D(8)(pos))
    torch.testing.assert_close(y, t["y"], rtol=1e-6, atol=1e-6)


def test_shipped_dense_model_loads_strictly_with_the_new_fields():
    m = VideoAR.from_pretrained(str(Path(__file__).parents[1] / "mmgen/assets/default/transformer"))
    assert m.config.ffn == "dense" and not moe_layers(m)


def test_loop_kernel_equals_per_token_reference():
    m = _moe()
    x = torch.randn(2, 7, 32)
    choice, gates, _ = m.route(x.reshape(-1, 32))
    ref = torch.zeros(14, 32)
    for n in range(14):
        for j in range(2):
            e = int(choice[n, j])
            h = torch.nn.functional.silu(x.reshape(-1, 32)[n] @ m.w_gate[e]) * (x.reshape(-1, 32)[n] @ m.w_up[e])
            ref[n] += gates[n, j] * (h @ m.w_down[e])
    ref = ref + m.shared(x.reshape(-1, 32))
    m.kernel = "loop"
    assert torch.allclose(m(x).reshape(-1, 32), ref, atol=1e-6)


@pytest.mark.skipif(not grouped_mm_available(torch.device("cpu"), torch.float32, 32, 48),
                    reason="no grouped GEMM kernel for fp32 on this CPU build")
def test_grouped_gemm_matches_loop_forward_and_backward():
    x = torch.randn(3, 20, 32)
    outs = {}
    for kernel in ("loop", "grouped"):
        m = _moe(kernel=kernel, n_experts=8, expert_hidden=48)  # 48 * 4 bytes: 16-byte aligned
        xk = x.clone().requires_grad_()
        y = m(xk)
        (y * torch.linspace(-1, 1, 32)).sum().backward()
        outs[kernel] = (y, xk.grad, m.w_gate.grad, m.w_down.grad, m.router.weight.grad)
    for a, b in zip(outs["loop"], outs["grouped"]):
        assert (a - b).abs().max() <= 1e-5


def test_bias_picks_experts_but_gates_use_unbiased_scores():
    m = _moe()
    x = torch.randn(50, 32)
    m.expert_bias[3] = 10.0  # expert 3 always chosen
    choice, gates, scores = m.route(x)
    assert (choice == 3).any(-1).all()
    assert torch.allclose(gates, scores.gather(-1, choice) / scores.gather(-1, choice).sum(-1, keepdim=True))


def test_bias_update_follows_sign_of_load_gap_and_only_from_training_counts():
    m = _moe(bias_rate=0.01).train()
    m.expert_bias[0] = 5.0  # overloaded expert 0
    with torch.no_grad():
        m(torch.randn(40, 32))
    assert m.step_counts.sum() == 0  # no grad -> not a training step
    m(torch.randn(40, 32))
    counts = m.step_counts.clone()
    update_routing_bias(m)
    expected = 0.01 * torch.sign(counts.mean() - counts)
    assert torch.allclose(m.expert_bias - torch.tensor([5.0, 0, 0, 0, 0, 0]), expected, atol=1e-6)
    assert m.expert_bias[0] < 5.0 and m.step_counts.sum() == 0


def test_balance_counts_are_the_biased_choice_and_maxvio_uses_the_same_counts():
    m = _moe(bias_rate=0.01).train()
    m.expert_bias[:] = torch.tensor([0.0, 0.0, 0.0, 0.0, 3.0, 3.0])  # the bias alone forces experts 4, 5
    out = m(torch.randn(3, 7, 32))
    out.sum().backward()
    assert torch.equal(m.step_counts, torch.bincount(m.last_choice.flatten(), minlength=6).float())
    assert m.step_counts[4] == m.step_counts[5] == 21 and m.step_counts[:4].sum() == 0
    assert max_violation(m.step_counts) == pytest.approx(2.0)  # 21 / 7 - 1
    assert m.router.weight.grad[4:].abs().sum() > 0  # the gates of the chosen experts carry the gradient


def test_loss_free_balancing_reduces_max_violation():
    m = _moe(bias_rate=0.05, n_experts=8, n_shared=0).train()
    with torch.no_grad():
        m.router.weight[0] += 0.5  # a router skewed towards expert 0
    x = torch.randn(128, 32) + 1.0
    m(x)
    before = max_violation(m.step_counts)
    for _ in range(30):
        update_routing_bias(m)
        m(x)
    assert before > 0.5 and max_violation(m.step_counts) < before / 3


def test_sequence_aux_loss_has_router_gradient():
    m = _moe(aux_alpha=1e-2).train()
    m(torch.randn(2, 9, 32))
    loss = aux_loss(m)
    loss.backward()
    assert loss > 0 and m.router.weight.grad.abs().sum() > 0


def test_top_k_larger_than_experts_names_the_field():
    with pytest.raises(ValueError, match="moe_top_k"):
        VideoAR(ffn="moe", moe_experts=4, moe_top_k=5, width=32, heads=2, depth=1)


def _tiny_moe(**kw):
    cfg = dict(bits=8, scales=[[1, 1], [2, 2]], num_frames=2, width=32, depth=3, heads=2, max_text_len=4,
               ffn="moe", moe_experts=4, moe_top_k=2, moe_dense_layers=1)
    cfg.update(kw)
    torch.manual_seed(0)
    return VideoAR(**cfg)


def test_moe_videoar_save_load_roundtrip_and_layout_mismatch(tmp_path):
    m = _tiny_moe()
    moe_layers(m)[0].expert_bias.copy_(torch.arange(4.0))
    m.save_pretrained(tmp_path / "m")
    back = VideoAR.from_pretrained(str(tmp_path / "m"))
    assert torch.equal(moe_layers(back)[0].expert_bias, torch.arange(4.0))
    assert len(moe_layers(back)) == 2  # first layer dense
    other = _tiny_moe(moe_experts=6)
    with pytest.raises(ValueError, match="moe_experts"):
        other.load_state_dict(m.state_dict())


def test_routing_counts_per_modality():
    m = _tiny_moe()
    inputs = [torch.randn(2, 2, h, w, 8) for h, w in m.scales]
    m(["ab", "c"], inputs)
    counts = m.routing_counts()
    assert set(counts) == {"text", "scale0", "scale1"}
    # every token picks top_k experts in each of the 2 MoE layers
    assert counts["text"].shape == (2, 4) and (counts["text"].sum(1) == 2 * 4 * 2).all()
    assert (counts["scale1"].sum(1) == 2 * 2 * 4 * 2).all()


def test_flops_count_active_experts():
    dense = _tiny_moe(ffn="dense").config
    sparse = _tiny_moe(moe_experts=16).config
    fd, fs = forward_flops(dense), forward_flops(sparse)
    # hidden 128 -> experts of 48 (top-2 + 1 shared = 144 active) plus the router, in 2 of 3 layers
    extra = 2 * fd["tokens"] * 2 * (3 * 32 * (144 - 128) + 32 * 16)
    assert fs["dense"] - fd["dense"] == extra


def test_elastic_settings_validated_and_depth_runs_a_prefix():
    m = _tiny_moe(elastic=dict(depths=[2], top_ks=[1], expert_fraction=0.5)).eval()
    inputs = [torch.randn(1, 2, h, w, 8) for h, w in m.scales]
    torch.nn.init.normal_(m.out_proj.weight)
    with torch.no_grad():
        full = m(["ab"], inputs)
        m.set_submodel(depth=2, top_k=1, experts=2)
        sub = m(["ab"], inputs)
        assert {mm.active_top_k for mm in moe_layers(m)} == {1}
        m.blocks[2].mlp.w_down.add_(1.0)  # the third block is not run by the depth-2 sub-model
        assert torch.equal(sub, m(["ab"], inputs))
        m.set_submodel()
    assert not torch.equal(full, sub)
    with pytest.raises(ValueError, match="top_k=3 was not trained"):
        m.set_submodel(top_k=3)
    with pytest.raises(ValueError, match="elastic.depths"):
        _tiny_moe(elastic=dict(depths=[3]))
    assert parse_setting("depth=3,top_k=2") == {"depth": 3, "top_k": 2}
    with pytest.raises(ValueError, match="KEY=INT"):
        parse_setting("width=half")


def test_depth_only_submodel_does_not_move_the_balance_counts():
    """A depth sub-model keeps every layer's top-k and experts, but its forward is still a
    sub-model's: it must not add to the counts that move the bias, nor replace the full model's
    routing statistics (design: counts come from full-model training forwards only)."""
    m = _tiny_moe(elastic=dict(depths=[2])).train()
    inputs = [torch.randn(2, 2, h, w, 8) for h, w in m.scales]
    m(["ab", "cd"], inputs)
    counts = [mm.step_counts.clone() for mm in moe_layers(m)]
    last = [mm.last_choice.clone() for mm in moe_layers(m)]
    m.set_submodel(depth=2)
    m(["ab", "cd"], [torch.randn_like(x) for x in inputs])  # other inputs: a counted forward would show
    m.set_submodel()
    assert all(torch.equal(a, mm.step_counts) for a, mm in zip(counts, moe_layers(m)))
    assert all(torch.equal(a, mm.last_choice) for a, mm in zip(last, moe_layers(m)))
    m(["ab", "cd"], inputs)  # the full model counts again
    assert all(torch.equal(2 * a, mm.step_counts) for a, mm in zip(counts, moe_layers(m)))


def test_elastic_step_trains_full_and_sub_model_in_one_backward():
    import random

    from mmgen.ar.training import ARModule, ar_loss
    from mmgen.nn.elastic import ElasticConfig

    gen = dict(bits=16, scales=[[1, 1], [4, 4]], num_frames=2, width=32, depth=2, heads=2, max_text_len=16,
               ffn="moe", moe_experts=4, moe_top_k=2, elastic=dict(depths=[1], p_full_depth=0.0, weight=0.5))
    tok = dict(base_channels=8, latent_dim=16, sample_size=32, scales=[1, 4], num_frames=5)
    torch.manual_seed(0)
    module = ARModule(preset=None, generator=gen, tokenizer_config=tok, cond_dropout=0.0,
                      corruption={"enabled": False}).train()
    torch.nn.init.normal_(module.model.out_proj.weight, std=0.1)
    batch = {"latent": torch.randn(2, 16, 2, 4, 4), "caption": ["a red circle", "a blue square"]}
    step_loss, _ = module._step(batch, train=True)  # full model + the drawn depth-1 sub-model
    with torch.no_grad():
        _, targets, inputs, cond, _ = module._inputs(batch, train=False)
        full, _ = ar_loss(module.model(cond, inputs), targets, module.model)
        module.model.set_submodel(depth=1)
        sub, _ = ar_loss(module.model(cond, inputs), targets, module.model)
        module.model.set_submodel()
    assert step_loss.item() == pytest.approx(full.item() + 0.5 * sub.item(), rel=1e-5)
    step_loss.backward()
    assert module.model.blocks[1].attn.o_proj.weight.grad.abs().sum() > 0  # the full model's last block trains
    assert module.model.active_depth is None  # back to the full model after the step
    # ERNIE 5.0's draw: each axis keeps its full setting with its own probability (config, 0.8 here)
    rng, el = random.Random(0), ElasticConfig(depths=[1], top_ks=[1], expert_fraction=0.5)
    draws = [el.sample(rng, 8) for _ in range(4000)]
    for key in ("depth", "top_k", "experts"):
        assert abs(sum(key in d for d in draws) / 4000 - 0.2) < 0.03


def _ddp_worker(rank: int, port: int, out: str):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    m = _moe(bias_rate=0.01).train()  # same seed -> same weights on both ranks
    torch.manual_seed(100 + rank)  # different data per rank
    m(torch.randn(30, 32) + rank)
    local = m.step_counts.clone()
    update_routing_bias(m)
    gathered = [torch.zeros(6) for _ in range(2)]
    dist.all_gather(gathered, local)
    torch.save({"bias": m.expert_bias.clone(), "counts": torch.stack(gathered)}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_bias_update_all_reduces_counts_over_two_processes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    total = r0["counts"].sum(0)
    assert not torch.equal(r0["counts"][0], r0["counts"][1])  # the ranks saw different loads
    assert torch.equal(r0["bias"], r1["bias"])
    assert torch.allclose(r0["bias"], 0.01 * torch.sign(total.mean() - total))


@pytest.mark.slow
def test_training_moves_the_bias_after_each_step_and_trains_elastic_submodels():
    import lightning.pytorch as pl

    from mmgen.ar.training import ARModule
    from mmgen.data import MovingShapes

    gen = dict(bits=16, scales=[[1, 1], [4, 4]], num_frames=2, width=32, depth=2, heads=2, max_text_len=88,
               ffn="moe", moe_experts=4, moe_top_k=2, moe_bias_rate=0.01, moe_aux_alpha=1e-3,
               elastic=dict(depths=[1], top_ks=[1], p_full_depth=0.0, p_default_k=0.0))
    tok = dict(base_channels=8, latent_dim=16, sample_size=32, scales=[1, 4], num_frames=5)
    torch.manual_seed(0)
    module = ARModule(preset=None, generator=gen, tokenizer_config=tok, ema_decay=0.9, warmup_steps=1)
    data = torch.utils.data.DataLoader(MovingShapes(4, size=32, num_frames=5, seed=0), batch_size=2)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    bias = moe_layers(module.model)[0].expert_bias
    assert bias.abs().sum() > 0 and bias.abs().max() <= 2 * 0.01 + 1e-7  # two steps of +-rate
    assert torch.equal(moe_layers(module.ema)[0].expert_bias, bias)  # export (EMA) keeps the routing bias
    logged = trainer.callback_metrics
    assert {"train/elastic_loss", "train/moe_aux", "route/maxvio", "route/text_maxvio", "route/scale1_maxvio"} <= set(logged)
    assert all(m.active_top_k is None for m in moe_layers(module.model)) and module.model.active_depth is None


def test_mohd_activates_the_dense_hidden_size_with_shared_and_routed_groups():
    from mmgen.nn.mohd import mohd_kwargs

    kw = mohd_kwargs(256, expansion=2.0, shared_fraction=0.5, group=32)
    assert kw["shared_hidden"] + kw["top_k"] * kw["expert_hidden"] == 256  # matched active hidden
    assert kw["shared_hidden"] + kw["n_experts"] * kw["expert_hidden"] == 512  # 2x the parameters
    m = _tiny_moe(ffn="mohd", mohd_group=16, moe_dense_layers=0)
    assert forward_flops(m.config)["dense"] - forward_flops(_tiny_moe(ffn="dense").config)["dense"] == \
        2 * forward_flops(m.config)["tokens"] * 3 * 32 * m.sparse_ffn["n_experts"]  # only the routers
    # activation scaling: gates sum to 1 over the chosen groups, outputs are scaled by top_k
    layer = moe_layers(m)[0]
    assert layer.gate_scale == layer.top_k == 4
    plain, scaled = _moe(n_shared=0), _moe(n_shared=0, gate_scale=4.0)
    x = torch.randn(5, 32)
    assert torch.allclose(scaled(x), 4 * plain(x), atol=1e-6)
    with pytest.raises(ValueError, match="mohd_group"):
        mohd_kwargs(256, shared_fraction=0.5, group=48)


def test_moue_pool_is_shared_with_staggered_windows_and_depth_aware_balance():
    m = _tiny_moe(ffn="moue", depth=3, moe_dense_layers=0, moe_experts=4, moe_bias_rate=0.01).train()
    pool = m.universal_pool
    assert pool.pool_size == 6 and torch.equal(pool.exposure, torch.full((6,), 2.0))  # stride 2, 3 layers
    assert m.blocks[1].mlp.window_index.tolist() == [2, 3, 4, 5]
    assert sum(k.startswith("universal_pool.w_gate") for k in m.state_dict()) == 1  # saved once
    inputs = [torch.randn(2, 2, h, w, 8) for h, w in m.scales]
    torch.nn.init.normal_(m.out_proj.weight)
    m(["ab", "c"], inputs).sum().backward()
    assert pool.w_gate.grad.abs().sum() > 0
    counts = pool.step_counts.clone()
    update_routing_bias(m)
    load = counts / pool.exposure
    assert torch.allclose(pool.expert_bias, 0.01 * torch.sign(load.mean() - load))
    with pytest.raises(ValueError, match="grad_checkpointing"):
        _tiny_moe(ffn="moue", grad_checkpointing=True)


def test_moe_checkpoint_converts_to_an_equivalent_moue():
    from mmgen.nn.moue import convert_moe_to_moue

    m = _tiny_moe().eval()
    torch.nn.init.normal_(m.out_proj.weight)
    for layer in moe_layers(m):
        layer.expert_bias.normal_()
    inputs = [torch.randn(2, 2, h, w, 8) for h, w in m.scales]
    u = convert_moe_to_moue(m).eval()
    with torch.no_grad():
        assert torch.allclose(u(["ab", "c"], inputs), m(["ab", "c"], inputs), rtol=1e-4, atol=1e-4)
        shared = convert_moe_to_moue(m, stride=2)  # neighbouring layers now share 2 experts
        assert shared.universal_pool.pool_size == 4 and torch.isfinite(shared(["ab", "c"], inputs)).all()
    with pytest.raises(ValueError, match="must be 'moe'"):
        convert_moe_to_moue(u)


@pytest.mark.parametrize("change, field", [({"moe_experts": 6}, "moe_experts"), ({"ffn": "dense"}, "ffn")])
def test_loading_a_checkpoint_whose_expert_layout_differs_from_its_config_names_the_field(tmp_path, change, field):
    import json

    _tiny_moe().save_pretrained(tmp_path / "m")
    cfg_file = tmp_path / "m" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **change}))
    with pytest.raises(ValueError, match=f"expert layout differs.*{field}"):
        VideoAR.from_pretrained(str(tmp_path / "m"))


def test_cosine_bias_schedule_decays_the_step_to_zero_and_is_validated():
    from mmgen.nn.moe import balance_step, bias_rate_scale

    assert bias_rate_scale("constant", 90, 100) == 1.0
    assert bias_rate_scale("cosine", 0, 100) == 1.0 and bias_rate_scale("cosine", 50, 100) == pytest.approx(0.5)
    assert bias_rate_scale("cosine", 100, 100) == pytest.approx(0.0, abs=1e-12)
    m = _tiny_moe(moe_bias_rate=0.1, moe_bias_schedule="cosine")
    layer = moe_layers(m)[0]
    for step, expected in ((50, 0.05), (100, 0.0)):
        layer.expert_bias.zero_()
        layer.step_counts.copy_(torch.tensor([5.0, 1.0, 1.0, 1.0]))
        assert balance_step(m, step, 100) == pytest.approx(5 / 2 - 1)
        assert layer.expert_bias[0].item() == pytest.approx(-expected, abs=1e-7)
    with pytest.raises(ValueError, match="moe_bias_schedule"):
        _tiny_moe(moe_bias_schedule="linear")


def test_exp_bias_schedule_decays_the_step_to_the_end_rate_and_is_validated():
    from mmgen.nn.moe import balance_step, bias_rate_scale

    assert bias_rate_scale("exp", 0, 100, 0.01) == 1.0 and bias_rate_scale("exp", 50, 100, 0.01) == pytest.approx(0.1)
    m = _tiny_moe(moe_bias_rate=1e-2, moe_bias_schedule="exp", moe_bias_rate_end=1e-4)
    layer = moe_layers(m)[0]
    for step, expected in ((0, 1e-2), (50, 1e-3), (100, 1e-4), (150, 1e-4)):
        layer.expert_bias.zero_()
        layer.step_counts.copy_(torch.tensor([5.0, 1.0, 1.0, 1.0]))
        balance_step(m, step, 100)
        assert layer.expert_bias[0].item() == pytest.approx(-expected, rel=1e-5)
    with pytest.raises(ValueError, match="moe_bias_rate_end"):
        _tiny_moe(moe_bias_rate=1e-3, moe_bias_schedule="exp", moe_bias_rate_end=1e-2)


MLLM_MOE = dict(image_size=32, patch=8, vit_dim=32, vit_depth=1, vit_heads=1, dim=32, depth=3, heads=1,
                mlp_ratio=2.0, ffn="moe", moe_experts=4, moe_top_k=2, moe_dense_layers=1, moe_bias_rate=0.01,
                moe_aux_alpha=1e-3)


def test_mllm_lm_with_moe_saves_loads_and_checks_its_layout(tmp_path):
    """The MLLM's LM takes VideoAR's FFN options (mmgen.nn.moe): sparse LM layers, dense ViT."""
    import json

    from mmgen.mllm.model import TinyLlava

    torch.manual_seed(0)
    model = TinyLlava(**MLLM_MOE)
    lm = moe_layers(model)
    assert len(lm) == 2 and not moe_layers(model.vit)  # LM layers 1, 2 sparse; the ViT stays dense
    lm[0].expert_bias.copy_(torch.arange(4.0))
    model.save_pretrained(tmp_path / "m")
    back = TinyLlava.from_pretrained(str(tmp_path / "m"))
    assert torch.equal(moe_layers(back)[0].expert_bias, torch.arange(4.0))
    images, ids = torch.rand(2, 3, 32, 32), torch.randint(1, 10, (2, 5))
    model.eval(), back.eval()
    torch.testing.assert_close(back(images, ids), model(images, ids), rtol=0, atol=0)
    cfg_file = tmp_path / "m" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "moe_experts": 6}))
    with pytest.raises(ValueError, match="expert layout differs.*moe_experts"):
        TinyLlava.from_pretrained(str(tmp_path / "m"))
    with pytest.raises(ValueError, match="ffn='moue'"):
        TinyLlava(**{**MLLM_MOE, "ffn": "moue"})
    with pytest.raises(ValueError, match="moe_top_k=5"):
        TinyLlava(**{**MLLM_MOE, "moe_top_k": 5})


@pytest.mark.slow
def test_mllm_training_loop_moves_the_lm_bias_after_each_step():
    import lightning.pytorch as pl

    from mmgen.mllm.data import VQADataset
    from mmgen.mllm.lightning import MLLMModule

    torch.manual_seed(0)
    module = MLLMModule(model_config=MLLM_MOE, warmup_steps=1, total_steps=2, zoom_prob=0.0)
    data = torch.utils.data.DataLoader(VQADataset(4, "train", size=32, hires=64), batch_size=2)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    bias = moe_layers(module.model)[0].expert_bias
    assert bias.abs().sum() > 0 and bias.abs().max() <= 2 * 0.01 + 1e-7  # two steps of +-rate
    assert "route/maxvio" in trainer.callback_metrics


def test_ffn_fields_of_the_wrong_type_name_the_field():
    with pytest.raises(ValueError, match="moe_top_k='9' must be an integer"):
        _tiny_moe(moe_top_k="9")
