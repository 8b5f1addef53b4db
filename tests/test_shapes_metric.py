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


def test_class_id_prompts_score_only_what_the_label_says():
    expected = expected_from_class(class_id("green", "circle", "up"))
    assert expected.count is None and expected.objects[0]["size"] is None
    frames = torch.zeros(10, 64, 64, 3, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    for t in range(10):
        frames[t][(xx - 30) ** 2 + (yy - 50 + 3 * t) ** 2 <= 64] = torch.tensor(COLORS["green"], dtype=torch.uint8)
    result = score_video(frames, expected)
    assert result["count"] is None and result["size"] is None
    assert (result["color"], result["shape"], result["motion"], result["all_correct"]) == (1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="out of range"):
        expected_from_class(10_000)


def test_folder_with_sidecars_manifest_and_bad_entries(tmp_path):
    ds = MovingShapes(3, size=64, num_frames=9, seed=2)
    samples = [ds.sample(i) for i in range(3)]
    # Sidecars as written by `mmgen sample`.
    out = tmp_path / "samples"
    for i, s in enumerate(samples):
        write_video(out / f"s{i}.mp4", s.frames)
    (out / "s0.json").write_text(json.dumps({"prompt": samples[0].caption, "class_id": None, "seed": 0}))
    (out / "s1.json").write_text(json.dumps({"prompt": None, "class_id": samples[1].label, "seed": 0}))
    (out / "s2.json").write_text(json.dumps({"prompt": "a purple elephant dancing", "class_id": None}))
    write_video(out / "grid.mp4", samples[0].frames)  # `mmgen sample --grid`: no sidecar, not a sample
    result = evaluate_folder(out, progress=False)
    assert result["n_videos"] == 2 and result["n_skipped"] == 1
    assert "is not a word of the MovingShapes grammar" in result["skipped"][0]["reason"]
    assert [v["expected_source"] for v in result["videos"]] == ["caption", "class_id"]
    assert result["summary"]["count"]["n"] == 1  # class labels do not fix the object count
    assert result["summary"]["color"]["mean"] == 1.0

    # Videos without any sidecar or manifest: each is reported, none scored.
    bare = tmp_path / "bare"
    write_video(bare / "v.mp4", samples[0].frames)
    with pytest.raises(ValueError, match="no scorable videos"):
        evaluate_folder(bare, progress=False)

    # A manifest as written by `mmgen data synth`, with a missing file and a broken video.
    synth = tmp_path / "synth"
    rows = []
    for i, s in enumerate(samples):
        write_video(synth / f"{i:05d}.mp4", s.frames)
        rows.append({"file": f"{i:05d}.mp4", "caption": s.caption})
    rows.append({"file": "99999.mp4", "caption": samples[0].caption})
    (synth / "00002.mp4").write_bytes(b"garbage")
    (synth / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = evaluate_folder(synth, progress=False)
    assert result["n_videos"] == 2 and result["n_skipped"] == 2
    assert result["summary"]["all_correct"]["mean"] == 1.0


def test_kurtosis_gap_of_ideal_shapes():
    ys, xs = np.mgrid[-40:41, -40:41].astype(np.float64)
    for mask, want in [(np.ones_like(xs, bool), -0.6), (xs ** 2 + ys ** 2 <= 40 ** 2, 0.0),
                       (np.abs(xs) + np.abs(ys) <= 40, 0.6)]:
        assert abs(kurtosis_gap(xs[mask], ys[mask]) - want) < 0.03


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "diamond"])
def test_shapes_survive_a_slight_blur(shape):
    """A Gaussian blur of 0.75 px (a tokenizer's or codec's softening) keeps every shape and size:
    the fill ratio this metric used before called blurred small diamonds circles."""
    shapes = MovingShapes(400, seed=5, max_objects=1)
    clips = [s for s in (shapes.sample(i) for i in range(len(shapes))) if s.objects[0]["shape"] == shape]
    for size in ("small", "large"):
        clip = next(s for s in clips if s.objects[0]["size"] == size)
        blurred = scipy.ndimage.gaussian_filter(clip.frames.numpy().astype(np.float32), (0, 0.75, 0.75, 0))
        blurred = torch.from_numpy(np.clip(blurred.round(), 0, 255).astype(np.uint8))
        assert score_video(blurred, expected_from_caption(clip.caption))["shape"] == 1.0, (shape, size)


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
