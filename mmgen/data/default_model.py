"""Recipe of the first (v1) default model, byte-level, shipped in ``mmgen/assets/default`` until the
full-grammar MiniLM model replaced it; its 32 captions remain a benchmark set (``legacy32``) and
post-training's "old prompts" (built by ``scripts/build_default_model_v1.sh``; configs ``configs/generator/moving_shapes_default.yaml`` and
``configs/sample/default.yaml``).

The default model must learn *colour* and *motion direction* from text within tens of
minutes of training on a shared CPU (a few hundred optimiser steps), so it is trained on a
deliberately narrow slice of MovingShapes: one large circle on a plain background, in any
of the 8 colours, moving left, right, up or down — 8 x 4 = 32 captions such as
``"a large red circle moving right"`` (:data:`DEFAULT_PROMPTS`). Other shapes and sizes are
a config change away (``shapes=`` / ``sizes=``) for anyone with more compute.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from mmgen.data.moving_shapes import COLORS, MovingShapes, ObjectSpec, caption_of

DEFAULT_SHAPES = ("circle",)
DEFAULT_SIZES = ("large",)
DEFAULT_MOTIONS = ("left", "right", "up", "down")


def captions(shapes: Sequence[str] = DEFAULT_SHAPES, sizes: Sequence[str] = DEFAULT_SIZES,
             motions: Sequence[str] = DEFAULT_MOTIONS) -> list[str]:
    """Every single-object caption over the given attributes (all colours), colour-major."""
    return [caption_of([ObjectSpec(shape=s, color=c, size=z, motion=m)])
            for c in COLORS for s in shapes for z in sizes for m in motions]


DEFAULT_PROMPTS: list[str] = captions()


class DefaultModelShapes(Dataset):
    """MovingShapes restricted to single-object captions over ``shapes`` x ``sizes`` x ``motions``
    (all colours, plain background); by default the default model's 32 captions.

    Clip ``i`` is the ``i``-th clip of ``MovingShapes(seed=seed, max_objects=1,
    background="plain")`` whose caption qualifies; deterministic in the arguments. Items are
    MovingShapes items: ``{"video", "caption", "label"}``.
    """

    def __init__(self, num_samples: int, seed: int = 0, size: int = 64, num_frames: int = 17,
                 shapes: Sequence[str] = DEFAULT_SHAPES, sizes: Sequence[str] = DEFAULT_SIZES,
                 motions: Sequence[str] = DEFAULT_MOTIONS):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.captions = captions(shapes, sizes, motions)
        allowed = set(self.captions)
        # MovingShapes draws colour, shape, size and motion uniformly: expect this share to qualify
        share = len(allowed) / (len(COLORS) * 4 * 2 * 6)
        pool = MovingShapes(int(num_samples / share * 1.5) + 256, size=size, num_frames=num_frames, seed=seed,
                            max_objects=1, background="plain")
        self.shapes = pool
        self.indices: list[int] = []
        for i in range(len(pool)):
            if pool.sample(i).caption in allowed:
                self.indices.append(i)
                if len(self.indices) == num_samples:
                    break
        if len(self.indices) < num_samples:
            raise RuntimeError(f"only {len(self.indices)} of {num_samples} qualifying clips in a pool of {len(pool)}")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.shapes[self.indices[i]]
