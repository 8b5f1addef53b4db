"""Training callbacks: checkpoints that are atomic and include the final step; a loss-curve PNG;
progress lines when the output goes to a file."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning.pytorch as pl

from mmgen.io import atomic_path
from mmgen.tokenizer.module import AtomicModelCheckpoint


class RunCheckpoint(AtomicModelCheckpoint):
    """Atomic ModelCheckpoint that also writes ``last.ckpt`` when training ends (max_steps or
    max_time) after the last periodic save, so a time-capped run keeps its final weights.  An
    exception (e.g. a NaN loss) does not trigger it: the last good checkpoint stays untouched."""

    def on_train_end(self, trainer, pl_module):
        if self.save_last and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class LossCurve(pl.Callback):
    """Record ``train/loss`` every step and plot it to ``<run folder>/loss_curve.png``
    (every ``every_n_steps`` and at the end of training).  The run folder is the logger's
    log_dir (falls back to the trainer's default_root_dir).  A dashed line marks ln 2, the
    chance level of a bit."""

    def __init__(self, every_n_steps: int = 50, key: str = "train/loss", chance: float | None = 0.6931471805599453):
        self.every_n_steps, self.key, self.chance = every_n_steps, key, chance
        self.steps: list[int] = []
        self.values: list[float] = []
        self.path: Path | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(key=self.key, every_n_steps=self.every_n_steps)

    def state_dict(self) -> dict:
        return {"steps": list(self.steps), "values": list(self.values)}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.values = list(state["steps"]), list(state["values"])

    @staticmethod
    def run_dir(trainer: pl.Trainer) -> Path:
        """The run folder. ``trainer.log_dir`` is a collective under DDP (rank 0 broadcasts it):
        call this on every rank, as :meth:`on_train_start` does, never on rank 0 alone."""
        return Path(trainer.log_dir or trainer.default_root_dir)

    def on_train_start(self, trainer, pl_module):
        self.path = self.run_dir(trainer) / "loss_curve.png"  # every rank takes part in the broadcast

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        value = trainer.callback_metrics.get(self.key)
        if value is not None:
            self.steps.append(trainer.global_step)
            self.values.append(float(value))
        if trainer.is_global_zero and self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.plot(self.path)

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.plot(self.path)

    def plot(self, path: Path) -> None:
        if not self.values:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.steps, self.values, lw=0.8, alpha=0.5, label=self.key)
        if len(self.values) >= 10:  # moving average makes the trend readable
            w = max(2, len(self.values) // 20)
            smooth = [sum(self.values[max(0, i - w + 1):i + 1]) / len(self.values[max(0, i - w + 1):i + 1])
                      for i in range(len(self.values))]
            ax.plot(self.steps, smooth, lw=1.5, label=f"moving average ({w})")
        if self.chance is not None:
            ax.axhline(self.chance, ls="--", c="gray", label="chance (ln 2)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        try:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=100)
        finally:
            plt.close(fig)


class ProgressLog(pl.Callback):
    """One line every ``every_n_steps`` optimiser steps (step / max_steps, loss, steps/s, time
    left) when stderr is not a terminal — a job log or ``> run.log`` — where Lightning's bar only
    rewrites one line with carriage returns. On a terminal the bar is the progress."""

    def __init__(self, every_n_steps: int = 50, key: str = "train/loss", stream=None):
        self.every_n_steps, self.key, self.stream = every_n_steps, key, stream
        self._start, self._first, self._last = 0.0, 0, -1

    def on_train_start(self, trainer, pl_module):
        self._start, self._first = time.monotonic(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stream = self.stream or sys.stderr
        step = trainer.global_step
        if (not trainer.is_global_zero or not self.every_n_steps or step % self.every_n_steps or step == self._last
                or stream.isatty()):
            return
        self._last = step
        rate = (step - self._first) / max(time.monotonic() - self._start, 1e-9)
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        loss = trainer.callback_metrics.get(self.key)
        parts = [f"step {step}" + (f"/{total}" if total else ""),
                 f"{self.key} {float(loss):.4f}" if loss is not None else "", f"{rate:.2f} steps/s"]
        if total and rate > 0:
            parts.append(f"~{(total - step) / rate / 60:.1f} min left")
        print("  ".join(p for p in parts if p), file=stream, flush=True)
