"""MovingShapes caption paraphrases, held-out splits, and the parser the benchmark relies on."""
import numpy as np
import pytest
import torch

from mmgen.data.captions import (
    COLOR_WORDS,
    HELDOUT_PAIRS,
    HELDOUT_TEMPLATES,
    SHAPE_WORDS,
    TRAIN_TEMPLATES,
    benchmark_prompts,
    object_phrase,
    paraphrase,
    parse_objects,
)
from mmgen.data.moving_shapes import COLORS, SHAPES, MovingShapes, ObjectSpec, parse_caption
from mmgen.metrics.shapes import expected_from_caption, summarize


def test_vocabulary_matches_the_renderer():
    assert COLOR_WORDS == tuple(COLORS) and SHAPE_WORDS == SHAPES
    colors = {c for c, _ in HELDOUT_PAIRS}
    shapes = {s for _, s in HELDOUT_PAIRS}
    assert len(colors) == len(shapes) == len(HELDOUT_PAIRS) == 4  # each held-out colour/shape trained elsewhere


@pytest.mark.parametrize("template", TRAIN_TEMPLATES + HELDOUT_TEMPLATES)
def test_every_template_and_synonym_parses_back(template):
    rng = np.random.default_rng(0)
    for color in COLORS:
        for shape in SHAPES:
            for size in ("small", "large"):
                for motion in ("left", "right", "up", "down", "static", "bounce"):
                    obj = ObjectSpec(shape, color, size, motion)
                    text = object_phrase(obj, template, rng)
                    assert parse_caption(text) == [obj], text


def test_paraphrases_vary_and_parse():
    objs = [ObjectSpec("circle", "orange", "small", "left"), ObjectSpec("diamond", "blue", "large", "up")]
    texts = {paraphrase(objs, np.random.default_rng(i)) for i in range(60)}
    assert len(texts) > 40
    assert any(t.isupper() for t in texts) and any(t.endswith(".") for t in texts)
    assert any("to the left" in t.lower() for t in texts) and any("tiny" in t.lower() for t in texts)
    for t in texts:
        assert parse_caption(t) == objs, t
    assert paraphrase(objs, np.random.default_rng(0), "canonical") == (
        "a small orange circle moving left and a large blue diamond moving up")


def test_parser_rejects_text_outside_the_grammar():
    for bad in ["a small purple circle moving left", "a small red circle", "a small red circle moving left and",
                "a red blue circle moving up", "a small red circle moving left and x and y", "",
                "a small red circle dancing left"]:
        with pytest.raises(ValueError):
            parse_caption(bad)
    # prompts may leave the size open; captions may not
    assert parse_objects("a red circle moving right") == [
        {"shape": "circle", "color": "red", "size": None, "motion": "right"}]
    assert expected_from_caption("The big blue square, going upward.").objects == [
        {"shape": "square", "color": "blue", "size": "large", "motion": "up"}]


def test_splits_keep_heldout_pairs_and_templates_out_of_training():
    train = MovingShapes(200, size=32, num_frames=3, captions="train", background="mixed",
                         holdout=HELDOUT_PAIRS, split="train")
    backgrounds = set()
    for i in range(len(train)):
        s = train.sample(i)
        assert not any((o["color"], o["shape"]) in HELDOUT_PAIRS for o in s.objects)
        assert not s.caption.lower().startswith("there is") and " in " not in s.caption.lower()
        backgrounds.add(bool(s.frames[0].max(-1).values.min() > 0))  # textured: no black pixel
    assert backgrounds == {True, False}
    # paraphrasing draws from its own stream: the frames are those of the canonical dataset
    canonical = MovingShapes(4, size=32, num_frames=3, holdout=HELDOUT_PAIRS, split="train", background="mixed")
    assert all(torch.equal(canonical.sample(i).frames, train.sample(i).frames) for i in range(4))
    sets = benchmark_prompts(per_set=6)
    assert all(len(v) == 6 for v in sets.values())
    assert all(len(parse_caption(c)) == 2 for c in sets["two_objects"])
    assert all((o.color, o.shape) in HELDOUT_PAIRS for c in sets["heldout_pairs"] for o in parse_caption(c))


def test_two_object_colour_summary():
    rows = [{"expected": [{}, {}], "color": 1.0}, {"expected": [{}, {}], "color": 0.5}, {"expected": [{}], "color": 1.0}]
    for r in rows:
        r.update(shape=1.0, size=None, motion=1.0, count=1.0, all_correct=1.0, subject_consistency=1.0,
                 motion_magnitude=0.3, dynamic=1.0, temporal_flickering=0.9, static_prompt=False)
    s = summarize(rows)
    assert s["two_object_colors"] == {"mean": 0.5, "n": 2}
