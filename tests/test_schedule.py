"""The one warm-up + cosine schedule shared by the tokenizer, generator and MLLM trainers."""
import math

import torch

from mmgen.nn.schedule import warmup_cosine, warmup_cosine_schedule


def test_warmup_then_cosine_to_the_floor():
    assert warmup_cosine(0, 4, 0.0, 0.1) == 0.25 and warmup_cosine(3, 4, 0.0, 0.1) == 1.0
    assert warmup_cosine(10, 4, 0.0, 0.1) == 1.0
    assert math.isclose(warmup_cosine(10, 4, 0.5, 0.1), 0.55)
    assert warmup_cosine(10, 4, 2.0, 0.1) == 0.1  # progress past the end stays at the floor


def test_lambda_schedule_follows_the_steps():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine_schedule(opt, 2, 10, 0.1)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == [1.0, 2.0, 2.0]
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert math.isclose(lrs[10], 0.2) and math.isclose(lrs[11], 0.2)
