"""VBench: the 16 dimensions, their aggregation, and the dimensions mmgen can score.

Aggregation follows VBench's leaderboard script: each raw score (in [0, 1]) becomes
``(raw - Min) / (Max - Min)`` times the dimension's weight; Quality is the sum over the 7
quality dimensions divided by their total weight (6.5: dynamic_degree weighs 0.5),
Semantic the same over the 9 semantic dimensions (total weight 9), and
Total = (4·Quality + 1·Semantic) / 5. VBench's script fills a missing dimension with 0;
here an aggregate with a missing dimension is *not* computed (reported as missing), so a
partial evaluation cannot pass for a full one.

Scorers implemented: ``temporal_flickering`` (exact, no weights) and
``subject_consistency`` (DINO ViT-B/16 from a local checkpoint). Every other dimension
needs a model mmgen does not implement and is reported as unsupported, never estimated.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
import yaml

from mmgen.io import VideoReadError, read_video
from mmgen.metrics.dino import DINO_ENV, load_dino
from mmgen.metrics.protocols import eval_dir
from mmgen.metrics.results import versions
from mmgen.metrics.videos import SkipReport, list_videos

QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4.0, 1.0
# Raw scores are in [0, 1] by construction, but float32 arithmetic can step outside by a
# few ulps (the cosine of two identical DINO features came out 1.00000007). Values within
# this tolerance of the range are clamped into it; anything further out is an error.
SCORE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Dimension:
    name: str
    category: str  # "quality" | "semantic"
    min: float
    max: float
    weight: float
    model: str  # what VBench scores it with

    def normalize(self, raw: float) -> float:
        """VBench's normalised, weighted score of one dimension."""
        return (raw - self.min) / (self.max - self.min) * self.weight


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("subject_consistency", "quality", 0.1462, 1.0, 1.0, "DINO ViT-B/16"),
    Dimension("background_consistency", "quality", 0.2615, 1.0, 1.0, "CLIP ViT-B/32"),
    Dimension("temporal_flickering", "quality", 0.6293, 1.0, 1.0, "none (mean absolute frame difference)"),
    Dimension("motion_smoothness", "quality", 0.706, 0.9975, 1.0, "AMT-S frame interpolation"),
    Dimension("dynamic_degree", "quality", 0.0, 1.0, 0.5, "RAFT optical flow"),
    Dimension("aesthetic_quality", "quality", 0.0, 1.0, 1.0, "CLIP ViT-L/14 + LAION aesthetic head"),
    Dimension("imaging_quality", "quality", 0.0, 1.0, 1.0, "MUSIQ (SPAQ)"),
    Dimension("object_class", "semantic", 0.0, 1.0, 1.0, "GRiT"),
    Dimension("multiple_objects", "semantic", 0.0, 1.0, 1.0, "GRiT"),
    Dimension("human_action", "semantic", 0.0, 1.0, 1.0, "UMT"),
    Dimension("color", "semantic", 0.0, 1.0, 1.0, "GRiT"),
    Dimension("spatial_relationship", "semantic", 0.0, 1.0, 1.0, "GRiT"),
    Dimension("scene", "semantic", 0.0, 0.8222, 1.0, "Tag2Text"),
    Dimension("appearance_style", "semantic", 0.0009, 0.2855, 1.0, "CLIP ViT-B/32"),
    Dimension("temporal_style", "semantic", 0.0, 0.364, 1.0, "ViCLIP"),
    Dimension("overall_consistency", "semantic", 0.0, 0.364, 1.0, "ViCLIP"),
)
BY_NAME = {d.name: d for d in DIMENSIONS}
IMPLEMENTED = ("subject_consistency", "temporal_flickering")


def dimension(name: str) -> Dimension:
    key = name.strip().replace(" ", "_").lower()
    if key not in BY_NAME:
        raise ValueError(f"unknown VBench dimension {name!r}; known: {', '.join(BY_NAME)}")
    return BY_NAME[key]


