"""Progress of long `mmgen vqa` work (batch items themselves go through :func:`mmgen.cli_utils.run_batch`)."""
from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    """Progress of long work: a tqdm bar on a terminal, otherwise one log line every ``every`` seconds
    (a redrawn bar in a log file is noise)."""

    def __init__(self, total: int, desc: str, stream: TextIO | None = None, every: float = 10.0):
        import time

        self.total, self.desc, self.done, self.every = total, desc, 0, every
        self.stream = stream or sys.stderr
        self._clock = time.monotonic
        self._start = self._last = self._clock()
        self._bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=self.stream, leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        if now - self._last >= self.every or self.done == self.total:
            self._last = now
            print(f"{self.desc}: {self.done}/{self.total} ({self.done / max(self.total, 1):.0%}), "
                  f"{now - self._start:.0f} s", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
