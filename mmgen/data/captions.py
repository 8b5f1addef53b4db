"""MovingShapes caption paraphrases, the held-out splits of the grammar, and one parser for all.

The canonical caption (:func:`mmgen.data.moving_shapes.caption_of`) is
``"a small red circle moving right"``. Paraphrases vary what a user would vary:

* synonyms: small/tiny, large/big; moving/going; "to the left"/"left"; up/upward, down/downward;
  "staying still"/"standing still"/"static"; "bouncing"/"bouncing around";
* articles (a/an, the, none), word order (size and colour swapped, motion first), case and
  punctuation, and two-object joiners ("and", ", and", "; and").

Two things are *never* shown in training, so generalisation can be measured:

* :data:`HELDOUT_PAIRS`: four (colour, shape) combinations, one per shape and colour, whose
  colour and shape are both trained with other partners;
* :data:`HELDOUT_TEMPLATES`: two sentence templates ("there is ...", "... in <colour> ...").

:func:`parse_objects` reads every template (trained or held out) by keywords: each object is
the part between "and"s and must name exactly one colour, one shape and one motion (and at
most one size); any word outside the vocabulary is an error, so text outside the grammar is
never silently scored.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

COLOR_WORDS = ("red", "green", "blue", "yellow", "cyan", "magenta", "white", "orange")
SHAPE_WORDS = ("circle", "square", "triangle", "diamond")
SIZE_SYNONYMS = {"small": ("small", "tiny"), "large": ("large", "big")}
MOTION_SYNONYMS = {
    "left": ("moving left", "moving to the left", "going left", "going to the left"),
    "right": ("moving right", "moving to the right", "going right", "going to the right"),
    "up": ("moving up", "moving upward", "going up", "going upward"),
    "down": ("moving down", "moving downward", "going down", "going downward"),
    "static": ("staying still", "standing still", "static"),
    "bounce": ("bouncing", "bouncing around"),
}
# Words that carry the attribute (the motion keyword of each phrase) and the glue around them.
_SIZE_OF = {w: size for size, words in SIZE_SYNONYMS.items() for w in words}
_MOTION_OF = {"left": "left", "right": "right", "up": "up", "upward": "up", "upwards": "up",
              "down": "down", "downward": "down", "downwards": "down", "still": "static",
              "static": "static", "bouncing": "bounce"}
_FILLER = frozenset({"a", "an", "the", "there", "is", "that", "in", "moving", "going", "to", "staying",
                     "standing", "around"})

#: Object templates used in training: {a} article, {size} {color} {shape} words, {motion} phrase.
TRAIN_TEMPLATES = (
    "{a} {size} {color} {shape} {motion}",
    "{a} {color} {size} {shape} {motion}",
    "{a} {size} {color} {shape} that is {motion}",
    "{motion}, {a} {size} {color} {shape}",
)
#: Object templates never used in training (the metric still parses them).
HELDOUT_TEMPLATES = (
    "there is {a} {size} {color} {shape} {motion}",
    "{a} {size} {shape} in {color} {motion}",
)
#: (colour, shape) pairs never shown in training; each colour and shape is trained elsewhere.
HELDOUT_PAIRS = (("red", "square"), ("green", "triangle"), ("blue", "diamond"), ("orange", "circle"))
JOINERS = (" and ", ", and ", "; and ")
TEMPLATE_SETS = ("canonical", "train", "heldout")


def _article(word_after: str, rng: np.random.Generator) -> str:
    choice = ("a", "the", "")[int(rng.integers(3))]
    if choice == "a" and word_after[0] in "aeiou":
        return "an"
    return choice


def object_phrase(obj, template: str, rng: np.random.Generator, synonyms: bool = True) -> str:
    """One object (anything with .size .color .shape .motion) in ``template``."""
    size = SIZE_SYNONYMS[obj.size][int(rng.integers(2))] if synonyms else obj.size
    phrases = MOTION_SYNONYMS[obj.motion] if synonyms else MOTION_SYNONYMS[obj.motion][:1]
    motion = phrases[int(rng.integers(len(phrases)))]
    first = template.split("{a}", 1)[1].strip().split(" ", 1)[0] if "{a}" in template else "{size}"
    fields = {"size": size, "color": obj.color, "shape": obj.shape, "motion": motion}
    article = _article(first.format(**fields), rng)
    text = template.format(a=article, **fields)
    return " ".join(text.split()).lstrip(", ")


def _restyle(text: str, rng: np.random.Generator) -> str:
    """Case and punctuation: as is, Sentence case, a final full stop, or all capitals."""
    style = int(rng.integers(4))
    if style == 1:
        text = text[0].upper() + text[1:]
    elif style == 2:
        text = text[0].upper() + text[1:] + "."
    elif style == 3:
        text = text.upper()
    return text


def paraphrase(objects: Sequence, rng: np.random.Generator, templates: str = "train") -> str:
    """A random paraphrase of the caption of ``objects`` from a template set:
    "train" (:data:`TRAIN_TEMPLATES`), "heldout" (:data:`HELDOUT_TEMPLATES`) or "canonical"."""
    if templates == "canonical":
        from mmgen.data.moving_shapes import caption_of

        return caption_of(objects)
    if templates not in TEMPLATE_SETS:
        raise ValueError(f"templates={templates!r} is not one of {list(TEMPLATE_SETS)}")
    pool = TRAIN_TEMPLATES if templates == "train" else HELDOUT_TEMPLATES
    parts = [object_phrase(o, pool[int(rng.integers(len(pool)))], rng) for o in objects]
    joiner = JOINERS[int(rng.integers(len(JOINERS)))]
    return _restyle(joiner.join(parts), rng)


def parse_objects(text: str, require_size: bool = False) -> list[dict]:
    """Objects named by a caption or prompt in the grammar, as dicts of shape/color/size/motion
    (size None when the prompt leaves it open and ``require_size`` is False)."""
    if not isinstance(text, str):
        raise TypeError(f"caption must be a str, got {type(text).__name__}")
    words = re.findall(r"[a-z]+|[^a-z\s,.;:!]", text.lower())
    chunks: list[list[str]] = [[]]
    for w in words:
        if w == "and":
            chunks.append([])
        else:
            chunks[-1].append(w)
    if len(chunks) > 2:
        raise ValueError(f"caption {text!r} describes more than 2 objects")
    return [_parse_object(chunk, text, require_size) for chunk in chunks]


def _parse_object(words: list[str], text: str, require_size: bool) -> dict:
    found: dict[str, list[str]] = {"color": [], "shape": [], "size": [], "motion": []}
    for w in words:
        if w in COLOR_WORDS:
            found["color"].append(w)
        elif w in SHAPE_WORDS:
            found["shape"].append(w)
        elif w in _SIZE_OF:
            found["size"].append(_SIZE_OF[w])
        elif w in _MOTION_OF:
            found["motion"].append(_MOTION_OF[w])
        elif w not in _FILLER:
            raise ValueError(f"caption {text!r}: {w!r} is not a word of the MovingShapes grammar")
    for key in ("color", "shape", "motion", "size"):
        if len(found[key]) > 1:
            raise ValueError(f"caption {text!r}: one object names several {key}s {found[key]}")
        if not found[key] and (key != "size" or require_size):
            part = " ".join(words) or "(empty)"
            raise ValueError(f"caption {text!r}: the object {part!r} names no {key}")
    return {"shape": found["shape"][0], "color": found["color"][0],
            "size": found["size"][0] if found["size"] else None, "motion": found["motion"][0]}


def benchmark_prompts(per_set: int = 16) -> dict[str, list[str]]:
    """The prompt sets of the default model's benchmark (deterministic):

    * ``train``: single-object captions of the default model's training clips (seed 0, train split);
    * ``two_objects``: two-object captions of those clips;
    * ``heldout_pairs``: the :data:`HELDOUT_PAIRS` in trained templates;
    * ``heldout_templates``: trained pairs in the :data:`HELDOUT_TEMPLATES`.
    """
    from mmgen.data.moving_shapes import MovingShapes

    def take(ds, want_objects: int | None) -> list[str]:
        out = []
        for i in range(len(ds)):
            sample = ds.sample(i)
            if want_objects is None or len(sample.objects) == want_objects:
                out.append(sample.caption)
            if len(out) == per_set:
                break
        return out

    common = dict(holdout=HELDOUT_PAIRS)  # the training cache's clip geometry: the same captions
    train = MovingShapes(4 * per_set + 64, seed=0, captions="train", background="mixed", split="train", **common)
    return {
        "train": take(train, 1),
        "two_objects": take(train, 2),
        "heldout_pairs": take(MovingShapes(per_set, seed=1, max_objects=1, captions="train", split="heldout",
                                           **common), None),
        "heldout_templates": take(MovingShapes(per_set, seed=2, max_objects=1, captions="heldout", split="train",
                                               **common), None),
    }
