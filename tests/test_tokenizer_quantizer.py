"""Multi-scale residual quantizers: their shared public contract (mmgen.tokenizer)."""
import pytest
import torch
import torch.nn.functional as F

from mmgen.tokenizer import BitwiseResidualQuantizer, IndexResidualQuantizer

SCALES = [1, 2, 3, 4, 6, 8]


def _iid_latents(b=3, d=16, t=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, t, 8, 8, generator=g)


def _smooth_latents(b=3, d=16, t=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(b * t, d, 3, 3, generator=g)
    z = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    z = z + 0.1 * torch.randn(z.shape, generator=g)
    return z.reshape(b, t, d, 8, 8).permute(0, 2, 1, 3, 4)


def _normalised(z):
    return F.normalize(z, dim=1) * z.shape[1] ** 0.5


@pytest.mark.parametrize("make", [_iid_latents, _smooth_latents])
def test_adding_scales_monotonically_lowers_error(make):
    q = BitwiseResidualQuantizer(16, SCALES)
    q.calibrate(make(b=8, seed=1))  # calibrate on one draw, evaluate on another
    q.eval()
    z = make(seed=2)
    codes = q(z).codes
    target = _normalised(z)
    errors = torch.stack(
        [((q.codes_to_latent(codes[: k + 1]) - target) ** 2).mean(dim=(1, 2, 3, 4)) for k in range(len(SCALES))]
    )  # [K, B]: error of every sample after k+1 scales
    assert (errors[1:] < errors[:-1]).all(), errors
    assert (errors[-1] < 0.5 * errors[0]).all()


def test_bit_codes_layout_and_roundtrip():
    q = BitwiseResidualQuantizer(16, SCALES).eval()
    z = _smooth_latents()
    out = q(z)
    assert out.z_q.shape == z.shape
    assert len(out.codes) == len(SCALES) == len(q.scales)
    assert q.scales[-1] == (8, 8) and q.bits == 16
    for (h, w), c in zip(q.scales, out.codes):
        assert c.shape == (3, 3, h, w, 16)
        assert set(c.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(q.codes_to_latent(out.codes), out.z_q, atol=1e-5, rtol=0)


def test_frames_are_quantised_independently():
    q = BitwiseResidualQuantizer(16, SCALES).eval()
    z = _smooth_latents()
    full = q(z).codes
    single = q(z[:, :, 1:2]).codes
    for a, b in zip(full, single):
        assert torch.equal(a[:, 1:2], b)


def test_straight_through_and_loss_gradients():
    q = BitwiseResidualQuantizer(16, SCALES)
    z = _smooth_latents().requires_grad_(True)
    out = q(z)
    (out.z_q.sum() + out.losses["commitment"] + out.losses["entropy"]).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert out.losses["commitment"] > 0


def test_entropy_penalty_prefers_diverse_codes():
    q = BitwiseResidualQuantizer(16, [8], entropy_inv_temperature=100.0)
    diverse = _iid_latents()
    collapsed = diverse[:1, :, :1, :1, :1].expand_as(diverse).contiguous()  # one token everywhere
    assert q(diverse).losses["entropy"] < q(collapsed).losses["entropy"] - 0.1


def test_magnitudes_track_only_in_training():
    q = BitwiseResidualQuantizer(16, SCALES)
    before = q.magnitudes.clone()
    q.eval()(_smooth_latents())
    assert torch.equal(q.magnitudes, before)
    q.train()(_smooth_latents())
    assert not torch.equal(q.magnitudes, before)
    assert q.calibrated.all()


def test_residual_pass_matches_quantize_and_corrects_history():
    q = BitwiseResidualQuantizer(16, SCALES)
    q.calibrate(_smooth_latents(b=8, seed=3))
    q.eval()
    z = _smooth_latents()
    clean = q(z).codes
    targets, used = q.residual_pass(z)
    for a, b, c in zip(targets, used, clean):
        assert torch.equal(a, c) and torch.equal(b, c)

    def flip_first_scale(k, bits):
        return -bits if k == 0 else bits

    targets, used = q.residual_pass(z, corrupt=flip_first_scale)
    assert torch.equal(used[0], -clean[0]) and torch.equal(targets[0], clean[0])
    assert any(not torch.equal(t, c) for t, c in zip(targets[1:], clean[1:]))
    target = _normalised(z)
    corrected = q.codes_to_latent([used[0], *targets[1:]])
    uncorrected = q.codes_to_latent([used[0], *clean[1:]])
    assert ((corrected - target) ** 2).mean() < ((uncorrected - target) ** 2).mean()


def test_next_scale_inputs_definition():
    q = BitwiseResidualQuantizer(16, SCALES).eval()
    z = _smooth_latents()
    codes = q(z).codes
    inputs = q.next_scale_inputs(codes)
    contrib = [q.dequant_up(c, k) for k, c in enumerate(codes)]  # [B, t, d, h, w]
    for k in range(1, len(SCALES)):
        torch.testing.assert_close(inputs[k], q.down_to(sum(contrib[:k]), k))
        assert inputs[k].shape == (3, 3, *q.scales[k], 16)
    f_hat = sum(contrib)
    assert inputs[0][:, 0].abs().max() == 0
    torch.testing.assert_close(inputs[0][:, 1:], q.down_to(f_hat[:, :-1], 0))
    torch.testing.assert_close(f_hat.permute(0, 2, 1, 3, 4), q.codes_to_latent(codes))


def test_bad_latents_raise_clear_errors():
    q = BitwiseResidualQuantizer(16, SCALES)
    with pytest.raises(ValueError, match="channels"):
        q(torch.randn(1, 8, 1, 8, 8))
    with pytest.raises(ValueError, match="last scale"):
        q(torch.randn(1, 16, 1, 16, 16))
    with pytest.raises(ValueError, match="non-decreasing"):
        BitwiseResidualQuantizer(16, [4, 2])


def test_index_quantizer_same_structure():
    q = IndexResidualQuantizer(8, SCALES, codebook_size=64, num_refiners=2)
    z = _smooth_latents(d=8).requires_grad_(True)
    out = q(z)
    for (h, w), c in zip(q.scales, out.codes):
        assert c.shape == (3, 3, h, w) and c.dtype == torch.int64
    (out.z_q.sum() + out.losses["codebook"] + out.losses["commitment"]).backward()
    assert q.codebook.weight.grad is not None and z.grad is not None
    torch.testing.assert_close(q.codes_to_latent(out.codes), out.z_q.detach(), atol=1e-5, rtol=0)
    targets, used = q.residual_pass(z.detach())
    assert all(torch.equal(a, b) for a, b in zip(targets, out.codes))
    inputs = q.next_scale_inputs(out.codes)
    assert [tuple(x.shape) for x in inputs] == [(3, 3, h, w, 8) for h, w in q.scales]
