"""An in-memory MovingShapes DataModule for fast tokenizer training on CPU.

Clips are rendered once at full length (so motion speed matches evaluation clips) and kept as
uint8; every training item is a random temporal window of ``train_frames`` frames (1 + 4k, so
both the image latent and the 4-frame latents get trained), optionally mirrored.
"""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmgen.data.moving_shapes import MovingShapes


def render_clips(dataset: MovingShapes, desc: str) -> torch.Tensor:
    """All clips of ``dataset`` as uint8 ``[N, T, H, W, C]``."""
    frames = [dataset.sample(i).frames for i in tqdm(range(len(dataset)), desc=desc, leave=False)]
    return torch.stack(frames)


class _Windows(Dataset):
    def __init__(self, clips: torch.Tensor, frames: int, random: bool, flip: bool):
        if frames > clips.shape[1]:
            raise ValueError(f"window of {frames} frames is longer than the {clips.shape[1]}-frame clips")
        self.clips, self.frames, self.random, self.flip = clips, frames, random, flip

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        clip = self.clips[i]
        start = int(torch.randint(0, clip.shape[0] - self.frames + 1, ())) if self.random else 0
        clip = clip[start : start + self.frames]
        if self.flip and bool(torch.rand(()) < 0.5):
            clip = clip.flip(2)
        video = clip.permute(3, 0, 1, 2).float() / 127.5 - 1.0  # [C, T, H, W] in [-1, 1]
        return {"video": video}


class InMemoryShapesDataModule(L.LightningDataModule):
    """MovingShapes rendered into memory.

    Args:
        num_train, num_val: clips rendered (train seed ``seed``, validation ``seed + 1``).
        size, num_frames, max_objects, background: MovingShapes settings of the rendered clips.
        train_frames: frames per training window (default: whole clips).
        batch_size, flip: training batch size and random horizontal mirroring.
    """

    def __init__(
        self,
        num_train: int = 512,
        num_val: int = 16,
        size: int = 64,
        num_frames: int = 17,
        train_frames: int | None = None,
        max_objects: int = 2,
        background: str = "plain",
        batch_size: int = 4,
        val_batch_size: int = 4,
        flip: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        common = dict(size=h.size, num_frames=h.num_frames, max_objects=h.max_objects, background=h.background)
        train = render_clips(MovingShapes(h.num_train, seed=h.seed, **common), "rendering train clips")
        val = render_clips(MovingShapes(h.num_val, seed=h.seed + 1, **common), "rendering val clips")
        self.train_set = _Windows(train, h.train_frames or h.num_frames, random=True, flip=h.flip)
        self.val_set = _Windows(val, h.num_frames, random=False, flip=False)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.val_batch_size, shuffle=False)
