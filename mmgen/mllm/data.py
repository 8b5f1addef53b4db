"""Synthetic visual question answering with a fine-grained split.

Scenes are drawn analytically at ``hires`` pixels (default 128) and shown to the model
downscaled to ``size`` (default 64, area interpolation).  Objects come in three sizes; a
``tiny`` object is 5 model pixels across, 5/8 of an 8x8 patch token: its shape is still drawn in
the model's input pixels, but one patch token holds it blurred with the background (or it
straddles two to four tokens) — the case Blink is about.  (At the first tiny size, 3 px, the
shape was gone from the input pixels: no model could recover it, and a zoom only helped with
detail the model never receives.)  ``small`` (9 px) and
``large`` (15 px) objects span one to two patch tokens, so their shape is visible at the model's
resolution (at the first sizes, 6 and 13 px, two thirds of all objects were sub-patch and the
normal split was nearly as hard as the fine-grained one).  The high-resolution
render is kept so that a region can be cropped and zoomed with real extra detail (TokenSR
targets and zoom views).

Every object lies inside one image quadrant (so "where is ..." has an exact answer) and
objects never overlap; (colour, shape) pairs are unique within a scene so every question
names exactly one object.  Question templates (answer = one word):

  colour:    "what color is the {shape} ?"            -> colour      (shape unique in the scene)
  shape:     "what shape is the {color} object ?"     -> shape       (colour unique in the scene)
  count:     "how many {color} objects are there ?"   -> "0".."4"
  position:  "where is the {color} {shape} ?"         -> top-left | top-right | bottom-left | bottom-right
  existence: "is there a {color} {shape} ?"           -> yes | no

Splits are deterministic in (seed, split, index).  Objects take their sizes from ``sizes``
(default ``NORMAL_SIZES``: small and large); ``finegrained`` (held out: its own seed stream)
makes the object(s) a question is about tiny, and for "no" existence questions places a tiny
decoy that shares the colour.  So by default tiny objects occur only in the fine-grained split:
the MLLM's QA training never shows one, as an MLLM's instruction data rarely asks about details
far smaller than its visual tokens — the situation Blink addresses.  (With tiny objects in the
QA training as well, the model learned to read them as well as the hidden states allow, and
appended region tokens could only re-present the same information: Blink-interp +0.010 and
Blink -0.005 to +0.006 over vanilla's 0.836 on a fine-grained development stream.)  TokenSR,
trained on images without answers, sees all sizes (``sizes=tuple(SIZES)``).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mmgen.data.moving_shapes import COLORS as _PALETTE
from mmgen.data.moving_shapes import SHAPES

# Six colours of the project's MovingShapes palette (same RGB values), and its four shapes.
COLORS: dict[str, tuple[int, int, int]] = {
    name: _PALETTE[name] for name in ("red", "green", "blue", "yellow", "cyan", "magenta")
}
SIZES: dict[str, float] = {"tiny": 5.0, "small": 9.0, "large": 15.0}  # radius at 128 px
NORMAL_SIZES = ("small", "large")  # what the QA data asks about outside the fine-grained split
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
QTYPES = ("color", "shape", "count", "position", "existence")
SPLITS = {"train": 0, "val": 1, "finegrained": 2}
MAX_COUNT = 4

ANSWERS: tuple[str, ...] = (*COLORS, *SHAPES, *[str(i) for i in range(MAX_COUNT + 1)], *QUADRANTS,
                            "yes", "no")


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str
    cx: float  # centre, in hires pixels
    cy: float

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    def bbox(self) -> tuple[float, float, float, float]:
        r = self.radius
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    def quadrant(self, hires: int) -> str:
        top = self.cy < hires / 2
        left = self.cx < hires / 2
        return QUADRANTS[(0 if top else 2) + (0 if left else 1)]


@dataclass
class VQASample:
    image: np.ndarray  # uint8 [H, W, 3] at hires
    question: str
    answer: str
    qtype: str
    objects: list[SceneObject]
    target_bbox: tuple[float, float, float, float] | None  # hires pixels, object the question is about


# --------------------------------------------------------------------------- rendering
def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, r: float) -> np.ndarray:
    """Inside-test for a shape of 'radius' r centred at the origin (pixel-centre coordinates)."""
    if shape == "circle":
        return xx**2 + yy**2 <= r**2
    if shape == "square":
        s = r * 0.85
        return (np.abs(xx) <= s) & (np.abs(yy) <= s)
    if shape == "diamond":
        return np.abs(xx) + np.abs(yy) <= r
    if shape == "triangle":  # apex up, base at the bottom
        return (yy <= r * 0.8) & (yy >= -r) & (np.abs(xx) <= (yy + r) * 0.5 * 1.15)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(objects: list[SceneObject], hires: int, rng: np.random.Generator) -> np.ndarray:
    """Draw the scene at hires x hires; 2x2 supersampling keeps small shapes recognisable."""
    img = rng.integers(0, 28, size=(hires, hires, 3)).astype(np.float32)  # dark noisy background
    ss = 2
    coords = (np.arange(hires * ss) + 0.5) / ss
    for ob in objects:
        x0, y0, x1, y1 = ob.bbox()
        ix0, iy0 = max(int(math.floor(x0)) - 1, 0), max(int(math.floor(y0)) - 1, 0)
        ix1, iy1 = min(int(math.ceil(x1)) + 1, hires), min(int(math.ceil(y1)) + 1, hires)
        xs = coords[ix0 * ss: ix1 * ss] - ob.cx
        ys = coords[iy0 * ss: iy1 * ss] - ob.cy
        xx, yy = np.meshgrid(xs, ys)
        cover = _shape_mask(ob.shape, xx, yy, ob.radius).astype(np.float32)
        cover = cover.reshape(iy1 - iy0, ss, ix1 - ix0, ss).mean(axis=(1, 3))[..., None]
        colour = np.asarray(COLORS[ob.color], dtype=np.float32)
        patch = img[iy0:iy1, ix0:ix1]
        img[iy0:iy1, ix0:ix1] = patch * (1 - cover) + colour * cover
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def to_model_input(image: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, size, size] in [-1, 1] (area downscale, bilinear upscale)."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().unsqueeze(0) / 127.5 - 1
    if x.shape[-2:] != (size, size):
        mode = "area" if min(x.shape[-2:]) >= size else "bilinear"
        x = F.interpolate(x, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return x[0].clamp(-1, 1)


# --------------------------------------------------------------------------- scenes and questions
def _place(rng: random.Random, size: str, hires: int, taken: list[SceneObject],
           quadrant: int | None = None) -> tuple[float, float] | None:
    """A centre inside one quadrant (with margin) not overlapping earlier objects."""
    r = SIZES[size]
    half = hires / 2
    margin = 2.0
    for _ in range(60):
        q = rng.randrange(4) if quadrant is None else quadrant
        qx, qy = (q % 2) * half, (q // 2) * half
        lo, hi = r + margin, half - r - margin
        cx, cy = qx + rng.uniform(lo, hi), qy + rng.uniform(lo, hi)
        if all(math.hypot(cx - o.cx, cy - o.cy) > r + o.radius + 3 for o in taken):
            return cx, cy
    return None


def patch_labels(objects: list[SceneObject], hires: int, grid: int) -> torch.Tensor:
    """Per patch of a grid x grid tiling: (colour id + 1, shape id + 1) of the object covering most
    of it (0 = background) -> Long [grid*grid, 2].  A patch counts as covered when the object's
    box covers a quarter of it or the object's centre lies in it (so tiny objects get a label)."""
    cell = hires / grid
    best = torch.zeros(grid, grid)
    labels = torch.zeros(grid, grid, 2, dtype=torch.long)
    colors, shapes = list(COLORS), list(SHAPES)
    for ob in objects:
        x0, y0, x1, y1 = ob.bbox()
        for r in range(max(int(y0 // cell), 0), min(int(y1 // cell), grid - 1) + 1):
            for c in range(max(int(x0 // cell), 0), min(int(x1 // cell), grid - 1) + 1):
                ox = min(x1, (c + 1) * cell) - max(x0, c * cell)
                oy = min(y1, (r + 1) * cell) - max(y0, r * cell)
                cover = max(ox, 0) * max(oy, 0) / cell**2
                if int(ob.cy // cell) == r and int(ob.cx // cell) == c:
                    cover = max(cover, 0.26)
                if cover > 0.25 and cover > best[r, c]:
                    best[r, c] = cover
                    labels[r, c] = torch.tensor([colors.index(ob.color) + 1, shapes.index(ob.shape) + 1])
    return labels.reshape(-1, 2)


class VQADataset(Dataset):
    """Procedural VQA scenes; ``ds[i]`` -> dict(image float [3,size,size] in [-1,1], question, answer,
    qtype, target_bbox float [4] in model pixels (-1s when the question has no single target),
    hires uint8 [hires,hires,3], patch_labels Long [(size/patch)^2, 2] (see :func:`patch_labels`)).

    ``ds.sample(i)`` returns the full :class:`VQASample` including the high-resolution render.
    Deterministic in (seed, split, i).
    """

    def __init__(self, num_samples: int, split: str = "train", seed: int = 0, size: int = 64,
                 hires: int = 128, min_objects: int = 2, max_objects: int = 5,
                 qtypes: tuple[str, ...] = QTYPES, patch: int = 8, sizes: tuple[str, ...] = NORMAL_SIZES):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}")
        if not sizes or any(z not in SIZES for z in sizes):
            raise ValueError(f"sizes must be a non-empty subset of {tuple(SIZES)}, got {sizes}")
        self.sizes = tuple(sizes)
        bad = [q for q in qtypes if q not in QTYPES]
        if bad:
            raise ValueError(f"unknown question types {bad}; expected a subset of {QTYPES}")
        if hires % size:
            raise ValueError(f"hires ({hires}) must be a multiple of size ({size})")
        self.num_samples, self.split, self.seed = num_samples, split, seed
        self.size, self.hires, self.patch = size, hires, patch
        self.min_objects, self.max_objects = min_objects, max_objects
        self.qtypes = tuple(qtypes)

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, i: int) -> random.Random:
        return random.Random(f"mmgen-vqa/{self.seed}/{self.split}/{i}")

    def sample(self, i: int) -> VQASample:
        if not 0 <= i < self.num_samples:
            raise IndexError(i)
        rng = self._rng(i)
        fine = self.split == "finegrained"
        qtype = self.qtypes[i % len(self.qtypes)]
        for _ in range(20):
            built = self._build(rng, qtype, fine)
            if built is not None:
                break
        else:  # pragma: no cover - placement essentially never fails 20 times
            raise RuntimeError(f"could not build scene {i} of split {self.split}")
        objects, question, answer, target = built
        image = render(objects, self.hires, np.random.default_rng(rng.getrandbits(32)))
        return VQASample(image, question, answer, qtype, objects, target.bbox() if target else None)

    def _random_size(self, rng: random.Random) -> str:
        return rng.choice(self.sizes)

    def _build(self, rng: random.Random, qtype: str, fine: bool):
        n = rng.randint(self.min_objects, self.max_objects)
        objects: list[SceneObject] = []
        used: set[tuple[str, str]] = set()

        def add(shape: str, color: str, size: str) -> SceneObject | None:
            if (color, shape) in used:
                return None
            pos = _place(rng, size, self.hires, objects)
            if pos is None:
                return None
            ob = SceneObject(shape, color, size, *pos)
            objects.append(ob)
            used.add((color, shape))
            return ob

        target_size = "tiny" if fine else self._random_size(rng)
        colors, shapes = list(COLORS), list(SHAPES)
        target: SceneObject | None = None
        if qtype == "color":
            # the target's shape must be unique: other objects use other shapes
            shape = rng.choice(shapes)
            target = add(shape, rng.choice(colors), target_size)
            others = [s for s in shapes if s != shape]
            fill = lambda: add(rng.choice(others), rng.choice(colors), self._random_size(rng))  # noqa: E731
            question, answer_of = f"what color is the {shape} ?", (lambda: target.color)
        elif qtype == "shape":
            color = rng.choice(colors)
            target = add(rng.choice(shapes), color, target_size)
            others = [c for c in colors if c != color]
            fill = lambda: add(rng.choice(shapes), rng.choice(others), self._random_size(rng))  # noqa: E731
            question, answer_of = f"what shape is the {color} object ?", (lambda: target.shape)
        elif qtype == "position":
            target = add(rng.choice(shapes), rng.choice(colors), target_size)
            fill = lambda: add(rng.choice(shapes), rng.choice(colors), self._random_size(rng))  # noqa: E731
            question = f"where is the {target.color} {target.shape} ?" if target else ""
            answer_of = lambda: target.quadrant(self.hires)  # noqa: E731
        elif qtype == "existence":
            color, shape = rng.choice(colors), rng.choice(shapes)
            present = rng.random() < 0.5
            if present:
                target = add(shape, color, target_size)
            elif fine:  # decoy: same colour, other shape, tiny
                add(rng.choice([s for s in shapes if s != shape]), color, "tiny")
            fill = lambda: add(rng.choice(shapes), rng.choice(colors), self._random_size(rng))  # noqa: E731
            question = f"is there a {color} {shape} ?"
            answer_of = lambda: "yes" if (color, shape) in used else "no"  # noqa: E731
            if not present:  # keep the absent pair absent while filling
                used.add((color, shape))
                answer_of = lambda: "no"  # noqa: E731
        elif qtype == "count":
            color = rng.choice(colors)
            k = rng.randint(0 if not fine else 1, min(MAX_COUNT, n))
            for j in range(k):
                size = "tiny" if (fine and j == 0) else self._random_size(rng)
                if add(rng.choice(shapes), color, size) is None and len(objects) <= j:
                    return None
            k = sum(o.color == color for o in objects)
            others = [c for c in colors if c != color]
            fill = lambda: add(rng.choice(shapes), rng.choice(others), self._random_size(rng))  # noqa: E731
            question, answer_of = f"how many {color} objects are there ?", (lambda: str(k))
        else:  # pragma: no cover - validated in __init__
            raise ValueError(qtype)
        if qtype in ("color", "shape", "position") and target is None:
            return None
        if qtype == "existence" and present and target is None:
            return None
        tries = 0
        while len(objects) < n and tries < 30:
            fill()
            tries += 1
        rng.shuffle(objects)
        return objects, question, answer_of(), target

    def __getitem__(self, i: int) -> dict:
        s = self.sample(i)
        scale = self.size / self.hires
        bbox = torch.tensor(s.target_bbox, dtype=torch.float32) * scale if s.target_bbox else torch.full((4,), -1.0)
        return {"image": to_model_input(s.image, self.size), "hires": torch.from_numpy(s.image),
                "question": s.question, "answer": s.answer, "qtype": s.qtype, "target_bbox": bbox,
                "patch_labels": patch_labels(s.objects, self.hires, self.size // self.patch)}
