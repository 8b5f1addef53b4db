"""What every `mmgen` command shares: the expected-error type, its one-line message, batch runs.

* :class:`UserError` — an expected failure (bad input, blocked output, missing file). Raise it
  with a message saying what is wrong and how to fix it; the dispatcher (:mod:`mmgen.cli`)
  prints ``mmgen <command>: error: <message>`` and exits 2. ``--debug`` shows the traceback.
* :func:`error_message` — the one-line message for an exception that is an expected error
  (``UserError``, file-system errors, bad values, corrupt weight files), or ``None`` for a bug.
* :func:`run_batch` — run one piece of work per item (video, prompt, file): the good items
  finish, each bad one is named in one line with its reason, the counts are printed, and the
  exit status is non-zero only when nothing succeeded (or, with ``strict``, when anything failed).

Kept free of heavy imports: every command imports it at start-up.
"""
from __future__ import annotations

import errno
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, TextIO, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Set by the dispatcher's --debug: tracebacks instead of one-line messages.
DEBUG = False


class UserError(Exception):
    """An expected error: the message says what is wrong and how to fix it (exit status 2)."""


_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOSPC: "the disk is full; free some space or choose another path",
    errno.EEXIST: "something is already there (a file where a folder is needed?); choose another path",
    errno.ENOTDIR: "a file is in the way where a folder is needed; choose another path",
    errno.EISDIR: "a folder is in the way where a file is needed; choose another path",
    errno.ENOTEMPTY: "the folder is not empty; choose another path",
}

# Messages of the loaders for files that are not what they claim (corrupt, truncated, random bytes).
_CORRUPT_MARKERS = ("PytorchStreamReader", "failed finding central directory", "invalid load key",
                    "Weights only load failed", "HeaderTooLarge", "InvalidHeader", "MetadataIncompleteBuffer",
                    "Error while deserializing header")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def error_message(exc: BaseException) -> str | None:
    """One line describing an expected error, or None when ``exc`` looks like a bug."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        hint = _OS_HINTS.get(exc.errno)
        return f"{exc.strerror.lower()}:{where}" + (f" ({hint})" if hint else "")
    text = str(exc)
    if type(exc).__name__ in ("UnpicklingError", "SafetensorError") or any(m in text for m in _CORRUPT_MARKERS):
        # Never repeat torch's advice to retry with weights_only=False: such files are not loaded.
        return ("a weight or checkpoint file is corrupt or not what it claims to be "
                f"({type(exc).__name__}: {_first_line(text).split('. ')[0][:160]}); "
                "re-create or re-download it")
    if isinstance(exc, (OSError, ValueError, KeyError)) and text:
        return _first_line(text)
    return None


@dataclass
class BatchResult(Generic[R]):
    """Outcome of :func:`run_batch`: the results of the good items and ``(item, reason)`` of the bad."""

    done: list[R] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def exit_code(self, strict: bool = False) -> int:
        """0 when something succeeded (and, with ``strict``, nothing failed); else 1."""
        if not self.done or (strict and self.skipped):
            return 1
        return 0


def run_batch(items: Iterable[T], work: Callable[[T], R], *, command: str, label: Callable[[T], Any] = str,
              what: str = "item", stream: TextIO | None = None) -> BatchResult[R]:
    """Call ``work(item)`` for every item; a failing item is skipped and named, never fatal.

    Prints ``mmgen <command>: skipped <label>: <reason>`` per bad item and a final
    ``mmgen <command>: <n> <what>(s) done, <m> skipped`` line (to stderr). ``KeyboardInterrupt``
    still stops the batch. Callers return ``result.exit_code(args.strict)``.
    """
    stream = stream or sys.stderr
    result: BatchResult[R] = BatchResult()
    for item in items:
        try:
            result.done.append(work(item))
        except Exception as exc:  # one bad item must not cost the others; the reason is printed
            reason = error_message(exc) or f"{type(exc).__name__}: {_first_line(str(exc))}"
            result.skipped.append((str(label(item)), reason))
            print(f"mmgen {command}: skipped {label(item)}: {reason}", file=stream, flush=True)
            if DEBUG:
                traceback.print_exc()
    print(f"mmgen {command}: {len(result.done)} {what}(s) done, {len(result.skipped)} skipped",
          file=stream, flush=True)
    return result


def add_strict_flag(parser) -> None:
    """The ``--strict`` flag of every batch command."""
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 if any item was skipped (default: only if none succeeded)")