def clamp_score(name: str, value: float) -> float:
    """A raw score clamped into [0, 1] when within :data:`SCORE_TOLERANCE` of it; else an error."""
    value = float(value)
    if not -SCORE_TOLERANCE <= value <= 1.0 + SCORE_TOLERANCE:
        raise ValueError(f"VBench score of {name} must be in [0, 1] (VBench's raw scale), got {value}"
                         + ("; divide percentages by 100" if 1.0 < value <= 100.0 else ""))
    return min(max(value, 0.0), 1.0)


def aggregate(raw: dict[str, float]) -> dict:
    """Normalised scores and Quality / Semantic / Total from raw dimension scores in [0, 1].

    Keys may use spaces or underscores ("subject consistency" as in VBench files).
    A category with a missing dimension gets ``None`` and lists what is missing.
    """
    scores = {dimension(k).name: clamp_score(dimension(k).name, v) for k, v in raw.items()}
    normalized = {name: BY_NAME[name].normalize(value) for name, value in scores.items()}
    result: dict = {"normalized": normalized}
    for category in ("quality", "semantic"):
        dims = [d for d in DIMENSIONS if d.category == category]
        missing = [d.name for d in dims if d.name not in scores]
        result[f"{category}_missing"] = missing
        result[category] = None if missing else sum(normalized[d.name] for d in dims) / sum(d.weight for d in dims)
    if result["quality"] is None or result["semantic"] is None:
        result["total"] = None
    else:
        result["total"] = (QUALITY_WEIGHT * result["quality"] + SEMANTIC_WEIGHT * result["semantic"]) / (
            QUALITY_WEIGHT + SEMANTIC_WEIGHT
        )
    return result


# ---------------------------------------------------------------------------------------
# Scorers. Each returns, per video, (sum, count) of its per-frame terms, so the dataset
# score is Σsum / Σcount: VBench averages subject consistency over all frames of all
# videos, and temporal flickering over videos (count 1 each).
# ---------------------------------------------------------------------------------------


