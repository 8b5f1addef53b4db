"""What every evaluation record carries besides its numbers: the software that made it,
and an atomic write so a crash never leaves half a JSON file."""
from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

from mmgen.io import atomic_path


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """mmgen, torch, numpy, scipy and each importable video decoder, by version.

    Decoders differ in the frames they return for the same file (seeking, colour
    conversion), so a number is reproducible only with the decoders that produced it.
    """
    import numpy
    import scipy
    import torch

    import mmgen
    from mmgen.io import available_backends

    decoders = {"decord": "decord", "torchcodec": "torchcodec", "pyav": "av"}
    return {
        "mmgen": mmgen.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "decoders": {name: _version(decoders[name]) for name in available_backends()},
    }


def write_json_atomic(path: str | os.PathLike, record: dict) -> None:
    """Write a result record atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=2) + "\n")
