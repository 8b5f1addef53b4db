"""Analytic MovingShapes benchmark: does a video show what its prompt asks for?

No learned weights. Objects are found by colour (the ``COLORS`` palette is known),
their shape is read from two mask statistics, their motion from the centroid track:

* pixels: bright pixels (max channel ≥ ``bright_min``; backgrounds are dark) whose
  nearest palette colour is close and clearly nearer than the second nearest; per colour
  and frame the largest connected component is the object (codec speckles drop out);
* an object is present in a video when found in ≥ ``presence_min`` of its frames;
* shape: upward triangles are bottom-heavy (centroid ⅔ down their bbox); the symmetric
  shapes differ in where their mass lies, axis-aligned or diagonal: the kurtosis of the
  mask's pixel coordinates along the axes minus along the diagonals is −0.6 for a square
  (uniform along x, triangular along a diagonal), 0 for a circle, +0.6 for a diamond; the
  per-frame votes' majority wins (objects need ~8 px or more: at 32 px frames a small
  diamond and a small circle are the same blob);
* size: mean bbox side over the frame side, nearer to 1/6 ("small") or 1/3 ("large")
  on a log scale;
* motion: per-axis centroid path length Σ|Δx|, Σ|Δy|; an axis moves when its path exceeds
  ``move_min`` of the frame side; none -> static, both -> bounce (diagonal), one -> its
  direction from the net displacement's sign. A step is taken the shorter way round the frame
  (|Δ| ≤ half the side), so an object that leaves one side and enters at the other (MovingShapes
  ``edges="wrap"``) keeps its direction; no frame-to-frame step of a real track is that long.

Adherence scores per video (fractions of the prompted objects): colour (found),
shape/size/motion (found and right), count (number of objects found = prompted), and
``all_correct``. Quality: temporal flicker (VBench formula, over all videos and over
videos whose prompt is all static), subject consistency (presence x area stability x
colour stability of each object) and dynamic degree (share of videos where an object
moves), plus the mean motion magnitude.

Prompts come from a ``manifest.jsonl`` (``mmgen data synth``) or the JSON sidecars of
``mmgen sample`` ("prompt", else "class_id": then only colour, shape and motion of the
one labelled object are scored).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch
from tqdm import tqdm

from mmgen.data.captions import parse_objects
from mmgen.data.moving_shapes import COLORS, SIZE_FRACTION, class_names
from mmgen.io import VideoReadError, read_video
from mmgen.metrics.vbench import temporal_flickering_video
from mmgen.metrics.videos import list_videos

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # [K, 3]
_COLOR_NAMES = list(COLORS)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # BT.601 weights
_MIN_LUMA_CONTRAST = 20.0
# Axis-minus-diagonal kurtosis of the ideal symmetric shapes (uniform 9/5, triangular 12/5,
# the circle's semicircle marginal 2 in every direction), and the vertical centroid position
# (0 = bbox top, 1 = bottom) above which a shape is the upward triangle (ideal ⅔, symmetric
# shapes ½).
SYMMETRIC_KURTOSIS_GAP = {"square": -0.6, "circle": 0.0, "diamond": 0.6}
TRIANGLE_V_POS = 0.575
ADHERENCE = ("color", "shape", "size", "motion", "count", "all_correct")


@dataclass(frozen=True)
class ShapesConfig:
    """Detection thresholds (documented defaults; pixels are uint8 RGB)."""

    bright_min: int = 110  # palette colours have a channel >= 215; backgrounds stay < 80
    color_tol: float = 70.0  # max RGB distance to the nearest palette colour
    color_margin: float = 0.7  # nearest must be < margin x second nearest
    min_area_frac: float = 0.002  # smallest object component, as a fraction of the frame
    presence_min: float = 0.5  # fraction of frames an object must be found in
    edge_alpha: float = 0.55  # an edge pixel belongs to the object when its (luma) blend weight exceeds this
    edge_color_alpha: float = 0.3  # ... and its blend weight along the RGB colour direction exceeds this
    move_min: float = 0.15  # per-axis path (fraction of the frame side) that counts as moving


@dataclass
class Expected:
    """What a prompt asks for: objects with colour/shape/motion and, for full captions, size.
    ``count`` is None when the prompt does not fix the number of objects (class labels)."""

    objects: list[dict]
    count: int | None
    source: str


def expected_from_caption(caption: str) -> Expected:
    """Objects of a prompt in any paraphrase of the grammar (:mod:`mmgen.data.captions`);
    a prompt that leaves the size open is scored on colour, shape and motion."""
    objects = parse_objects(caption)
    return Expected(objects, len(objects), "caption")


def expected_from_class(class_id: int) -> Expected:
    names = class_names()
    if not 0 <= class_id < len(names):
        raise ValueError(f"class_id {class_id} out of range [0, {len(names)})")
    color, shape, motion = names[class_id].split()
    return Expected([{"color": color, "shape": shape, "motion": motion, "size": None}], None, "class_id")


# ---------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------


def label_pixels(frames: np.ndarray, cfg: ShapesConfig) -> np.ndarray:
    """int [T, H, W]: palette index of each pixel, −1 for background / ambiguous pixels."""
    x = frames.astype(np.float32)
    dist = np.linalg.norm(x[..., None, :] - _PALETTE, axis=-1)  # [T, H, W, K]
    order = np.argsort(dist, axis=-1)
    nearest = order[..., 0]
    d1 = np.take_along_axis(dist, order[..., :1], -1)[..., 0]
    d2 = np.take_along_axis(dist, order[..., 1:2], -1)[..., 0]
    ok = (x.max(-1) >= cfg.bright_min) & (d1 <= cfg.color_tol) & (d1 < cfg.color_margin * d2)
    return np.where(ok, nearest, -1)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = scipy.ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))


def _min_area(h: int, w: int, cfg: ShapesConfig) -> int:
    return max(4, int(cfg.min_area_frac * h * w))


def _object_core(labels: np.ndarray, k: int, min_area: int) -> np.ndarray | None:
    """The largest component of palette colour ``k`` in one frame's labels, or None when it is
    smaller than ``min_area`` (codec speckles)."""
    mask = labels == k
    if mask.sum() < min_area:
        return None
    mask = _largest_component(mask)
    return mask if mask.sum() >= min_area else None


def track_per_frame(frames: np.ndarray, color: str, cfg: ShapesConfig = ShapesConfig()) -> np.ndarray:
    """float [T, 2]: the (x, y) centroid of the ``color`` object in each frame of a uint8
    [T, H, W, 3] video, NaN where none is found (the per-frame test of :func:`detect_objects`,
    before ``presence_min`` and edge growing)."""
    frames = np.asarray(frames)
    labels = label_pixels(frames, cfg)
    min_area = _min_area(frames.shape[1], frames.shape[2], cfg)
    k = _COLOR_NAMES.index(color)
    track = np.full((len(frames), 2), np.nan)
    for i, frame_labels in enumerate(labels):
        core = _object_core(frame_labels, k, min_area)
        if core is not None:
            ys, xs = np.nonzero(core)
            track[i] = xs.mean(), ys.mean()
    return track


def _grow_edges(core: np.ndarray, claimed: np.ndarray, frame: np.ndarray, color: np.ndarray,
                background: np.ndarray, cfg: ShapesConfig) -> np.ndarray:
    """Add the 1-pixel ring around ``core`` where the pixel is mostly object (and no other
    colour claimed it).

    Codecs blend edge pixels with the background, which pushes them out of the strict
    colour test. The blend weight α comes from pixel ≈ α·colour + (1 − α)·background,
    measured on luma: H.264 4:2:0 keeps luma at full resolution but halves chroma, so
    edges stay sharp in luma. A second, looser α along the RGB direction from background
    to colour rejects bright background texture that is not the object's colour. (On 629
    objects, in memory and decoded, this made no shape error; RGB alone made 5, luma alone
    1.) Where the object's luma is too close to the background's, RGB alone decides.
    """
    ring = scipy.ndimage.binary_dilation(core, structure=np.ones((3, 3), bool)) & ~claimed
    offset = frame[ring] - background
    direction = color - background
    alpha_rgb = (offset @ direction) / float(direction @ direction)
    contrast = float(direction @ _LUMA)
    if abs(contrast) >= _MIN_LUMA_CONTRAST:
        inside = ((offset @ _LUMA) / contrast > cfg.edge_alpha) & (alpha_rgb > cfg.edge_color_alpha)
    else:
        inside = alpha_rgb > cfg.edge_alpha
    grown = core.copy()
    grown[ring] = inside
    return grown


def kurtosis_gap(xs: np.ndarray, ys: np.ndarray) -> float:
    """Mean kurtosis of pixel coordinates along x and y minus along the two diagonals.

    Blur rounds corners from the outside in, but the bulk of the mask keeps its square or
    diamond mass distribution: a small diamond blurred with σ = 0.75 px or decoded by the
    tiny tokenizer keeps a gap of ~+0.3..+0.5, while its fill (area / bbox area, the feature
    this replaced) drifts to the circle's π/4. Per frame on 6 clips per shape and size, fill
    read 48% of those blurred small diamonds and 41% of the tokenizer's small squares right,
    this gap 100% and 100%; clean and H.264-decoded clips stay at 100% either way."""
    u, v = xs - xs.mean(), ys - ys.mean()
    p, q = (u + v) / math.sqrt(2), (u - v) / math.sqrt(2)

    def kurt(a: np.ndarray) -> float:
        var = float((a * a).mean())
        return float((a ** 4).mean()) / var ** 2 if var > 0 else 0.0

    return (kurt(u) + kurt(v)) / 2 - (kurt(p) + kurt(q)) / 2


def classify_shape(gap: float, v_pos: float) -> str:
    """Upward triangles are the only bottom-heavy shape (centroid ⅔ down the bbox; a codec
    blurring the apex pulls it towards ~0.6), so they are split off first; the symmetric
    shapes then by :func:`kurtosis_gap`: square −0.6, circle 0, diamond +0.6 (the nearest)."""
    if v_pos > TRIANGLE_V_POS:
        return "triangle"
    return min(SYMMETRIC_KURTOSIS_GAP, key=lambda shape: abs(gap - SYMMETRIC_KURTOSIS_GAP[shape]))


def classify_size(extent: float) -> str:
    """Extent = bbox side / frame side -> the nearer of the sizes on a log scale."""
    return min(SIZE_FRACTION, key=lambda s: abs(math.log(max(extent, 1e-6) / SIZE_FRACTION[s])))


def classify_motion(track: np.ndarray, side: int, cfg: ShapesConfig) -> tuple[str, float]:
    """track: [N, 2] centroids (x, y) of the frames where the object was found.
    Returns (motion, path length / frame side of the longer axis)."""
    if len(track) < 2:
        return "static", 0.0
    delta = np.diff(track, axis=0)
    delta = np.mod(delta + side / 2, side) - side / 2  # the shorter way round: wrapping keeps direction
    steps = np.abs(delta).sum(axis=0)  # per-axis path (x, y)
    moving = steps > cfg.move_min * side
    magnitude = float(steps.max() / side)
    if moving.all():
        return "bounce", magnitude
    if not moving.any():
        return "static", magnitude
    axis = int(np.argmax(moving))
    net = delta[:, axis].sum()
    if axis == 0:
        return ("right" if net > 0 else "left"), magnitude
    return ("down" if net > 0 else "up"), magnitude


def detect_objects(frames: torch.Tensor | np.ndarray, cfg: ShapesConfig = ShapesConfig()) -> list[dict]:
    """Objects in a uint8 [T, H, W, 3] video, one per palette colour present, with their
    attributes and stability measures."""
    frames = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    t, h, w, _ = frames.shape
    side = min(h, w)
    labels = label_pixels(frames, cfg)
    min_area = _min_area(h, w, cfg)
    pixels = frames.astype(np.float32)
    # One background colour per frame: the median of the pixels no object claims.
    backgrounds = [np.median(pixels[i][labels[i] < 0], axis=0) if (labels[i] < 0).any()
                   else np.zeros(3, np.float32) for i in range(t)]
    objects = []
    for k, color in enumerate(_COLOR_NAMES):
        per_frame = []
        for i in range(t):
            mask = _object_core(labels[i], k, min_area)
            if mask is None:
                continue
            mask = _grow_edges(mask, labels[i] >= 0, pixels[i], _PALETTE[k], backgrounds[i], cfg)
            area = int(mask.sum())
            ys, xs = np.nonzero(mask)
            x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
            bw, bh = x1 - x0 + 1, y1 - y0 + 1
            cy = ys.mean()
            per_frame.append({
                "frame": i, "area": area, "centroid": (float(xs.mean()), float(cy)),
                "gap": kurtosis_gap(xs.astype(np.float64), ys.astype(np.float64)),
                "v_pos": float((cy - y0) / max(y1 - y0, 1)),
                "extent": (bw + bh) / 2.0 / side, "rgb": frames[i][mask].astype(np.float64).mean(0),
            })
        presence = len(per_frame) / t
        if presence < cfg.presence_min:
            continue
        shape_votes = Counter(classify_shape(f["gap"], f["v_pos"]) for f in per_frame)
        track = np.array([f["centroid"] for f in per_frame])
        motion, magnitude = classify_motion(track, side, cfg)
        areas = np.array([f["area"] for f in per_frame], dtype=np.float64)
        rgb = np.stack([f["rgb"] for f in per_frame])
        area_stability = 1.0 - min(1.0, float(areas.std() / areas.mean()))
        color_stability = 1.0 - float(np.abs(rgb - np.median(rgb, axis=0)).mean() / 255.0)
        objects.append({
            "color": color,
            "shape": shape_votes.most_common(1)[0][0],
            "size": classify_size(float(np.mean([f["extent"] for f in per_frame]))),
            "motion": motion,
            "motion_magnitude": magnitude,
            "presence": presence,
            "consistency": presence * area_stability * color_stability,
            "track": track.round(2).tolist(),
        })
    return objects


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------


def score_video(frames: torch.Tensor, expected: Expected, cfg: ShapesConfig = ShapesConfig()) -> dict:
    """Adherence and quality scores of one uint8 [T, H, W, 3] video against its prompt."""
    found = {o["color"]: o for o in detect_objects(frames, cfg)}
    n = len(expected.objects)
    hits = {key: 0 for key in ("color", "shape", "size", "motion")}
    sized = sum(1 for e in expected.objects if e["size"] is not None)
    for want in expected.objects:
        got = found.get(want["color"])
        if got is None:
            continue
        hits["color"] += 1
        hits["shape"] += got["shape"] == want["shape"]
        hits["motion"] += got["motion"] == want["motion"]
        if want["size"] is not None:
            hits["size"] += got["size"] == want["size"]
    scores: dict = {
        "color": hits["color"] / n,
        "shape": hits["shape"] / n,
        "motion": hits["motion"] / n,
        "size": hits["size"] / sized if sized else None,
        "count": None if expected.count is None else float(len(found) == expected.count),
    }
    defined = [v for v in scores.values() if v is not None]
    scores["all_correct"] = float(all(v == 1.0 for v in defined))
    moving = [o["motion_magnitude"] for o in found.values()]
    frames_t = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
    return {
        **scores,
        "temporal_flickering": temporal_flickering_video(frames_t),
        "static_prompt": all(e["motion"] == "static" for e in expected.objects) and expected.count is not None,
        "subject_consistency": float(np.mean([o["consistency"] for o in found.values()])) if found else 0.0,
        "dynamic": float(any(m > cfg.move_min for m in moving)),
        "motion_magnitude": float(np.mean(moving)) if moving else 0.0,
        "detected": [{k: o[k] for k in ("color", "shape", "size", "motion", "presence")} for o in found.values()],
    }


def summarize(records: list[dict]) -> dict:
    """Dataset means; each metric averages the videos where it is defined (n recorded)."""
    summary = {}

    def mean_of(key, rows):
        values = [r[key] for r in rows if r.get(key) is not None]
        return {"mean": float(np.mean(values)) if values else None, "n": len(values)}

    for key in (*ADHERENCE, "subject_consistency", "motion_magnitude"):
        summary[key] = mean_of(key, records)
    summary["dynamic_degree"] = mean_of("dynamic", records)
    # two-object prompts whose objects are both present in their colours
    pairs = [r for r in records if len(r.get("expected", ())) == 2]
    summary["two_object_colors"] = {"mean": float(np.mean([r["color"] == 1.0 for r in pairs])) if pairs else None,
                                    "n": len(pairs)}
    summary["temporal_flickering"] = mean_of("temporal_flickering", records)
    summary["temporal_flickering_static"] = mean_of(
        "temporal_flickering", [r for r in records if r.get("static_prompt")]
    )
    return summary


# ---------------------------------------------------------------------------------------
# Prompts for a folder of videos
# ---------------------------------------------------------------------------------------


def prompts_for_folder(folder: str | Path) -> tuple[list[tuple[Path, Expected]], list[dict]]:
    """(video, expectation) pairs from ``manifest.jsonl`` or per-video JSON sidecars.

    Returns the pairs and the skipped entries (file, reason): a video without a prompt, a
    prompt outside the MovingShapes grammar, a manifest row naming a missing file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder not found: {str(folder)!r}")
    pairs, skipped = [], []
    manifest = folder / "manifest.jsonl"
    if manifest.is_file():
        for line_no, line in enumerate(manifest.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                path = folder / row["file"]
                expected = expected_from_caption(row["caption"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                skipped.append({"file": f"{manifest}:{line_no}", "reason": f"bad manifest row: {err}"})
                continue
            if not path.is_file():
                skipped.append({"file": str(path), "reason": "listed in manifest but missing"})
                continue
            pairs.append((path, expected))
        return pairs, skipped
    for path in list_videos(folder):  # with sidecars only, when some have them (skips grid.mp4)
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            skipped.append({"file": str(path), "reason": f"no sidecar {sidecar.name} and no manifest.jsonl"})
            continue
        try:
            meta = json.loads(sidecar.read_text())
            if meta.get("prompt"):
                expected = expected_from_caption(meta["prompt"])
            elif meta.get("class_id") is not None:
                expected = expected_from_class(int(meta["class_id"]))
            else:
                raise ValueError("sidecar has neither 'prompt' nor 'class_id'")
        except (json.JSONDecodeError, ValueError, TypeError, AttributeError) as err:
            skipped.append({"file": str(path), "reason": f"{sidecar.name}: {err}"})
            continue
        pairs.append((path, expected))
    return pairs, skipped


def evaluate_folder(folder: str | Path, cfg: ShapesConfig = ShapesConfig(), progress: bool = True) -> dict:
    """Score every prompted video of a folder; unreadable videos are skipped and counted."""
    pairs, skipped = prompts_for_folder(folder)
    records = []
    for path, expected in tqdm(pairs, desc="shapes", unit="video", disable=not progress):
        try:
            frames = read_video(path)
        except VideoReadError as err:
            skipped.append({"file": str(path), "reason": str(err).splitlines()[0][:200]})
            continue
        if frames.shape[0] < 2:
            skipped.append({"file": str(path), "reason": f"{frames.shape[0]} frame(s), need >= 2"})
            continue
        records.append({"file": path.name, "expected_source": expected.source,
                        "expected": expected.objects, **score_video(frames, expected, cfg)})
    if not records:
        example = f"; e.g. {skipped[0]['file']}: {skipped[0]['reason']}" if skipped else ""
        raise ValueError(f"no scorable videos in {str(folder)!r} ({len(skipped)} skipped{example})")
    return {
        "metric": "moving_shapes",
        "folder": str(folder),
        "n_videos": len(records),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "config": asdict(cfg),
        "summary": summarize(records),
        "videos": records,
    }

