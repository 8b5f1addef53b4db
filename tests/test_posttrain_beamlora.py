import pytest
import torch

from mmgen.posttrain.beamlora import BeamLoRA, BeamLoRAConfig
from mmgen.posttrain.lora import add_lora, lora_modules

from test_posttrain_lora import tiny_inputs, tiny_model


def setup(copy_moments=False):
    m = tiny_model()
    add_lora(m, ["blocks.*.attn.q_proj", "blocks.*.attn.v_proj"], rank=4, gated=True)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    cond, inputs = tiny_inputs(m)
    return m, opt, BeamLoRA(m, opt, total_steps=40, config=BeamLoRAConfig(interval=10, copy_ab_moments=copy_moments)), cond, inputs


def train_step(m, opt, cond, inputs):
    opt.zero_grad()
    m(cond, inputs).pow(2).mean().backward()
    opt.step()


@pytest.mark.parametrize("copy_moments", [False, True])
def test_prune_expand_keeps_ranks_and_copies_from_snapshot(copy_moments):
    m, opt, beam, cond, inputs = setup(copy_moments)
    mods = lora_modules(m)
    victim = mods["blocks.0.attn.q_proj"]
    for step in range(1, 10):
        train_step(m, opt, cond, inputs)
        if step == 5:
            beam.after_step(step)  # snapshot at T/2
            snap_a = victim.lora_A.detach().clone()
            snap_b = victim.lora_B.detach().clone()
    train_step(m, opt, cond, inputs)
    with torch.no_grad():  # every rank equally important except rank 3 of one module (worst; rank 0 best)
        for mm in mods.values():
            mm.gate.zero_()
        victim.gate[:] = torch.tensor([0.02, 0.01, 0.0, -0.3])
    gates_before = victim.gate.detach().clone()
    beam.after_step(10)
    assert beam.history and beam.history[0]["pruned"].get("blocks.0.attn.q_proj", 0) >= 1
    pruned = beam.history[0]["pruned"]["blocks.0.attn.q_proj"]
    assert victim.lora_A.shape == (4, 32) and victim.lora_B.shape == (32, 4) and victim.gate.shape == (4,)
    assert all(mm.rank == 4 for mm in mods.values())
    # slot 3 (worst) is refilled from slot 0 (best) as it was at the snapshot, gates averaged
    assert pruned == 1
    torch.testing.assert_close(victim.lora_A[3], snap_a[0])
    torch.testing.assert_close(victim.lora_B[:, 3], snap_b[:, 0])
    mean = (gates_before[0] + gates_before[3]) / 2
    torch.testing.assert_close(victim.gate[[0, 3]], mean.repeat(2))
    assert torch.count_nonzero(opt.state[victim.gate]["exp_avg"]) == 0
    moved = opt.state[victim.lora_A]["exp_avg"]
    if copy_moments:
        torch.testing.assert_close(moved[3], moved[0])
    else:
        assert not torch.allclose(moved[3], moved[0])
    train_step(m, opt, cond, inputs)  # training goes on


def test_schedule_and_last_window():
    m, opt, beam, cond, inputs = setup()
    assert beam.threshold(0) == pytest.approx(0.95)
    assert beam.threshold(27) == pytest.approx(1.0)
    assert beam.threshold(10) < beam.threshold(20)
    beam.after_step(35)
    with torch.no_grad():
        lora_modules(m)["blocks.0.attn.q_proj"].gate[:] = torch.tensor([1.0, 0, 0, -1])
    beam.after_step(40)  # the last window: no round
    assert beam.history == []


def test_needs_gates():
    m = tiny_model()
    add_lora(m, rank=2)
    with pytest.raises(ValueError, match="gated"):
        BeamLoRA(m, torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1), 10)
