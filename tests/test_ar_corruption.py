"""Cross-Frame Error Correction: flip ratios, inheritance, self-correction through the real quantizer."""
import torch

from mmgen.ar.corruption import CorruptionConfig, corrupt_codes, corrupted_history, flip_ratios
from mmgen.tokenizer.quantizer import BitwiseResidualQuantizer, IndexResidualQuantizer


def test_flip_ratios_ranges_and_inheritance():
    cfg = CorruptionConfig()
    p = flip_ratios(cfg, 500, 5, 4, torch.Generator().manual_seed(0))
    for t in range(5):
        assert (p[:, t] <= cfg.p_max + cfg.delta * t + 1e-6).all()
        assert (p[:, t, 1:] >= cfg.p_min + cfg.delta * t - 1e-6).all()
        if t:
            # inheritance: a frame's first ratio starts where the previous frame's last ended
            assert (p[:, t, 0] >= torch.minimum(p[:, t - 1, -1], torch.tensor(cfg.p_max + cfg.delta * t)) - 1e-6).all()
    # time dependence: later frames are corrupted more on average
    assert p[:, 4, 1:].mean() > p[:, 0, 1:].mean() + 0.02
    flat = flip_ratios(CorruptionConfig(time_dependent=False, inherit=False), 500, 5, 4)
    assert flat.max() <= 0.25 + 1e-6 and abs(flat.mean().item() - 0.125) < 0.01


def test_corrupt_codes_flip_rate():
    bits = torch.ones(4, 2, 16, 16, 8)
    ratio = torch.tensor([[0.0, 0.5]]).expand(4, 2)
    out = corrupt_codes(bits, ratio)
    assert torch.equal(out[:, 0], bits[:, 0])
    assert abs((out[:, 1] < 0).float().mean().item() - 0.5) < 0.03
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    idx = torch.zeros(4, 2, 16, 16, dtype=torch.long)
    swapped = corrupt_codes(idx, torch.full((4, 2), 1.0), codebook_size=100)
    assert (swapped != 0).float().mean() > 0.9


def test_self_correction_targets_follow_the_corrupted_history():
    torch.manual_seed(0)
    q = BitwiseResidualQuantizer(8, [1, 2, 4]).eval()  # eval: quantize() must not re-calibrate
    z = torch.randn(3, 8, 2, 4, 4)
    clean, used_clean = corrupted_history(q, z, CorruptionConfig(enabled=False))
    assert all(torch.equal(a, b) for a, b in zip(clean, used_clean))
    assert all(torch.equal(a, b) for a, b in zip(clean, q.quantize(z).codes))

    cfg = CorruptionConfig(p_min=0.3, p_max=0.3, delta=0.0)
    targets, used = corrupted_history(q, z, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(targets[0], clean[0])  # the first scale has no history to correct
    assert not torch.equal(used[0], targets[0])  # inputs really are corrupted
    assert not torch.equal(targets[2], clean[2])  # later targets correct the corrupted history
    # the targets are exactly the re-quantised residual against the corrupted history
    expected, _ = q.residual_pass(z, corrupt=lambda k, c: used[k])
    assert all(torch.equal(a, b) for a, b in zip(expected, targets))

    plain_t, plain_u = corrupted_history(q, z, CorruptionConfig(p_min=0.3, p_max=0.3, delta=0.0, self_correct=False))
    assert all(torch.equal(a, b) for a, b in zip(plain_t, clean))
    assert not torch.equal(plain_u[1], clean[1])


def test_index_quantizer_corruption():
    q = IndexResidualQuantizer(8, [1, 2], codebook_size=16)
    targets, used = corrupted_history(q, torch.randn(2, 8, 2, 2, 2), CorruptionConfig(p_min=1.0, p_max=1.0, delta=0.0))
    assert targets[0].dtype == torch.long and used[1].shape == targets[1].shape
