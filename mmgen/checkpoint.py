"""The Lightning checkpoint callback every trainer uses: files appear atomically."""
from __future__ import annotations

import os
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class AtomicModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose files appear atomically (written to a temp file, then renamed)."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        # Every rank takes part in save_checkpoint (sharded strategies gather), so the temporary
        # name must be the same on all ranks: a fixed suffix, not mmgen.io.atomic_path's random one.
        tmp = f"{filepath}.tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
