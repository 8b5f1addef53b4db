"""Analytic MovingShapes benchmark: real clips score ~1, wrong prompts score low, inputs."""
import json

import numpy as np
import pytest
import scipy.ndimage
import torch

from mmgen.data.moving_shapes import COLORS, MovingShapes, class_id
from mmgen.io import read_video, write_video
from mmgen.metrics.shapes import (
    classify_motion,
    classify_shape,
    detect_objects,
    evaluate_folder,
    expected_from_caption,
    expected_from_class,
    kurtosis_gap,
    track_per_frame,
    score_video,
    summarize,
    ShapesConfig,
)

ADHERENCE = ("color", "shape", "size", "motion", "count", "all_correct")


@pytest.mark.parametrize("background", ["plain", "textured"])
def test_real_clips_score_near_one_in_memory_and_after_mp4(background, tmp_path):
    ds = MovingShapes(10, size=64, num_frames=17, seed=11, background=background)
    in_memory, decoded = [], []
    for i in range(len(ds)):
        sample = ds.sample(i)
        expected = expected_from_caption(sample.caption)
        in_memory.append(score_video(sample.frames, expected))
        path = tmp_path / f"{i}.mp4"
        write_video(path, sample.frames, fps=8)
        decoded.append(score_video(read_video(path), expected))
    for records in (in_memory, decoded):
        summary = summarize(records)
        for key in ADHERENCE:
            assert summary[key]["mean"] >= 0.95, (key, summary[key])
        assert summary["subject_consistency"]["mean"] > 0.97
        assert summary["temporal_flickering"]["mean"] > 0.95


def test_wrong_prompts_score_low():
    ds = MovingShapes(40, size=64, num_frames=17, seed=5, max_objects=1)
    sample = next(s for s in map(ds.sample, range(40)) if s.objects[0]["motion"] == "right")
    obj = sample.objects[0]
    other_color = next(c for c in COLORS if c != obj["color"])
    other_shape = next(s for s in ("circle", "square", "triangle", "diamond") if s != obj["shape"])
    size = obj["size"]
    wrong_color = score_video(sample.frames, expected_from_caption(
        f"a {size} {other_color} {obj['shape']} moving right"))
    assert wrong_color["color"] == 0.0 and wrong_color["count"] == 1.0 and wrong_color["all_correct"] == 0.0
    wrong_motion = score_video(sample.frames, expected_from_caption(
        f"a {size} {obj['color']} {obj['shape']} moving left"))
    assert wrong_motion["motion"] == 0.0 and wrong_motion["color"] == 1.0
    wrong_shape = score_video(sample.frames, expected_from_caption(
        f"a {size} {obj['color']} {other_shape} moving right"))
    assert wrong_shape["shape"] == 0.0
    two = score_video(sample.frames, expected_from_caption(
        f"a {size} {obj['color']} {obj['shape']} moving right and a small {other_color} circle staying still"))
    assert two["count"] == 0.0 and two["color"] == 0.5


def test_blank_and_static_videos():
    blank = torch.zeros(8, 64, 64, 3, dtype=torch.uint8)
    result = score_video(blank, expected_from_caption("a large red square staying still"))
    assert result["count"] == 0.0 and result["color"] == 0.0
    assert result["subject_consistency"] == 0.0 and result["dynamic"] == 0.0
    assert result["temporal_flickering"] == 1.0 and result["static_prompt"]


