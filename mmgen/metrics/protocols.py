"""FVD protocols: every number we report carries the protocol that produced it.

A protocol fixes what published FVDs silently differ in: sample counts, clip length and
frame stride, resolution, real-set split, how clips are picked, which extractor. Presets
are YAML files in the repository's ``configs/eval/fvd/`` (override the folder with
``MMGEN_EVAL_DIR``); ``--protocol`` also accepts a path to a YAML file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

EVAL_DIR_ENV = "MMGEN_EVAL_DIR"
CLIP_POLICIES = ("random", "first")
EXTRACTORS = ("i3d_torchscript", "i3d_pytorch")


@dataclass(frozen=True)
class FVDProtocol:
    """One FVD evaluation protocol.

    num_real / num_fake: clips needed from each set (one clip per video).
    num_frames, stride: a clip is ``num_frames`` frames taken every ``stride`` frames,
        so it spans ``(num_frames - 1) * stride + 1`` source frames.
    resolution: frames are resized to resolution x resolution before the extractor
        (which itself resizes to 224); ``None`` keeps the videos' own size and then every
        video must share the first one's size (others are skipped and counted).
    split: the real-set split the number refers to (recorded; select the files with
        ``--real-list``).
    clip: where a REAL clip starts: "random" = a seeded random start per video
        (StyleGAN-V), "first" = frame 0.
    fake_clip: where a GENERATED clip starts. StyleGAN-V takes generated clips from
        frame 0 ("first", the default); "random" is a deliberate difference, named.
    min_frames: shortest video a set may contain, and the window a random start is
        drawn in; ``None`` = the clip's span. StyleGAN-V's stride-8 preset reads a
        128-frame window (16 frames every 8th span only 121), so its preset sets 128.
    seed: seed of the clip starts.
    extractor: the feature extractor the protocol is defined with.
    """

    name: str
    num_real: int
    num_fake: int
    num_frames: int
    stride: int = 1
    resolution: int | None = None
    split: str | None = None
    clip: str = "random"
    fake_clip: str = "first"
    min_frames: int | None = None
    seed: int = 0
    extractor: str = "i3d_torchscript"
    dataset: str | None = None
    description: str = ""

    def __post_init__(self):
        for field in ("num_real", "num_fake", "num_frames", "stride"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"protocol {self.name!r}: {field} must be a positive int, got {value!r}")
        if self.resolution is not None and (not isinstance(self.resolution, int) or self.resolution < 1):
            raise ValueError(f"protocol {self.name!r}: resolution must be a positive int or null")
        for field in ("clip", "fake_clip"):
            if getattr(self, field) not in CLIP_POLICIES:
                raise ValueError(
                    f"protocol {self.name!r}: {field} must be one of {CLIP_POLICIES}, got {getattr(self, field)!r}"
                )
        if self.min_frames is not None and (not isinstance(self.min_frames, int) or self.min_frames < self.span):
            raise ValueError(
                f"protocol {self.name!r}: min_frames must be null or an int >= the clip span {self.span}, "
                f"got {self.min_frames!r}"
            )
        if self.extractor not in EXTRACTORS:
            raise ValueError(
                f"protocol {self.name!r}: extractor must be one of {EXTRACTORS}, got {self.extractor!r}"
            )

    @property
    def span(self) -> int:
        """Source frames one clip covers."""
        return (self.num_frames - 1) * self.stride + 1

    @property
    def window(self) -> int:
        """Source frames a video must have; a random clip start is drawn within them."""
        return max(self.span, self.min_frames or 0)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        """Identifies the protocol in statistics files: name + digest of every field."""
        blob = json.dumps(self.as_dict(), sort_keys=True).encode()
        return f"{self.name}-{hashlib.sha256(blob).hexdigest()[:12]}"


def eval_dir() -> Path:
    """The preset folder: ``MMGEN_EVAL_DIR`` or the repository's ``eval/``."""
    env = os.environ.get(EVAL_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "configs" / "eval"


def available_protocols() -> list[str]:
    folder = eval_dir() / "fvd"
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_protocol(name_or_path: str | os.PathLike) -> FVDProtocol:
    """A preset by name (``configs/eval/fvd/NAME.yaml``) or a YAML file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = eval_dir() / "fvd" / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(available_protocols()) or f"none found in {eval_dir() / 'fvd'}"
        raise FileNotFoundError(f"unknown FVD protocol {str(name_or_path)!r} ({path} missing); known: {known}")
    with open(path) as f:
        fields = yaml.safe_load(f)
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: expected a mapping of protocol fields")
    fields.setdefault("name", path.stem)
    allowed = {f.name for f in dataclasses.fields(FVDProtocol)}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown protocol fields {unknown}; allowed: {sorted(allowed)}")
    return FVDProtocol(**fields)
