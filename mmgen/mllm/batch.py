"""Batch runs for the `mmgen vqa` commands: the good items finish, each bad one is named; progress.

``run_batch`` is a minimal local stand-in with the interface of the project-wide ``run_batch`` that issue 13 adds
for every command (on the `safety` branch, not yet on main when this was written): replace the
import with the shared one once it is merged.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, TextIO, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchResult(Generic[R]):
    done: list[R] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def exit_code(self, strict: bool = False) -> int:
        """0 when something succeeded (and, with ``strict``, nothing failed); else 1."""
        return 1 if not self.done or (strict and self.skipped) else 0


def run_batch(items: Iterable[T], work: Callable[[T], R], *, command: str, label: Callable[[T], Any] = str,
              what: str = "item", stream: TextIO | None = None) -> BatchResult[R]:
    """``work(item)`` for every item; an item raising an expected error (ValueError, OSError, KeyError)
    is skipped with one line ``mmgen <command>: skipped <label>: <reason>``; the counts are printed last."""
    stream = stream or sys.stderr
    result: BatchResult[R] = BatchResult()
    for item in items:
        try:
            result.done.append(work(item))
        except (ValueError, OSError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            result.skipped.append((str(label(item)), reason))
            print(f"mmgen {command}: skipped {label(item)}: {reason}", file=stream, flush=True)
    print(f"mmgen {command}: {len(result.done)} {what}(s) done, {len(result.skipped)} skipped", file=stream, flush=True)
    return result


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
