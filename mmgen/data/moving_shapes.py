"""MovingShapes: a procedural, captioned, labelled video dataset with per-frame ground truth.

Every clip shows one or two flat-coloured shapes moving over a plain or textured
background. Because the generating attributes are known, a generated video can be
scored analytically later (is there a red object, does it move right?), and attribute
combinations can be held out of training to test generalisation.

Conventions (the metrics area relies on them):

* Objects are drawn with crisp edges in exactly their ``COLORS`` value, so they can be
  found again by colour. Objects of one clip have different colours and never overlap
  (so combinations whose paths must cross, e.g. two large objects moving left and up,
  are rarer than independent sampling would make them).
* Sizes: ``small`` spans about 1/6 of the frame side, ``large`` about 1/3.
* Motions ``left/right/up/down`` travel ``TRAVEL`` (half the frame side) over the clip;
  ``bounce`` moves diagonally at the same per-axis speed and reflects off the walls;
  ``static`` stays put. With ``edges="inside"`` (the default) objects always stay fully inside
  the frame: an axis motion starts where its whole travel fits. With ``edges="wrap"`` the frame
  is a torus: an axis motion starts anywhere and an object leaving one side enters at the other
  (drawn split across the edge meanwhile), so "moving right" means the same at any clip length.
* Ground truth is in pixel-index coordinates (x = column, y = row, origin top left):
  ``centroid`` is the mean pixel index of the object's full (unoccluded) mask and
  ``bbox`` is the inclusive ``[x0, y0, x1, y1]`` of that mask, per frame; for an object split
  across an edge (``"wrap"``) both are taken with the object in one piece (the bbox then reaches
  past the frame and the centroid is folded back into it).
* Labels: ``class_names()`` enumerates ``"{color} {shape} {motion}"``; a clip's label is
  the id of its first object.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mmgen.data.captions import TEMPLATE_SETS, paraphrase
from mmgen.data.clips import to_model_range

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 190, 40),
    "blue": (40, 70, 235),
    "yellow": (240, 220, 40),
    "cyan": (40, 210, 220),
    "magenta": (215, 45, 215),
    "white": (240, 240, 240),
    "orange": (245, 140, 25),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
MOTIONS = ("left", "right", "up", "down", "static", "bounce")
BACKGROUNDS = ("plain", "textured", "mixed")
EDGES = ("inside", "wrap", "mixed")
SPLITS = ("all", "train", "heldout")

#: Object extent (side / diameter) as a fraction of the frame side.
SIZE_FRACTION = {"small": 1 / 6, "large": 1 / 3}
#: Distance travelled over the whole clip, as a fraction of the frame side (per axis for bounce).
TRAVEL = 0.5
#: Textured backgrounds stay below this channel value so objects stand out.
TEXTURE_MAX = 80

_MOTION_PHRASE = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "static": "staying still",
    "bounce": "bouncing",
}
_DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
_OVERLAP_TRIES = 100


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str
    size: str
    motion: str

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("color", self.color, tuple(COLORS)),
            ("size", self.size, SIZES),
            ("motion", self.motion, MOTIONS),
        ):
            if value not in allowed:
                raise ValueError(f"ObjectSpec.{field}={value!r} is not one of {list(allowed)}")


def caption_of(objects: Sequence[ObjectSpec]) -> str:
    """Caption in the fixed grammar, e.g. ``"a small red circle moving right"``."""
    if not 1 <= len(objects) <= 2:
        raise ValueError(f"a caption describes 1 or 2 objects, got {len(objects)}")
    return " and ".join(
        f"a {o.size} {o.color} {o.shape} {_MOTION_PHRASE[o.motion]}" for o in objects
    )


def parse_caption(text: str) -> list[ObjectSpec]:
    """Objects of a caption in any paraphrase of the grammar (see :mod:`mmgen.data.captions`);
    raises ``ValueError`` for text outside it (a word it does not know, a missing size, colour,
    shape or motion, more than 2 objects)."""
    from mmgen.data.captions import parse_objects

    return [ObjectSpec(**o) for o in parse_objects(text, require_size=True)]


def class_names() -> list[str]:
    """``"{color} {shape} {motion}"`` for every combination; the list index is the class id."""
    return [f"{c} {s} {m}" for c in COLORS for s in SHAPES for m in MOTIONS]


def class_id(color: str, shape: str, motion: str) -> int:
    """Class id of one object (the position of its name in :func:`class_names`)."""
    ObjectSpec(shape=shape, color=color, size=SIZES[0], motion=motion)  # validates the names
    c, s, m = list(COLORS).index(color), SHAPES.index(shape), MOTIONS.index(motion)
    return (c * len(SHAPES) + s) * len(MOTIONS) + m


@dataclass
class ShapesSample:
    """One clip with its ground truth. ``frames`` is uint8 ``[T, H, W, C]`` (torch)."""

    frames: torch.Tensor
    caption: str
    label: int
    objects: list[dict]


class MovingShapes(Dataset):
    """Procedural moving-shapes clips, deterministic in ``(seed, index)``.

    Args:
        num_samples: dataset length (clips are rendered on the fly, nothing is stored).
        size: frame side in pixels (frames are square).
        num_frames: frames per clip.
        seed: base seed; clip ``i`` depends only on ``(seed, i)`` and the other arguments.
        max_objects: 1 or 2; each clip has between 1 and ``max_objects`` objects.
        background: ``"plain"`` (black), ``"textured"`` (static dark grey noise) or ``"mixed"``
            (each clip draws one of the two).
        holdout: ``(color, shape)`` pairs never shown in the ``"train"`` split.
        split: ``"all"`` (no constraint), ``"train"`` (no object uses a held-out pair) or
            ``"heldout"`` (the first object, which gives the label, uses a held-out pair;
            further objects are unconstrained).
        fps: frame rate recorded with the clips (used when they are written to disk).
        captions: ``"canonical"`` (:func:`caption_of`), or a random paraphrase from the
            ``"train"`` or ``"heldout"`` templates of :mod:`mmgen.data.captions`. Paraphrases
            and the mixed background draw from their own random streams, so the frames of a
            clip do not depend on them.
        edges: ``"inside"`` or ``"wrap"`` (left/right/up/down objects on a torus; module docstring), or
            ``"mixed"`` (each clip draws one of the two from its own random stream).
    """

    def __init__(
        self,
        num_samples: int,
        size: int = 64,
        num_frames: int = 17,
        seed: int = 0,
        max_objects: int = 2,
        background: str = "plain",
        holdout: Sequence[tuple[str, str]] | None = None,
        split: str = "all",
        fps: int = 8,
        captions: str = "canonical",
        edges: str = "inside",
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if size < 16:
            raise ValueError(f"size must be >= 16 pixels, got {size}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if max_objects not in (1, 2):
            raise ValueError(f"max_objects must be 1 or 2 (the caption grammar), got {max_objects}")
        if background not in BACKGROUNDS:
            raise ValueError(f"background={background!r} is not one of {list(BACKGROUNDS)}")
        if captions not in TEMPLATE_SETS:
            raise ValueError(f"captions={captions!r} is not one of {list(TEMPLATE_SETS)}")
        if edges not in EDGES:
            raise ValueError(f"edges={edges!r} is not one of {list(EDGES)}")
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")
        self.holdout = frozenset(tuple(pair) for pair in (holdout or ()))
        for color, shape in self.holdout:
            if color not in COLORS or shape not in SHAPES:
                raise ValueError(f"holdout pair {(color, shape)!r} is not a (color, shape) pair")
        all_pairs = [(c, s) for c in COLORS for s in SHAPES]
        self._train_pairs = [p for p in all_pairs if p not in self.holdout]
        self._heldout_pairs = [p for p in all_pairs if p in self.holdout]
        if split == "heldout" and not self._heldout_pairs:
            raise ValueError("split='heldout' needs a non-empty holdout list")
        if split == "train" and not self._train_pairs:
            raise ValueError("split='train' is empty: every (color, shape) pair is held out")
        self.num_samples = num_samples
        self.size = size
        self.num_frames = num_frames
        self.seed = seed
        self.max_objects = max_objects
        self.background = background
        self.split = split
        self.fps = fps
        self.captions = captions
        self.edges = edges
        # Pixel-index grids shared by every render; shapes broadcast against [T, 1, 1] centres.
        self._xs = np.arange(size, dtype=np.float32)[None, None, :]
        self._ys = np.arange(size, dtype=np.float32)[None, :, None]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        sample = self.sample(index)
        return {"video": to_model_range(sample.frames), "caption": sample.caption, "label": sample.label}

    def sample(self, index: int) -> ShapesSample:
        """Render clip ``index`` with its caption, label and per-frame object ground truth."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for MovingShapes of length {self.num_samples}")
        rng = np.random.default_rng([self.seed, index])
        wrap = self._wraps(index)
        placed = self._draw_objects(rng, wrap)
        specs = [spec for spec, _, _ in placed]
        frames = self._background(rng, index)
        objects = []
        for spec, cx, cy in placed:
            dx, dy = self._offsets(cx, cy, wrap)
            mask = _mask(spec.shape, SIZE_FRACTION[spec.size] * self.size / 2, dx, dy)
            frames[mask] = COLORS[spec.color]
            truth = _ground_truth_on_torus(mask, cx, cy, dx, dy, self.size) if wrap else _ground_truth(mask)
            objects.append({**asdict(spec), **truth})
        return ShapesSample(
            frames=torch.from_numpy(frames),
            caption=paraphrase(specs, np.random.default_rng([self.seed, index, 1]), self.captions),
            label=class_id(specs[0].color, specs[0].shape, specs[0].motion),
            objects=objects,
        )

    # -- attribute sampling ------------------------------------------------------------

    def _wraps(self, index: int) -> bool:
        """Whether clip ``index`` puts its axis motions on a torus."""
        if self.edges == "mixed":
            return bool(np.random.default_rng([self.seed, index, 3]).integers(2))
        return self.edges == "wrap"

    def _draw_objects(self, rng: np.random.Generator, wrap: bool) -> list[tuple[ObjectSpec, np.ndarray, np.ndarray]]:
        """Objects with their centre tracks ``(spec, cx [T], cy [T])``, never overlapping.

        A further object keeps its (color, shape) but re-draws size, motion and start until
        its box stays clear of the others in every frame; if that fails (two large objects
        crossing paths), the clip simply has fewer objects.
        """
        count = int(rng.integers(1, self.max_objects + 1))
        placed: list[tuple[ObjectSpec, np.ndarray, np.ndarray]] = []
        boxes: list[np.ndarray] = []
        for k in range(count):
            pairs = self._pairs_for(k, {spec.color for spec, _, _ in placed})
            if not pairs:  # every allowed pair has a colour already in the clip
                break
            color, shape = pairs[int(rng.integers(len(pairs)))]
            for _ in range(_OVERLAP_TRIES):
                size = SIZES[int(rng.integers(len(SIZES)))]
                motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
                h = SIZE_FRACTION[size] * self.size / 2
                cx, cy = self._track(rng, motion, h, wrap)
                box = np.stack([cx - h, cy - h, cx + h, cy + h], axis=1)
                period = self.size if wrap else None
                if not any(_boxes_overlap(box, other, period) for other in boxes):
                    placed.append((ObjectSpec(shape=shape, color=color, size=size, motion=motion), cx, cy))
                    boxes.append(box)
                    break
        return placed

    def _pairs_for(self, k: int, used_colors: set[str]) -> list[tuple[str, str]]:
        """(color, shape) pairs object ``k`` may use under the split, minus colours in use."""
        if self.split == "heldout" and k == 0:
            pairs = self._heldout_pairs
        elif self.split == "train":
            pairs = self._train_pairs
        else:
            pairs = self._heldout_pairs + self._train_pairs
        return [p for p in pairs if p[0] not in used_colors]

    def _track(self, rng: np.random.Generator, motion: str, h: float, wrap: bool) -> tuple[np.ndarray, np.ndarray]:
        # Centres live in [lo, hi] so the whole object stays inside the frame.
        lo, hi = h, self.size - 1 - h
        t = np.arange(self.num_frames, dtype=np.float32)
        step = TRAVEL * self.size / max(self.num_frames - 1, 1)
        if motion == "static":
            x0, y0 = rng.uniform(lo, hi, size=2)
            return np.full_like(t, x0), np.full_like(t, y0)
        if motion == "bounce":
            x0, y0 = rng.uniform(lo, hi, size=2)
            sx, sy = rng.choice([-1.0, 1.0], size=2)
            return _reflect(x0 + sx * step * t, lo, hi), _reflect(y0 + sy * step * t, lo, hi)
        dx, dy = _DIRECTIONS[motion]
        if wrap:
            along = rng.uniform(0, self.size)
            across = rng.uniform(lo, hi)
            path = np.mod(along + (dx + dy) * step * t, self.size)
            return (path, np.full_like(t, across)) if dx != 0 else (np.full_like(t, across), path)
        travel = step * t[-1]
        # Along the motion axis, start where the full travel still ends inside the frame.
        start_lo, start_hi = (lo + travel, hi) if (dx < 0 or dy < 0) else (lo, hi - travel)
        along = rng.uniform(start_lo, max(start_lo, start_hi))
        across = rng.uniform(lo, hi)
        if dx != 0:
            return along + dx * step * t, np.full_like(t, across)
        return np.full_like(t, across), along + dy * step * t

    # -- rendering ---------------------------------------------------------------------

    def _background(self, rng: np.random.Generator, index: int) -> np.ndarray:
        s, t = self.size, self.num_frames
        kind = self.background
        if kind == "mixed":
            kind = BACKGROUNDS[int(np.random.default_rng([self.seed, index, 2]).integers(2))]
        if kind == "plain":
            return np.zeros((t, s, s, 3), dtype=np.uint8)
        # Blocky grey base plus a little per-channel noise: dark and almost colourless.
        cells = -(-s // 4)
        base = rng.integers(12, 56, size=(cells, cells, 1))
        base = np.kron(base, np.ones((4, 4, 1), dtype=base.dtype))[:s, :s]
        noise = rng.integers(-8, 9, size=(s, s, 3))
        texture = np.clip(base + noise, 0, TEXTURE_MAX - 1).astype(np.uint8)
        return np.broadcast_to(texture, (t, s, s, 3)).copy()

    def _offsets(self, cx: np.ndarray, cy: np.ndarray, wrap: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel offsets ``[T, 1, W]``, ``[T, H, 1]`` from an object's centre track; on the torus
        (``edges="wrap"``) the shorter way round, so an object at an edge is also drawn at the other."""
        dx = self._xs - cx[:, None, None]
        dy = self._ys - cy[:, None, None]
        if wrap:
            half = self.size / 2
            dx, dy = np.mod(dx + half, self.size) - half, np.mod(dy + half, self.size) - half
        return dx, dy


def _mask(shape: str, h: float, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Boolean ``[T, H, W]`` mask of one object of half-extent ``h`` from pixel offsets to its centre."""
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= h
    # Upward triangle: apex at (cx, cy - h), base from (cx - h, cy + h) to (cx + h, cy + h).
    return (dy >= -h) & (dy <= h) & (2 * np.abs(dx) <= dy + h)


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold positions back into ``[lo, hi]`` as if bouncing off both walls."""
    span = hi - lo
    phase = np.mod(x - lo, 2 * span)
    return lo + np.where(phase > span, 2 * span - phase, phase)


def _boxes_overlap(a: np.ndarray, b: np.ndarray, period: float | None = None) -> bool:
    """Whether two per-frame box tracks ``[T, 4]`` intersect (with a 1 px margin) in any frame;
    with ``period`` on a torus of that side (``b`` also shifted one period either way)."""
    shifts = (0.0,) if period is None else (-period, 0.0, period)
    for sx in shifts:
        for sy in shifts:
            c = b + np.array([sx, sy, sx, sy])
            if np.any((a[:, 0] <= c[:, 2] + 1) & (c[:, 0] <= a[:, 2] + 1)
                      & (a[:, 1] <= c[:, 3] + 1) & (c[:, 1] <= a[:, 3] + 1)):
                return True
    return False


def _ground_truth(mask: np.ndarray) -> dict:
    """Per-frame centroid and inclusive bbox of a ``[T, H, W]`` mask (pixel indices)."""
    centroids, bboxes = [], []
    for frame in mask:
        ys, xs = np.nonzero(frame)
        centroids.append([float(xs.mean()), float(ys.mean())])
        bboxes.append([int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())])
    return {"centroid": centroids, "bbox": bboxes}


def _ground_truth_on_torus(mask: np.ndarray, cx: np.ndarray, cy: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                           size: int) -> dict:
    """:func:`_ground_truth` of an object that may be split across edges: its pixels are put back in
    one piece around the centre (centre + offset), the centroid folded back into the frame."""
    centroids, bboxes = [], []
    for t, frame in enumerate(mask):
        ys, xs = np.nonzero(frame)
        ux = np.rint(cx[t] + dx[t, 0, xs])
        uy = np.rint(cy[t] + dy[t, ys, 0])
        centroids.append([float(np.mod(ux.mean(), size)), float(np.mod(uy.mean(), size))])
        bboxes.append([int(ux.min()), int(uy.min()), int(ux.max()), int(uy.max())])
    return {"centroid": centroids, "bbox": bboxes}
