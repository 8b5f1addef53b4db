"""mmgen.nn: attention backends agree, masks mean what they say, RoPE is relative, KV cache is exact."""
import pytest
import torch

from mmgen.nn import (Block, GroupMask, KVCache, Rope3D, SelfAttention, apply_rope, attention,
                      default_axes_dims, resolve_backend)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _group_causal(groups: torch.Tensor) -> GroupMask:
    G = int(groups.max()) + 1
    vis = torch.ones(G, G, dtype=torch.bool).tril()
    return GroupMask(groups, groups, vis)


def test_group_mask_dense_is_group_causal():
    groups = torch.tensor([0, 1, 1, 2, 2, 2])
    dense = _group_causal(groups).dense()
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(dense, expected)


def test_bool_mask_semantics_true_means_attend():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 4, 8).unbind(0)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, 2] = True  # every query may only see key 2 -> output is v[2] everywhere
    out = attention(q, k, v, mask, backend="sdpa")
    assert torch.allclose(out, v[:, :, 2:3].expand_as(out), atol=1e-6)


@pytest.mark.parametrize("batched", [False, True])
def test_flex_matches_sdpa_on_cpu(batched):
    """Eager FlexAttention on CPU vs SDPA with the dense mask; fp32, tolerance 1e-5
    (both compute exact softmax attention; differences are summation order only)."""
    torch.manual_seed(0)
    L = 150  # > one 128-token Flex tile, not a multiple of it
    groups = torch.repeat_interleave(torch.arange(6), torch.tensor([2, 4, 16, 30, 34, 64]))
    mask = _group_causal(groups)
    if batched:  # per-sample visibility, as Random Frame Mask produces
        vis = mask.visible.clone().expand(2, -1, -1).clone()
        vis[1, 4, 2] = False
        mask = GroupMask(groups, groups, vis)
    q, k, v = torch.randn(3, 2, 2, L, 16).unbind(0)
    ref = attention(q, k, v, mask, backend="sdpa")
    out = attention(q, k, v, mask, backend="flex")
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    if batched:  # the dropped group really changed sample 1 only
        full = attention(q, k, v, _group_causal(groups), backend="sdpa")
        assert torch.allclose(full[0], ref[0], atol=1e-6)
        assert not torch.allclose(full[1], ref[1], atol=1e-3)


def test_block_mask_is_cached_per_mask_object():
    groups = torch.arange(4).repeat_interleave(3)
    mask = _group_causal(groups)
    assert mask.block_mask("cpu") is mask.block_mask("cpu")
    assert mask.dense("cpu") is mask.dense("cpu")
    assert mask.to("cpu") is mask
    assert mask.to("meta") is mask.to("meta")  # moved copies are cached too (one block mask per device)


def test_backend_resolution_and_errors():
    m = _group_causal(torch.arange(3))
    assert resolve_backend("auto", torch.device("cpu"), m) == "sdpa"
    assert resolve_backend("auto", torch.device("cuda"), m) == "flex"
    assert resolve_backend("auto", torch.device("cuda"), None) == "sdpa"
    assert resolve_backend("auto", torch.device("cuda"), m, head_dim=48) == "sdpa"
    assert resolve_backend("auto", torch.device("cuda"), m, head_dim=64) == "flex"
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("fast", torch.device("cpu"))
    if not torch.cuda.is_available():  # a saved "xformers" must not stop a model from running here
        with pytest.warns(UserWarning, match="xformers kernels do not run here"):
            assert resolve_backend("xformers", torch.device("cpu")) == "sdpa"
    assert resolve_backend("flex", torch.device("cpu"), m) == "flex"
    assert resolve_backend("flex", torch.device("cpu"), m.dense()) == "sdpa"  # Flex needs a GroupMask