def test_hand_drawn_objects_on_noise():
    # A yellow square moving down and a static magenta diamond, on dark noise with
    # codec-like jitter of the object colours.
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 70, (12, 64, 64, 3)).astype(np.int16)
    yy, xx = np.mgrid[:64, :64]
    for t in range(12):
        top = 4 + 3 * t
        square = (yy >= top) & (yy < top + 16) & (xx >= 6) & (xx < 22)
        diamond = np.abs(xx - 46) + np.abs(yy - 40) <= 5  # 11 px: "small" (1/6 of 64)
        frames[t][square] = np.array(COLORS["yellow"]) + rng.integers(-12, 13, (square.sum(), 3))
        frames[t][diamond] = np.array(COLORS["magenta"]) + rng.integers(-12, 13, (diamond.sum(), 3))
    frames = torch.from_numpy(np.clip(frames, 0, 255).astype(np.uint8))
    found = {o["color"]: o for o in detect_objects(frames)}
    assert set(found) == {"yellow", "magenta"}
    assert (found["yellow"]["shape"], found["yellow"]["motion"]) == ("square", "down")
    assert (found["magenta"]["shape"], found["magenta"]["motion"]) == ("diamond", "static")
    result = score_video(frames, expected_from_caption(
        "a large yellow square moving down and a small magenta diamond staying still"))
    assert result["all_correct"] == 1.0 and result["dynamic"] == 1.0


def test_track_per_frame_finds_an_object_that_appears_late_and_ignores_specks():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 60, (6, 64, 64, 3)).astype(np.uint8)
    frames[1, 30, 30] = COLORS["cyan"]  # a codec speck, below the smallest object
    for t in range(3, 6):
        frames[t, 20:30, 8 + 2 * t:18 + 2 * t] = COLORS["cyan"]
    track = track_per_frame(frames, "cyan")
    assert np.isnan(track[:3]).all()
    assert np.allclose(track[3:], [[12.5 + 2 * t, 24.5] for t in range(3, 6)])
    assert np.isnan(track_per_frame(frames, "red")).all()
    # fewer than presence_min of the frames: found per frame, absent from the video
    assert detect_objects(frames, ShapesConfig(presence_min=0.6)) == []


def test_shape_and_motion_rules():
    assert classify_shape(-0.55, 0.5) == "square"
    assert classify_shape(0.05, 0.5) == "circle"
    assert classify_shape(0.45, 0.5) == "diamond"
    assert classify_shape(0.0, 0.66) == "triangle"
    cfg = ShapesConfig()
    t = np.arange(10, dtype=float)
    assert classify_motion(np.stack([10 + 3 * t, 20 + 0 * t], 1), 64, cfg)[0] == "right"
    assert classify_motion(np.stack([40 - 3 * t, 20 + 0 * t], 1), 64, cfg)[0] == "left"
    assert classify_motion(np.stack([20 + 0 * t, 50 - 3 * t], 1), 64, cfg)[0] == "up"
    assert classify_motion(np.stack([20 + 3 * t, 20 + 3 * t], 1), 64, cfg)[0] == "bounce"
    assert classify_motion(np.stack([20 + 0.2 * (t % 2), 20 + 0 * t], 1), 64, cfg)[0] == "static"
    # leaving one side, entering at the other (MovingShapes edges="wrap"): the direction holds although
    # the last position is left of the first
    assert classify_motion(np.stack([np.mod(50 + 3 * t, 64), 20 + 0 * t], 1), 64, cfg)[0] == "right"
    assert classify_motion(np.stack([20 + 0 * t, np.mod(10 - 3 * t, 64)], 1), 64, cfg)[0] == "up"


def test_wrapped_clips_score_as_their_captions():
    """MovingShapes on a torus, 33 frames (an axis-moving object crosses an edge in most clips): the
    benchmark reads every object's motion as captioned, a split object still found with its colour."""
    ds = MovingShapes(16, size=64, num_frames=33, seed=8, max_objects=1, edges="wrap")
    samples = [ds.sample(i) for i in range(len(ds))]
    crossing = [s for s in samples if np.array(s.objects[0]["bbox"]).max() > 63 or np.array(s.objects[0]["bbox"]).min() < 0]
    assert len(crossing) >= 4
    for s in samples:
        score = score_video(s.frames, expected_from_caption(s.caption))
        assert score["color"] == 1.0 and score["motion"] == 1.0, s.caption