def temporal_flickering_video(frames: torch.Tensor) -> float:
    """(255 − mean_t mean|f_t − f_{t+1}|) / 255 for uint8 [T, H, W, C] (VBench: use static videos)."""
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise ValueError(f"expected uint8 [T, H, W, C] frames, got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[0] < 2:
        raise ValueError("temporal_flickering needs at least 2 frames")
    x = frames.float()
    per_pair = (x[1:] - x[:-1]).abs().flatten(1).mean(dim=1)
    return float((255.0 - per_pair.mean()) / 255.0)


class TemporalFlickering:
    """VBench scores flickering only on videos its RAFT static filter keeps (no motion);
    mmgen has no RAFT, scores every video given, and says so in the result: the score is
    VBench's only for videos of static prompts."""

    name = "temporal_flickering"
    caveat = ("static filter not applied: VBench keeps only videos RAFT finds static; mmgen scores every video, "
              "so this equals VBench's number only for a folder of videos of static prompts")

    def weights_record(self) -> dict | None:
        return None

    def score_video(self, frames: torch.Tensor) -> tuple[float, int]:
        return temporal_flickering_video(frames), 1


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dino_preprocess(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """uint8 [T, H, W, C] -> ImageNet-normalised float [T, 3, H', W'] (VBench's DINO transform:
    shorter side to ``size``, bilinear without antialiasing, no crop). VBench's video loader
    hands the transform float frames (values 0..255), so the resized frames are not rounded."""
    x = frames.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    if min(h, w) != size:
        # torchvision's Resize(int) on tensors: shorter side = size, longer side truncated.
        nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
    x = x / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class SubjectConsistency:
    """Mean over frames t ≥ 1 of (max(0, cos(f_t, f_{t−1})) + max(0, cos(f_t, f_0))) / 2 on
    DINO [CLS] features."""

    name = "subject_consistency"
    caveat = None

    def __init__(self, model: torch.nn.Module, weights: dict | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 16):
        self.model = model.eval().to(device)
        self.device, self.batch_size, self.weights = torch.device(device), batch_size, weights

    def weights_record(self) -> dict | None:
        return self.weights

    @torch.no_grad()
    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        x = dino_preprocess(frames)
        feats = [self.model(chunk.to(self.device)) for chunk in x.split(self.batch_size)]
        return F.normalize(torch.cat(feats).float(), dim=-1)

    def score_video(self, frames: torch.Tensor) -> tuple[float, int]:
        if frames.shape[0] < 2:
            raise ValueError("subject_consistency needs at least 2 frames")
        feats = self.frame_features(frames)
        to_prev = (feats[1:] * feats[:-1]).sum(-1).clamp(min=0)
        to_first = (feats[1:] * feats[:1]).sum(-1).clamp(min=0)
        per_frame = (to_prev + to_first) / 2
        return float(per_frame.sum()), int(per_frame.numel())


class ScoreLog:
    """Per-video scores appended to a JSONL file as they are computed, so a run that fails
    (or is stopped) half way recomputes nothing on the next run. A row is reused only for
    the same video file (size and modification time), dimension and weights file."""

    def __init__(self, path: str | os.PathLike, root: str | os.PathLike):
        self.path, self.root = Path(path), Path(root)
        self.rows: dict[tuple, tuple[float, int]] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:  # a line cut short by a crash is simply not reused
                    row = json.loads(line)
                    self.rows[(row["video"], row["dimension"], row["file"], row["weights"])] = (row["sum"], row["count"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def _key(self, video: str, scorer) -> tuple:
        st = (self.root / video).stat()
        weights = (scorer.weights_record() or {}).get("sha256")
        return video, scorer.name, f"{st.st_size}:{st.st_mtime_ns}", weights

    def get(self, video: str, scorer) -> tuple[float, int] | None:
        return self.rows.get(self._key(video, scorer))

    def add(self, video: str, scorer, total: float, count: int) -> None:
        key = self._key(video, scorer)
        self.rows[key] = (total, count)
        row = {"video": key[0], "dimension": key[1], "file": key[2], "weights": key[3], "sum": total, "count": count}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def evaluate_dimensions(videos: Iterable[tuple[str, torch.Tensor | Callable[[], torch.Tensor]]], scorers: list,
                        log: ScoreLog | None = None, report: SkipReport | None = None) -> dict:
    """Run scorers over (name, uint8 [T,H,W,C]) videos; returns per-dimension results.

    ``frames`` may be a function that decodes the video: it is called only when ``log``
    lacks a score. A video that fails to decode or to score (``VideoReadError``,
    ``ValueError``) is skipped for every dimension and recorded in ``report``.
    """
    report = report if report is not None else SkipReport()
    sums = {s.name: 0.0 for s in scorers}
    counts = {s.name: 0 for s in scorers}
    per_video: dict[str, list] = {s.name: [] for s in scorers}
    for name, frames in videos:
        report.examined += 1
        scores = {s.name: log.get(name, s) for s in scorers} if log is not None else {}
        try:
            decoded = None
            for scorer in scorers:
                if scores.get(scorer.name) is None:
                    if decoded is None:
                        decoded = frames() if callable(frames) else frames
                    scores[scorer.name] = scorer.score_video(decoded)
                    if log is not None:
                        log.add(name, scorer, *scores[scorer.name])
        except (VideoReadError, ValueError) as err:
            reason = "unreadable" if isinstance(err, VideoReadError) else "not_scorable"
            report.add(reason, name, str(err).splitlines()[0][:200])
            continue
        for scorer in scorers:
            total, count = scores[scorer.name]
            sums[scorer.name] += total
            counts[scorer.name] += count
            per_video[scorer.name].append({"video": name, "score": total / count})
    results = {}
    for scorer in scorers:
        n = counts[scorer.name]
        results[scorer.name] = {
            "status": "ok" if n else "no_videos",
            "score": clamp_score(scorer.name, sums[scorer.name] / n) if n else None,
            "videos": per_video[scorer.name],
            "weights": scorer.weights_record(),
        }
        if scorer.caveat:
            results[scorer.name]["caveat"] = scorer.caveat
    return results


def unsupported_record(name: str) -> dict:
    dim = BY_NAME[name]
    return {"status": "unsupported", "score": None,
            "reason": f"needs {dim.model}, which mmgen does not implement; score it with VBench itself "
                      "and aggregate with `mmgen eval vbench --aggregate FILE`"}


def load_preset(name_or_path: str) -> list[str]:
    """Dimension names of a preset: ``configs/eval/vbench/NAME.yaml`` or a YAML path (``dims: [...]``)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = eval_dir() / "vbench" / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (eval_dir() / "vbench").glob("*.yaml"))
        raise FileNotFoundError(f"unknown VBench preset {str(name_or_path)!r} ({path} missing); known: {known}")
    fields = yaml.safe_load(path.read_text())
    if not isinstance(fields, dict) or not isinstance(fields.get("dims"), list):
        raise ValueError(f"{path}: expected a mapping with a 'dims' list")
    return [dimension(name).name for name in fields["dims"]]


def load_vbench_results(path) -> dict[str, float]:
    """Raw scores from a VBench ``*_eval_results.json`` ({dim: [score, per-video]}) or a
    plain {dim: score} mapping."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping dimensions to scores")
    raw = {}
    for key, value in data.items():
        score = value[0] if isinstance(value, list) and value else value
        if not isinstance(score, (int, float)):
            raise ValueError(f"{path}: dimension {key!r} has no numeric score ({value!r:.60})")
        raw[dimension(key).name] = float(score)
    return raw


def evaluate_folder(folder, dims: list[str], dino: str | None = None, device: str = "cpu",
                    scores_file: str | os.PathLike | None = None) -> dict:
    """Score the videos of ``folder`` on ``dims``; unreadable/1-frame videos are skipped
    and counted. subject_consistency without any DINO file (no ``dino``, no
    ``MMGEN_DINO_PATH``) is reported as missing weights; a given but missing file is an error.
    With ``scores_file`` every per-video score is appended there as it is computed and
    reused on the next run (see :class:`ScoreLog`)."""
    dims = [dimension(name).name for name in dims]
    scorers, not_run = [], {}
    if "temporal_flickering" in dims:
        scorers.append(TemporalFlickering())
    if "subject_consistency" in dims:
        try:
            model, weights = load_dino(dino)
            scorers.append(SubjectConsistency(model, weights, device))
        except FileNotFoundError as err:
            if dino is not None or os.environ.get(DINO_ENV):
                raise
            not_run["subject_consistency"] = {"status": "missing_weights", "score": None, "reason": str(err)}
    folder = Path(folder)
    files = list_videos(folder)
    report = SkipReport()

    def load(path: Path) -> Callable[[], torch.Tensor]:
        def frames() -> torch.Tensor:
            video = read_video(path)
            if video.shape[0] < 2:
                raise ValueError(f"{video.shape[0]} frame(s); scoring needs at least 2")
            return video
        return frames

    log = ScoreLog(scores_file, folder) if scores_file is not None else None
    videos = ((str(path.relative_to(folder)), load(path)) for path in files)
    scored = evaluate_dimensions(videos, scorers, log, report)
    dimensions = {name: scored.get(name) or not_run.get(name) or unsupported_record(name) for name in dims}
    raw = {name: rec["score"] for name, rec in dimensions.items() if rec["status"] == "ok"}
    return {"metric": "vbench", "videos": str(folder), "n_videos": report.examined - report.total,
            "skipped": report.as_dict(), "dimensions": dimensions, "aggregate": aggregate(raw),
            "scores_file": str(scores_file) if scores_file is not None else None, "versions": versions()}
