"""SelfAttention's fused q/k/v projection (inference) against the three separate projections."""
import torch

from mmgen.nn import SelfAttention


def _reference(attn, x, rope=None):
    with torch.enable_grad():  # autograd on: the three modules, as in training
        return attn(x, rope)


def test_fused_projection_matches_separate_and_follows_weight_updates():
    torch.manual_seed(0)
    attn = SelfAttention(32, 4, qk_norm=True).eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        fused = attn(x)
        assert attn._fused_qkv is not None  # the fast path ran
        torch.testing.assert_close(fused, _reference(attn, x).detach(), rtol=1e-6, atol=1e-6)
        attn.k_proj.weight.mul_(0.5)  # an in-place update (optimizer step, load_state_dict)
        torch.testing.assert_close(attn(x), _reference(attn, x).detach(), rtol=1e-6, atol=1e-6)
        attn.load_state_dict({k: torch.randn_like(v) for k, v in attn.state_dict().items()})
        torch.testing.assert_close(attn(x), _reference(attn, x).detach(), rtol=1e-6, atol=1e-6)


def test_wrapped_projections_keep_the_separate_path():
    torch.manual_seed(0)
    attn = SelfAttention(16, 2).eval()

    class Wrapped(torch.nn.Module):  # what an adapter does: a module around the Linear
        def __init__(self, inner):
            super().__init__()
            self.inner, self.out_features = inner, inner.out_features

        def forward(self, x):
            return self.inner(x) + 1.0

    x = torch.randn(1, 3, 16)
    with torch.no_grad():
        plain = attn(x)
        attn.q_proj = Wrapped(attn.q_proj)
        attn._fused_qkv = None
        assert not torch.allclose(attn(x), plain)
        assert attn._fused_qkv is None
