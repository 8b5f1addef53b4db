"""Verifiable rewards and diversity for MovingShapes prompts (no learned weights).

The reward of a video is the mean of the analytic benchmark's per-object adherence scores
(:func:`mmgen.metrics.shapes.score_video`: colour found, shape, size, motion, object count),
so it is in [0, 1] and partial credit counts.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmgen.data.clips import to_uint8
from mmgen.metrics.shapes import Expected, expected_from_caption, score_video

REWARD_KEYS = ("color", "shape", "size", "motion", "count")


def parse_prompts(prompts: Sequence[str]) -> list[Expected]:
    """What each prompt asks for; ValueError naming the first prompt outside the grammar."""
    out = []
    for i, p in enumerate(prompts):
        try:
            out.append(expected_from_caption(p))
        except (ValueError, KeyError) as err:
            raise ValueError(f"prompt {i + 1} {p!r} is not a MovingShapes caption the reward can score "
                             f"(e.g. 'a large red circle moving right'): {err}") from None
    return out


def reward(video_u8: torch.Tensor, expected: Expected) -> tuple[float, dict]:
    """(reward in [0, 1], the benchmark's scores) of one uint8 [T, H, W, 3] video."""
    scores = score_video(video_u8, expected)
    parts = [scores[k] for k in REWARD_KEYS if scores[k] is not None]
    return float(np.mean(parts)), scores


@torch.no_grad()
def decode_videos(tokenizer, codes: list[torch.Tensor]) -> torch.Tensor:
    """Bit codes -> uint8 videos [B, T, H, W, 3]."""
    video = tokenizer.decode(tokenizer.codes_to_latent([c.to(tokenizer.dtype) for c in codes]))
    return torch.stack([to_uint8(v) for v in video.cpu()])


def pixel_diversity(videos_u8: torch.Tensor) -> float:
    """Mean pairwise mean absolute pixel difference (in [0, 1]) between the videos of one prompt."""
    v = videos_u8.float().flatten(1) / 255.0
    n = v.shape[0]
    if n < 2:
        raise ValueError("diversity needs at least 2 videos of the prompt")
    d = torch.cdist(v, v, p=1) / v.shape[1]
    return float(d.sum() / (n * (n - 1)))


@torch.no_grad()
def evaluate_prompts(pipe, prompts: Sequence[str], num_per_prompt: int = 2, seed: int = 0,
                     batch_size: int = 8, **settings) -> dict:
    """Sample ``num_per_prompt`` videos per prompt with the pipeline (its default sampling settings
    unless overridden) and return the mean reward, each adherence score's mean (colour, shape, size,
    motion, count, all_correct) and the mean per-prompt diversity."""
    expected = parse_prompts(prompts)
    rewards, diversity = [], []
    parts: dict[str, list[float]] = {k: [] for k in (*REWARD_KEYS, "all_correct")}
    for i, (p, e) in enumerate(zip(prompts, expected)):
        videos = []
        for start in range(0, num_per_prompt, batch_size):
            n = min(batch_size, num_per_prompt - start)
            codes = pipe([p] * n, seed=[seed + 1000 * i + start + j for j in range(n)], output_type="latent",
                         progress=False, **settings).frames
            videos.append(decode_videos(pipe.tokenizer, codes))
        videos = torch.cat(videos)
        for v in videos:
            r, s = reward(v, e)
            rewards.append(r)
            for k, values in parts.items():
                if s[k] is not None:
                    values.append(float(s[k]))
        if num_per_prompt > 1:
            diversity.append(pixel_diversity(videos))
    return {"reward": float(np.mean(rewards)), **{k: float(np.mean(v)) for k, v in parts.items() if v},
            "diversity": float(np.mean(diversity)) if diversity else None, "n_videos": len(rewards)}
