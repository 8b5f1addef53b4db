"""Datasets of video files on disk: a robust clip-serving base and a plain recursive folder.

Real datasets contain broken files. A file that cannot be decoded (or, with
``ClipConfig.short="skip"``, is too short) is logged once, counted, and replaced by the
next usable video, so a DataLoader keeps going. Only when no file at all is usable does
indexing raise, naming the folder. The per-file status lives in shared memory so the
counts seen by the main process include what DataLoader workers found.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch.utils.data import Dataset

from mmgen.data.clips import ClipConfig, ShortVideoError, clip_indices, resize_crop, to_model_range
from mmgen.io import VideoReadError, read_video, video_info

log = logging.getLogger("mmgen.data")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")

# Per-file status codes (int8, shared between processes).
_UNKNOWN, _OK, _PADDED, _UNREADABLE, _TOO_SHORT = 0, 1, 2, 3, 4


class EmptyDatasetError(RuntimeError):
    """A dataset has no video files, or none of them can be used."""


@dataclass(frozen=True)
class VideoItem:
    path: str
    caption: str = ""
    label: int = -1


def scan_videos(root: str | os.PathLike, extensions: Iterable[str] = VIDEO_EXTENSIONS) -> list[Path]:
    """All files under ``root`` (recursively, links followed) with a video extension, sorted."""
    extensions = tuple(e.lower() for e in extensions)
    found = []
    for directory, subdirs, files in os.walk(root, followlinks=True):
        subdirs.sort()
        found += [Path(directory) / f for f in files if f.lower().endswith(extensions) and not f.startswith(".")]
    return sorted(found)


class VideoClipDataset(Dataset):
    """Serves ``{"video": float [C,T,H,W] in [-1,1], "caption": str, "label": int, "path": str}``.

    ``caption`` is ``""`` and ``label`` is ``-1`` where a dataset has none (so the default
    collate works). Subclasses only build the list of :class:`VideoItem`.
    """

    def __init__(self, items: Sequence[VideoItem], root: str | os.PathLike, clip: ClipConfig, backend: str = "auto"):
        self.root = str(root)
        if not items:
            raise EmptyDatasetError(f"no videos found in {self.root}")
        self.items = list(items)
        self.clip = clip
        self.backend = backend
        self._status = torch.zeros(len(self.items), dtype=torch.int8).share_memory_()
        # Frame counts, cached after the first visit (-1 = not probed yet).
        self._num_frames = torch.full((len(self.items),), -1, dtype=torch.int32).share_memory_()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def stats(self) -> dict[str, int]:
        """Files seen so far: ``ok``, ``padded`` (short, padded), ``unreadable``, ``too_short`` (skipped)."""
        counts = torch.bincount(self._status.long(), minlength=5).tolist()
        return {
            "ok": counts[_OK],
            "padded": counts[_PADDED],
            "unreadable": counts[_UNREADABLE],
            "too_short": counts[_TOO_SHORT],
        }

    def __getitem__(self, index: int) -> dict:
        n = len(self.items)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} videos in {self.root}")
        for attempt in range(n):
            i = (index + attempt) % n
            if int(self._status[i]) in (_UNREADABLE, _TOO_SHORT):
                continue
            try:
                return self._load(i)
            except VideoReadError as exc:
                self._status[i] = _UNREADABLE
                log.warning("skipping unreadable video (%d so far): %s", self.stats["unreadable"], exc)
            except ShortVideoError as exc:
                self._status[i] = _TOO_SHORT
                log.warning("skipping short video %s (%d so far): %s", self.items[i].path, self.stats["too_short"], exc)
        raise EmptyDatasetError(f"no usable video in {self.root}: all {n} files failed ({self.stats})")

    def _load(self, i: int) -> dict:
        item = self.items[i]
        num_frames = int(self._num_frames[i])
        if num_frames < 0:
            num_frames = video_info(item.path, backend=self.backend).num_frames
            self._num_frames[i] = num_frames
        indices, padded = clip_indices(num_frames, self.clip)
        frames = read_video(item.path, frames=indices, backend=self.backend)
        if self.clip.out_size is not None:
            frames = resize_crop(frames, self.clip.out_size)
        self._status[i] = _PADDED if padded else _OK
        return {"video": to_model_range(frames), "caption": item.caption, "label": item.label, "path": item.path}


class VideoFolder(VideoClipDataset):
    """Every video under ``root`` (.mp4/.avi/.mkv/.webm/.mov, recursively).

    Captions come from a manifest (``manifest.jsonl`` or ``manifest.csv`` in ``root``, or
    the ``manifest`` argument) with a ``file`` (or ``path``/``video``) column relative to the
    manifest and a ``caption`` (or ``text``) column; otherwise from a sidecar ``<video>.txt``.
    Labels are an integer ``label`` in the manifest, else the index of the video's parent
    folder name in :attr:`classes` (sorted folder names); videos directly in ``root`` get -1.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        clip: ClipConfig = ClipConfig(),
        manifest: str | os.PathLike | None = None,
        extensions: Iterable[str] = VIDEO_EXTENSIONS,
        backend: str = "auto",
    ) -> None:
        root_path = Path(root)
        if not root_path.is_dir():
            raise FileNotFoundError(f"video folder not found: {root_path}")
        files = scan_videos(root_path, extensions)
        if not files:
            raise EmptyDatasetError(f"no video files ({', '.join(extensions)}) under {root_path}")
        if manifest is None:
            manifest = next((p for p in (root_path / "manifest.jsonl", root_path / "manifest.csv") if p.is_file()), None)
        entries = read_manifest(manifest) if manifest is not None else {}
        self.classes = sorted({f.parent.name for f in files if f.parent != root_path})
        class_index = {name: k for k, name in enumerate(self.classes)}
        items = []
        for f in files:
            entry = entries.get(f.resolve(), {})
            caption = entry.get("caption")
            if caption is None:
                sidecar = f.with_suffix(".txt")
                caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
            label = entry.get("label")
            if label is None:
                label = class_index[f.parent.name] if f.parent != root_path else -1
            items.append(VideoItem(str(f), caption, int(label)))
        super().__init__(items, root_path, clip, backend)


def read_manifest(path: str | os.PathLike) -> dict[Path, dict]:
    """``{resolved video path: {"caption": ..., "label": ...}}`` from a .jsonl or .csv manifest."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    else:
        raise ValueError(f"manifest {path} must be .jsonl or .csv")
    entries = {}
    for lineno, row in enumerate(rows, 1):
        name = next((row[k] for k in ("file", "path", "video") if row.get(k)), None) if isinstance(row, dict) else None
        if name is None:
            raise ValueError(f"{path}: row {lineno} has no 'file' (or 'path'/'video') field")
        caption = row.get("caption", row.get("text"))
        label = row.get("label")
        if label not in (None, ""):
            try:
                label = int(label)
            except (TypeError, ValueError):
                raise ValueError(f"{path}: row {lineno} has a non-integer label {label!r}") from None
        else:
            label = None
        entries[(path.parent / name).resolve()] = {"caption": caption, "label": label}
    return entries
