"""UCF-101 in its official layout.

Expected on disk (as the two official archives unpack)::

    ROOT/UCF-101/<Class>/v_<Class>_gXX_cYY.avi
    ROOT/ucfTrainTestlist/classInd.txt          "1 ApplyEyeMakeup" (1-based ids)
    ROOT/ucfTrainTestlist/trainlist0N.txt       "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    ROOT/ucfTrainTestlist/testlist0N.txt        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

``ROOT`` may also be the ``UCF-101`` folder itself with the lists inside it or given by
``annotations``. Labels are 0-based (classInd id - 1); captions are the class name in words
("ApplyEyeMakeup" -> "apply eye makeup").
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from mmgen.data.clips import ClipConfig
from mmgen.data.folder import EmptyDatasetError, VideoClipDataset, VideoItem

log = logging.getLogger("mmgen.data")

SPLITS = ("train", "test")
FOLDS = (1, 2, 3)


def class_caption(name: str) -> str:
    """CamelCase class name to lower-case words: "YoYo" -> "yo yo", "PlayingDaf" -> "playing daf"."""
    return " ".join(re.findall(r"[A-Z][a-z]*|[a-z]+|\d+", name)).lower()


def _find_video_dir(root: Path) -> Path:
    return root / "UCF-101" if (root / "UCF-101").is_dir() else root


def _find_annotations(root: Path, video_dir: Path) -> Path:
    candidates = [root / "ucfTrainTestlist", root, video_dir / "ucfTrainTestlist"]
    for candidate in candidates:
        if (candidate / "classInd.txt").is_file():
            return candidate
    raise FileNotFoundError(
        "UCF-101 split files not found: no classInd.txt in " + ", ".join(str(c) for c in candidates)
        + " (unpack UCF101TrainTestSplits-RecognitionTask.zip there or pass annotations=...)"
    )


def read_class_index(path: Path) -> list[str]:
    """Class names ordered by their 1-based id in ``classInd.txt``."""
    names: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{lineno}: expected '<id> <ClassName>', got {line!r}")
        names[int(parts[0])] = parts[1]
    if sorted(names) != list(range(1, len(names) + 1)):
        raise ValueError(f"{path}: class ids must be 1..N without gaps")
    return [names[k] for k in range(1, len(names) + 1)]


class UCF101(VideoClipDataset):
    """One split (``"train"`` or ``"test"``) of one official fold (1-3) of UCF-101."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        fold: int = 1,
        clip: ClipConfig = ClipConfig(),
        annotations: str | os.PathLike | None = None,
        backend: str = "auto",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"UCF101 split={split!r} is not one of {list(SPLITS)}")
        if fold not in FOLDS:
            raise ValueError(f"UCF101 fold={fold} is not one of {list(FOLDS)}")
        root_path = Path(root)
        if not root_path.is_dir():
            raise FileNotFoundError(f"UCF-101 folder not found: {root_path}")
        video_dir = _find_video_dir(root_path)
        ann_dir = Path(annotations) if annotations is not None else _find_annotations(root_path, video_dir)
        self.classes = read_class_index(ann_dir / "classInd.txt")
        class_index = {name: k for k, name in enumerate(self.classes)}
        list_file = ann_dir / f"{split}list0{fold}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"UCF-101 split list not found: {list_file}")

        items, missing = [], 0
        for lineno, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            relpath = line.split()[0]
            class_name = relpath.split("/")[0]
            if class_name not in class_index:
                raise ValueError(f"{list_file}:{lineno}: class {class_name!r} is not in classInd.txt")
            path = video_dir / relpath
            if not path.is_file():
                missing += 1
                continue
            items.append(VideoItem(str(path), class_caption(class_name), class_index[class_name]))
        if missing:
            log.warning("%d of %d videos listed in %s are missing under %s", missing, missing + len(items), list_file, video_dir)
        if not items:
            raise EmptyDatasetError(f"none of the videos listed in {list_file} exist under {video_dir}")
        self.missing = missing
        super().__init__(items, video_dir, clip, backend)
