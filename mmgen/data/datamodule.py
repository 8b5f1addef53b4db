"""One LightningDataModule over MovingShapes, a video folder, or UCF-101."""
from __future__ import annotations

from typing import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mmgen.data.clips import ClipConfig
from mmgen.data.folder import VideoFolder
from mmgen.data.moving_shapes import MovingShapes
from mmgen.data.ucf101 import UCF101

DATASETS = ("moving_shapes", "folder", "ucf101")


class VideoDataModule(L.LightningDataModule):
    """Batches of ``{"video": float [B,C,T,H,W] in [-1,1], "caption": list[str], "label": Long [B]}``.

    Args:
        dataset: ``"moving_shapes"`` (rendered in memory), ``"folder"`` (:class:`VideoFolder`
            at ``root``, validation at ``val_root`` if given) or ``"ucf101"`` (train/test
            lists of ``fold``).
        root, val_root: data folders (not used by moving_shapes).
        num_frames, stride, resolution, short: clip sampling (see :class:`ClipConfig`);
            training clips start at random, validation clips are centred.
        num_train, num_val, seed, max_objects, background, holdout: MovingShapes settings.
            With a ``holdout`` list, training uses the ``"train"`` split and
            :attr:`heldout_set` holds clips of the held-out pairs.
    """

    def __init__(
        self,
        dataset: str = "moving_shapes",
        root: str | None = None,
        val_root: str | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        num_frames: int = 17,
        stride: int = 1,
        resolution: int = 64,
        short: str = "pad",
        num_train: int = 10000,
        num_val: int = 256,
        seed: int = 0,
        max_objects: int = 2,
        background: str = "plain",
        holdout: Sequence[tuple[str, str]] | None = None,
        fold: int = 1,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"dataset={dataset!r} is not one of {list(DATASETS)}")
        if dataset != "moving_shapes" and root is None:
            raise ValueError(f"dataset={dataset!r} needs root= (the data folder)")
        self.save_hyperparameters()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.heldout_set: Dataset | None = None

    def _clip(self, temporal_crop: str) -> ClipConfig:
        h = self.hparams
        return ClipConfig(h.num_frames, h.stride, temporal_crop, h.resolution, h.short)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        if h.dataset == "moving_shapes":
            common = dict(
                size=h.resolution, num_frames=h.num_frames, max_objects=h.max_objects,
                background=h.background, holdout=h.holdout,
            )
            split = "train" if h.holdout else "all"
            self.train_set = MovingShapes(h.num_train, seed=h.seed, split=split, **common)
            # A different seed keeps validation clips distinct from training clips.
            self.val_set = MovingShapes(h.num_val, seed=h.seed + 1, split=split, **common)
            if h.holdout:
                self.heldout_set = MovingShapes(h.num_val, seed=h.seed + 2, split="heldout", **common)
        elif h.dataset == "folder":
            self.train_set = VideoFolder(h.root, clip=self._clip("random"))
            if h.val_root is not None:
                self.val_set = VideoFolder(h.val_root, clip=self._clip("centre"))
        else:
            self.train_set = UCF101(h.root, split="train", fold=h.fold, clip=self._clip("random"))
            self.val_set = UCF101(h.root, split="test", fold=h.fold, clip=self._clip("centre"))

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(
            dataset,
            batch_size=h.batch_size,
            shuffle=shuffle,
            num_workers=h.num_workers,
            persistent_workers=h.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []
