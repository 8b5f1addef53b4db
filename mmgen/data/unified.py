"""Training data of the unified model: MovingShapes latents with captions and short questions.

:class:`UnifiedLatents` reads a latent cache (``mmgen ar tokenize`` of MovingShapes with
canonical captions) and turns each clip into one training row of a random direction:

* generation (probability ``1 - understand_ratio``): prompt = the caption, video = target;
* understanding: caption the video (``<caption> ... <eos>``) or, with probability
  ``question_ratio``, answer one question about it (:func:`questions`).

A two-object caption names its objects in the order they were drawn, which the video does not
show; ``caption_order="color"`` makes the caption the model writes name them in palette order
(:data:`~mmgen.data.moving_shapes.COLORS`; colours are unique within a clip), so its first words
are a function of the video. Generation prompts keep the drawn order either way.

Questions are about colour, shape, size, motion and count; an object is named by its colour
(colours are unique within a clip) and, for "what color", by its shape when no other object
shares it. Answers are short: a word, or the motion phrase of the canonical caption.
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence

from torch.utils.data import Dataset

from mmgen.data.captions import HELDOUT_TEMPLATES, JOINERS, MOTION_SYNONYMS, SIZE_SYNONYMS, TRAIN_TEMPLATES
from mmgen.data.latents import LatentCache
from mmgen.data.moving_shapes import COLORS, SHAPES, ObjectSpec, caption_of, parse_caption

CAPTION_ORDERS = ("drawn", "color")
COUNT_WORDS = {1: "one", 2: "two"}
QUESTION_TEMPLATES = ("how many objects are there?", "what shape is the {color} object?",
                      "what size is the {color} object?", "how is the {color} object moving?",
                      "what color is the {shape}?")


def questions(objects: Sequence[ObjectSpec]) -> list[tuple[str, str]]:
    """Every (question, answer) pair the grammar asks about a clip's objects."""
    count, ask_count, ask_shape, ask_size, ask_motion, ask_color = (COUNT_WORDS[len(objects)], *QUESTION_TEMPLATES)
    qa = [(ask_count, count)]
    shapes = [o.shape for o in objects]
    for o in objects:
        qa += [(ask_shape.format(color=o.color), o.shape), (ask_size.format(color=o.color), o.size),
               (ask_motion.format(color=o.color), MOTION_SYNONYMS[o.motion][0])]
        if shapes.count(o.shape) == 1:
            qa.append((ask_color.format(shape=o.shape), o.color))
    return qa


def ordered(objects: Sequence[ObjectSpec], order: str) -> list[ObjectSpec]:
    """``objects`` as drawn, or (``order="color"``) sorted by their colour's place in the palette."""
    palette = list(COLORS)
    return sorted(objects, key=lambda o: palette.index(o.color)) if order == "color" else list(objects)


def grammar_words() -> list[str]:
    """The unified model's word vocabulary: every word and mark of the MovingShapes captions
    (all paraphrase templates, synonyms, joiners), of the questions and of their answers."""
    from mmgen.ar.words import split_words

    texts = [*TRAIN_TEMPLATES, *HELDOUT_TEMPLATES, *JOINERS, *QUESTION_TEMPLATES, "a an the .", *COLORS, *SHAPES,
             *(w for words in SIZE_SYNONYMS.values() for w in words), *(p for ps in MOTION_SYNONYMS.values() for p in ps),
             *COUNT_WORDS.values()]
    return sorted({w for text in texts for w in split_words(re.sub(r"\{\w+\}", " ", text))})


class UnifiedLatents(Dataset):
    """Rows of both directions over a MovingShapes latent cache (see the module doc).

    Items: ``{"latent", "caption", "label", "query", "answer"}``; ``answer`` "" = a generation
    row, ``query`` "" = caption the video. The direction is drawn per item access from a
    ``seed``-ed stream, so each epoch mixes the directions afresh.
    """

    def __init__(self, path: str, understand_ratio: float = 0.5, question_ratio: float = 0.5, seed: int = 0,
                 latent_frames: int | None = None, caption_order: str = "drawn"):
        if not 0 <= understand_ratio <= 1 or not 0 <= question_ratio <= 1:
            raise ValueError(f"understand_ratio and question_ratio must be in [0, 1], got "
                             f"{understand_ratio}, {question_ratio}")
        if caption_order not in CAPTION_ORDERS:
            raise ValueError(f"caption_order must be one of {CAPTION_ORDERS}, got {caption_order!r}")
        self.cache = LatentCache(path, latent_frames)
        self.objects = [parse_caption(c) for c in self.cache.captions]
        self.captions = [caption_of(o) for o in self.objects]
        self.answers = [caption_of(ordered(o, caption_order)) for o in self.objects]
        self.understand_ratio, self.question_ratio = understand_ratio, question_ratio
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> dict:
        item = self.cache[i]
        item["caption"], query, answer = self.captions[i], "", ""
        if self.rng.random() < self.understand_ratio:
            if self.rng.random() < self.question_ratio:
                query, answer = self.rng.choice(questions(self.objects[i]))
            else:
                answer = self.answers[i]
        return {**item, "query": query, "answer": answer}