def test_rope_default_split_and_validation():
    assert default_axes_dims(128) == (32, 48, 48)
    assert default_axes_dims(64) == (16, 24, 24)
    assert sum(default_axes_dims(40)) == 40
    with pytest.raises(ValueError, match="axes_dims"):
        Rope3D(32, axes_dims=(8, 8, 8))
    with pytest.raises(ValueError, match="last dim of 3"):
        Rope3D(32)(torch.zeros(5, 2))


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    rope = Rope3D(32)
    q, k = torch.randn(2, 1, 1, 1, 32).unbind(0)

    def score(pq, pk):
        cq, sq = rope(torch.tensor([pq]))
        ck, sk = rope(torch.tensor([pk]))
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    base = score((1, 2, 3), (0, 5, 1))
    shifted = score((1 + 7, 2 - 3, 3 + 11), (0 + 7, 5 - 3, 1 + 11))
    assert torch.allclose(base, shifted, atol=1e-4)
    # each axis matters on its own
    for axis in range(3):
        moved = [1, 2, 3]
        moved[axis] += 4
        assert not torch.allclose(base, score(tuple(moved), (0, 5, 1)), atol=1e-3)
    # rotation preserves norms, and position 0 is the identity
    c, s = rope(torch.tensor([[4, 9, 2]]))
    assert torch.allclose(apply_rope(q, c, s).norm(), q.norm(), atol=1e-5)
    c0, s0 = rope(torch.zeros(1, 3, dtype=torch.long))
    assert torch.allclose(apply_rope(q, c0, s0), q)


def test_rope_batched_positions_match_per_sample():
    rope = Rope3D(16)
    pos = torch.randint(0, 9, (2, 5, 3))
    x = torch.randn(2, 3, 5, 16)
    c, s = rope(pos)
    out = apply_rope(x, c, s)
    for b in range(2):
        cb, sb = rope(pos[b])
        assert torch.allclose(out[b:b + 1], apply_rope(x[b:b + 1], cb, sb), atol=1e-6)


def test_self_attention_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    attn = SelfAttention(32, 4, qk_norm=True).eval()
    rope = Rope3D(8)
    groups = torch.tensor([0, 1, 1, 2, 2, 2, 2])
    pos = torch.stack([groups, torch.arange(7), torch.arange(7)], -1)
    x = torch.randn(2, 7, 32)
    full = attn(x, rope(pos), _group_causal(groups))
    cache = KVCache(2, 4, 16, 8, torch.float32, "cpu")
    outs = []
    for g in range(3):
        idx = (groups == g).nonzero().squeeze(1)
        outs.append(attn(x[:, idx], rope(pos[idx]), None, kv_cache=cache))
    assert cache.length == 7
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)
    with pytest.raises(RuntimeError, match="KV cache full"):
        attn(torch.randn(2, 10, 32), rope(torch.zeros(10, 3)), None, kv_cache=cache)


def test_block_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    block = Block(32, 4, mlp_ratio=2.0)
    x = torch.randn(2, 6, 32, requires_grad=True)
    block(x).sum().backward()
    ref = [p.grad.clone() for p in block.parameters()] + [x.grad.clone()]
    block.zero_grad()
    x.grad = None
    block.checkpointing = True
    block(x).sum().backward()
    got = [p.grad for p in block.parameters()] + [x.grad]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ref, got))


@cuda
@pytest.mark.cuda
def test_flex_matches_sdpa_cuda_bf16():
    """Compiled Flex vs SDPA on CUDA in bf16: max abs error < 2e-2 (bf16 has ~3 significant digits)."""
    torch.manual_seed(0)
    groups = torch.repeat_interleave(torch.arange(8), torch.tensor([1, 4, 16, 64, 1, 4, 16, 64])).cuda()
    mask = _group_causal(groups)
    q, k, v = torch.randn(3, 2, 4, len(groups), 64, device="cuda", dtype=torch.bfloat16).unbind(0)
    ref = attention(q, k, v, mask, backend="sdpa")
    out = attention(q, k, v, mask, backend="flex")
    assert (out.float() - ref.float()).abs().max() < 2e-2
