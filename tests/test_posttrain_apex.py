import pytest
import torch

from mmgen.posttrain.apex import APEX, APEXConfig, ExpandedLinear, Monarch

from test_posttrain_lora import tiny_inputs, tiny_model


def test_monarch_starts_at_zero_and_is_linear():
    mon = Monarch(12)
    x = torch.randn(5, 12)
    assert torch.count_nonzero(mon(x)) == 0
    torch.nn.init.normal_(mon.L)
    torch.nn.init.normal_(mon.R)
    torch.testing.assert_close(mon(2 * x + x.flip(0)), 2 * mon(x) + mon(x.flip(0)), atol=1e-4, rtol=1e-4)


def test_votes_permutation_expansion_and_fusion():
    m = tiny_model()
    cond, inputs = tiny_inputs(m)
    base = m(cond, inputs)
    apex = APEX(m, APEXConfig(attn_ratio=0.5, ffn_ratio=0.25))
    with pytest.raises(RuntimeError, match="record votes"):
        apex.attach()
    with apex.record():
        m(cond, inputs)
        m(cond, inputs)
    assert all(v["attn"].abs().sum() == 4 and v["ffn"].abs().sum() > 0 for v in apex.votes)  # 2 forwards x (+1, -1)
    params = apex.attach()
    assert params and all(p.requires_grad for p in params)
    assert not m.blocks[0].attn.q_proj.weight.requires_grad
    torch.testing.assert_close(m(cond, inputs), base, atol=1e-5, rtol=1e-4)  # permuted + identity operator
    assert sum(p.numel() for p in params) == apex.trainable_count()
    g = torch.Generator().manual_seed(3)
    for p in params:  # a trained operator
        p.data += 0.05 * torch.randn(p.shape, generator=g)
    unfused = m(cond, inputs)
    assert not torch.allclose(unfused, base, atol=1e-3)
    apex.fuse()
    assert all(type(b.attn.o_proj) is torch.nn.Linear and type(b.mlp.down_proj) is torch.nn.Linear for b in m.blocks)
    assert set(m.state_dict()) == set(tiny_model().state_dict())  # architecture unchanged
    torch.testing.assert_close(m(cond, inputs), unfused, atol=1e-5, rtol=1e-4)
    assert not any(isinstance(x, ExpandedLinear) for x in m.modules())


def test_bad_ratio():
    with pytest.raises(ValueError, match="attn_ratio"):
        APEXConfig(attn_ratio=0.6)
