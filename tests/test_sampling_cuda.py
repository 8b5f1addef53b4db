"""CUDA: cached vs recomputed decoding (fp32: identical samples; bf16 autocast + bf16 KV cache:
near-identical logits, nearly all bits equal)."""
import pytest
import torch

from mmgen.ar.model import VideoAR
from mmgen.ar.sampling import RecomputeStepper, SamplerSettings, sample_codes
from mmgen.tokenizer import BitwiseResidualQuantizer

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SCALES = [(1, 1), (2, 2), (4, 4)]


def model_and_quantizer(backend):
    torch.manual_seed(0)
    model = VideoAR(bits=8, scales=SCALES, num_frames=3, width=64, depth=2, heads=4, cond="class",
                    num_classes=4, attn_backend=backend)
    torch.nn.init.normal_(model.out_proj.weight, std=0.5)
    return model.cuda().eval(), BitwiseResidualQuantizer(8, SCALES).cuda()


@pytest.mark.parametrize("backend", ["sdpa", "auto"])
def test_cached_equals_recompute_fp32(backend):
    model, q = model_and_quantizer(backend)
    out = []
    for use_cache in (True, False):
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        out.append(sample_codes(model, q, [0, 3], 3, SamplerSettings(guidance=3.0, use_cache=use_cache), gens))
    assert all(torch.equal(a, b) for a, b in zip(*out))


def test_bf16_cache_logits_match_recompute():
    model, q = model_and_quantizer("auto")
    rows = model.condition_tokens([1, 2])
    codes = [torch.randn(2, 3, h, w, 8, device="cuda").sign() for h, w in SCALES]
    inputs = q.next_scale_inputs(codes)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        cache = model.new_cache(2, 3)
        assert cache.layers[0].k.dtype == torch.bfloat16
        model.prefill(cache, rows)
        reference = RecomputeStepper(model, rows, 3, None)
        for t in range(3):
            for k in range(len(SCALES)):
                a = model.forward_group(cache, inputs[k][:, t], t, k)
                b = reference(inputs[k][:, t], t, k)
                assert torch.allclose(a, b, atol=0.1, rtol=0.05)
                assert ((a > 0) == (b > 0)).float().mean() > 0.97
