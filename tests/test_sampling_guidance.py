"""Guidance / temperature schedules and the CFG combination."""
import pytest
import torch

from mmgen.ar.guidance import GuidanceSchedule, TemperatureSchedule, apply_cfg, split_cfg_batch


def table(schedule, frames=5, scales=6):
    return torch.tensor([[schedule(t, k, frames, scales) for k in range(scales)] for t in range(frames)])


def test_constant_is_constant_and_one_disables():
    g = GuidanceSchedule.parse(3.0)
    assert torch.all(table(g) == 3.0)
    assert not g.is_disabled()
    assert GuidanceSchedule.parse("1").is_disabled()
    assert GuidanceSchedule.parse(None).is_disabled()


def test_adaptive_follows_videoar_ucf_schedule():
    g = GuidanceSchedule.parse("adaptive")
    w = table(g, frames=5, scales=6)
    # first scale rises 1 -> 5 across frames
    assert torch.allclose(w[:, 0], torch.linspace(1, 5, 5))
    # within every frame, rises linearly up to 10 at the finest scale
    assert torch.allclose(w[:, -1], torch.full((5,), 10.0))
    steps = w[:, 1:] - w[:, :-1]
    assert torch.all(steps > 0)
    assert torch.allclose(steps, steps[:, :1].expand_as(steps))
    assert not g.is_disabled()


def test_linear_falls_along_time_and_scale():
    g = GuidanceSchedule.parse("linear:5:3")
    w = table(g, frames=4, scales=3).flatten()
    assert w[0] == pytest.approx(5.0) and w[-1] == pytest.approx(3.0)
    assert torch.all(w[1:] < w[:-1])


def test_parse_dict_and_errors():
    g = GuidanceSchedule.parse({"kind": "adaptive", "peak": 7.0})
    assert g.peak == 7.0 and g(0, 5, 5, 6) == pytest.approx(7.0)
    assert GuidanceSchedule.parse(g.to_dict()) == g
    with pytest.raises(ValueError, match="unknown guidance kind"):
        GuidanceSchedule.parse("cosine")
    with pytest.raises(ValueError, match="unknown guidance field"):
        GuidanceSchedule.parse({"kind": "constant", "scael": 2})
    with pytest.raises(ValueError, match="takes 2 numbers"):
        GuidanceSchedule.parse("linear:5")
    with pytest.raises(ValueError, match="outside"):
        g(5, 0, 5, 6)


def test_single_frame_and_single_scale_are_defined():
    g = GuidanceSchedule.parse("adaptive")
    assert g(0, 0, 1, 1) == pytest.approx(1.0)
    assert GuidanceSchedule.parse("linear")(0, 0, 1, 1) == pytest.approx(5.0)


def test_temperature_schedule():
    tau = TemperatureSchedule.parse("1.2:0.6")
    assert tau(3, 0, 5, 4) == pytest.approx(1.2)
    assert tau(3, 3, 5, 4) == pytest.approx(0.6)
    assert tau(0, 1, 5, 4) == pytest.approx(1.0)
    assert TemperatureSchedule.parse(0.5) == TemperatureSchedule(0.5, 0.5)
    with pytest.raises(ValueError):
        TemperatureSchedule.parse("-1")
    with pytest.raises(ValueError, match="coarse:fine"):
        TemperatureSchedule.parse("1:2:3")


def test_apply_cfg_and_split():
    cond, uncond = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    assert torch.equal(apply_cfg(cond, uncond, 1.0), cond)
    assert torch.allclose(apply_cfg(cond, uncond, 3.0), torch.tensor([4.0, -5.0]))
    both = torch.arange(6.0).view(6, 1)
    c, u = split_cfg_batch(both, 3)
    assert c.flatten().tolist() == [0, 1, 2] and u.flatten().tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="cond \\+ uncond"):
        split_cfg_batch(both, 2)
