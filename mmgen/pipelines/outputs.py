"""What `mmgen sample` / `mmgen extend` put on disk: videos plus one JSON sidecar each.

Sidecar contract (the metrics read it):
``{"prompt": str | null, "class_id": int | null, "seed": int, "model": str,
"num_frames": int, "fps": int, "settings": {...}}``.

Every file is written atomically (temporary file + rename), and the output folder is
checked for writability *before* any sampling starts, so a bad path fails in a second,
not after minutes of decoding, and never leaves half a file behind.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from mmgen.io import atomic_path, write_video


def check_writable_dir(path: str | os.PathLike) -> str:
    """Create ``path`` if needed and prove a file can be written there; clear error if not."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"output path {path} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mmgen-write-check.", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None
    return path


def check_writable_file(path: str | os.PathLike, extensions: tuple[str, ...] = (".mp4", ".gif")) -> str:
    """Check the extension of an output file and that its folder is writable."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in extensions:
        raise ValueError(f"output file {path}: extension must be one of {list(extensions)}")
    if os.path.isdir(path):
        raise ValueError(f"output file {path} is a folder")
    check_writable_dir(os.path.dirname(os.path.abspath(path)))
    return path


def round_num_frames(num_frames: int, temporal_factor: int) -> tuple[int, bool]:
    """Round up to the tokenizer's ``1 + factor * k`` frame counts; returns (frames, changed)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    k = -(-(num_frames - 1) // temporal_factor)
    rounded = 1 + temporal_factor * k
    return rounded, rounded != num_frames


def slug(text: str, max_len: int = 48) -> str:
    """File-name-safe short form of a prompt: ``"a small red circle"`` -> ``a-small-red-circle``."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:max_len].rstrip("-") or "video"


def sidecar(prompt: str | None, class_id: int | None, seed: int, model: str, num_frames: int, fps: int,
            settings: dict) -> dict:
    """The sidecar dict, exactly the fields of the contract."""
    return {
        "prompt": prompt,
        "class_id": None if class_id is None else int(class_id),
        "seed": int(seed),
        "model": str(model),
        "num_frames": int(num_frames),
        "fps": int(fps),
        "settings": dict(settings),
    }


SIDECAR_KEYS = ("prompt", "class_id", "seed", "model", "num_frames", "fps", "settings")


def is_sample_output(path: str | os.PathLike) -> bool:
    """True iff `mmgen sample` / `mmgen extend` wrote ``path``: a video whose sidecar (same stem,
    ``.json``) holds the contract's keys, the sidecar itself, the ``<name>_frames/`` folder of such
    a video, or the ``grid.mp4`` of a folder of samples. Only these may be replaced by a new run."""
    path = Path(path)
    if path.name == "grid.mp4":
        return any(is_sample_output(p) for p in path.parent.glob("*.json"))
    if path.is_dir():  # <name>_frames/ of --stream belongs to <name>.mp4
        return path.name.endswith("_frames") and is_sample_output(path.with_name(path.name[:-len("_frames")] + ".json"))
    try:
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and all(k in meta for k in SIDECAR_KEYS)


def write_json(path: str | os.PathLike, data: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")


def write_sample(path: str | os.PathLike, frames, meta: dict, fps: int, gif: bool = False) -> list[str]:
    """Write ``frames`` (uint8 [T,H,W,C]) to ``path`` (.mp4 or .gif), an optional .gif copy and
    the ``.json`` sidecar next to it; returns the written paths. The sidecar goes last, so its
    presence means the video is complete."""
    path = os.fspath(path)
    stem = os.path.splitext(path)[0]
    written = [path]
    write_video(path, frames, fps=fps)
    if gif and not path.lower().endswith(".gif"):
        write_video(stem + ".gif", frames, fps=fps)
        written.append(stem + ".gif")
    write_json(stem + ".json", meta)
    written.append(stem + ".json")
    return written


class FrameStreamWriter:
    """Writes frames as PNG files the moment they are decoded (``DIR/00000.png``, ...), each
    atomically, so a long generation can be watched — or salvaged — while it runs."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = check_writable_dir(directory)
        self.count = 0

    def write(self, frames) -> None:
        """uint8 ``[n, H, W, 3]`` frames (numpy or torch)."""
        from PIL import Image

        for frame in frames:
            arr = frame.numpy() if hasattr(frame, "numpy") else frame
            with atomic_path(os.path.join(self.directory, f"{self.count:05d}.png")) as tmp:
                Image.fromarray(arr).save(tmp, format="PNG")
            self.count += 1
