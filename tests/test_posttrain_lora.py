import pytest
import torch

from mmgen.ar.model import VideoAR
from mmgen.posttrain.lora import (LoRALinear, add_lora, lora_modules, merge_lora, remove_lora, save_peft_adapter,
                                  unmerge_lora)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    m = VideoAR(bits=4, scales=[(1, 1), (2, 2)], num_frames=2, width=32, depth=2, heads=2, max_text_len=8,
                attn_backend="sdpa")
    torch.nn.init.normal_(m.out_proj.weight, std=0.2)
    return m.eval()


def tiny_inputs(m, batch=2):
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(batch, 2, h, w, 4, generator=g) for h, w in m.scales]
    return ["red", "blue"][:batch], inputs


def randomise(model):
    g = torch.Generator().manual_seed(2)
    for m in lora_modules(model).values():
        m.lora_B.data = torch.randn(m.lora_B.shape, generator=g) * 0.1
        if m.gate is not None:
            m.gate.data = torch.randn(m.gate.shape, generator=g) * 0.05


@pytest.mark.parametrize("gated", [False, True])
def test_merge_equals_unmerged(gated):
    m = tiny_model()
    cond, inputs = tiny_inputs(m)
    base = m(cond, inputs)
    names = add_lora(m, rank=4, gated=gated)
    assert len(names) == 2 * 6  # per block: q, k, v, o, the fused gate_up and down projections
    assert torch.allclose(m(cond, inputs), base)  # B = 0 (and gate 0): a new adapter changes nothing
    randomise(m)
    unmerged = m(cond, inputs)
    assert not torch.allclose(unmerged, base, atol=1e-4)
    merge_lora(m)
    torch.testing.assert_close(m(cond, inputs), unmerged, atol=1e-5, rtol=1e-4)
    unmerge_lora(m)
    torch.testing.assert_close(m(cond, inputs), unmerged, atol=1e-5, rtol=1e-4)
    remove_lora(m)
    assert not lora_modules(m) and isinstance(m.blocks[0].attn.q_proj, torch.nn.Linear)
    torch.testing.assert_close(m(cond, inputs), unmerged, atol=1e-5, rtol=1e-4)


def test_only_adapters_train():
    m = tiny_model()
    add_lora(m, ["blocks.0.attn.*"], rank=2, gated=True)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.split(".")[-1] in ("lora_A", "lora_B", "gate") for n in trainable)
    assert all(n.startswith("blocks.0.attn.") for n in trainable)


def test_bad_targets_and_rank():
    m = tiny_model()
    with pytest.raises(ValueError, match="match no nn.Linear"):
        add_lora(m, ["blocks.*.nothing"], rank=4)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        add_lora(m, rank=0)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoRALinear(torch.nn.Linear(3, 3), rank=-1)


@pytest.mark.parametrize("gated", [False, True])
def test_peft_round_trip(tmp_path, gated):
    peft = pytest.importorskip("peft", reason="peft is in the dev extra")
    m = tiny_model()
    cond, inputs = tiny_inputs(m)
    add_lora(m, rank=4, alpha=6, gated=gated)
    randomise(m)
    ours = m(cond, inputs)
    save_peft_adapter(m, tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(tiny_model(), str(tmp_path / "adapter")).eval()
    torch.testing.assert_close(loaded(cond, inputs), ours, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(tiny_model()(cond, inputs), ours, atol=1e-4)
