"""GRPO + CD-RLHF curiosity details: the ICM error, where the bonus goes, the rollout distribution,
the lr warm-up, and a diversity measure that sees sampling temperature."""
import pytest
import torch

from mmgen.posttrain.rewards import decode_videos, pixel_diversity
from mmgen.posttrain.rl import CuriosityModule, GRPOTrainer, RLConfig, bit_advantages
from test_posttrain_cli import tiny_text_pipeline

PROMPT = "a large red square moving right"


def test_icm_error_is_half_the_l2_norm_of_the_feature_error():
    torch.manual_seed(0)
    icm = CuriosityModule(8, 6)
    s, a, s2 = torch.randn(3, 5, 8), torch.randn(3, 5, 6), torch.randn(3, 5, 8)
    pred = icm.forward_model(torch.cat([icm.phi(s), a], -1))
    expected = 0.5 * torch.linalg.vector_norm(icm.phi(s2) - pred, dim=-1)
    torch.testing.assert_close(icm(s, a, s2), expected)


def test_intrinsic_bonus_is_per_bit_on_non_greedy_bits_only():
    adv = torch.tensor([1.0, -1.0])
    r_int = torch.tensor([[2.0, 0.5, 0.0], [1.0, 3.0, 0.0]])
    not_greedy = torch.zeros(2, 3, 4, dtype=torch.bool)
    not_greedy[0, 0, 1] = not_greedy[1, 1, 3] = True
    out = bit_advantages(adv, r_int, not_greedy, eta=0.5)
    expected = adv[:, None, None].expand(2, 3, 4).clone()
    expected[0, 0, 1] += 0.5 * 2.0
    expected[1, 1, 3] += 0.5 * 3.0
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(bit_advantages(adv, None, not_greedy, eta=0.5), adv[:, None, None].expand(2, 3, 4))


def test_rollouts_sample_the_policy_distribution_whatever_the_pipeline_defaults():
    """The log-probs assume the full distribution at the RL temperature: a model folder whose
    default sampling has a nucleus cut or CFG must not change the rollouts."""
    pipe = tiny_text_pipeline()
    plain = GRPOTrainer(pipe, [PROMPT], RLConfig(group_size=2, num_frames=9), log=lambda s: None)._rollout(
        [PROMPT] * 2, [5, 6])
    pipe.config.sampling.update(top_p=0.6, guidance={"scale": 3.0})
    cut = GRPOTrainer(pipe, [PROMPT], RLConfig(group_size=2, num_frames=9), log=lambda s: None)._rollout(
        [PROMPT] * 2, [5, 6])
    assert all(torch.equal(a, b) for a, b in zip(plain, cut))


def test_lr_warmup_is_linear_then_flat(monkeypatch):
    import itertools

    import mmgen.posttrain.rl as rl

    rewards = itertools.count()
    monkeypatch.setattr(rl, "reward", lambda video, expected: (float(next(rewards)), {}))
    trainer = GRPOTrainer(tiny_text_pipeline(), [PROMPT],
                          RLConfig(steps=3, group_size=2, lr=1e-3, warmup_steps=2, num_frames=9), log=lambda s: None)
    lrs = []
    for step in range(3):
        lrs.append(trainer.opt.param_groups[0]["lr"])
        trainer.step(step)
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3])
    with pytest.raises(ValueError, match="warmup_steps"):
        RLConfig(warmup_steps=-1)


def test_diversity_rises_with_sampling_temperature():
    """The diversity measure must see the spread of one prompt's samples: zero when greedy, and
    growing with the temperature on the same model."""
    pipe = tiny_text_pipeline()
    div = []
    for tau in (0.0, 0.3, 1.0):
        codes = pipe([PROMPT] * 4, num_frames=9, guidance=1.0, temperature={"coarse": tau, "fine": tau},
                     seed=[0, 1, 2, 3], output_type="latent", progress=False).frames
        div.append(pixel_diversity(decode_videos(pipe.tokenizer, codes)))
    assert div[0] == 0.0 and div[0] < div[1] < div[2]
