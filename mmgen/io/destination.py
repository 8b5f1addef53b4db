"""Where a command may write: never over something it did not create.

* :func:`check_model_destination` — may a model folder (``save_pretrained``) go to ``path``?
  A missing path or an empty folder: yes. A folder that is a model folder of ours (recognised
  by :func:`is_model_folder`): only with ``overwrite``. Anything else (a file, a folder holding
  other files, ``.`` or a folder above it, the input or a folder holding it): no, with a
  one-line :class:`~mmgen.cli_utils.UserError` saying how to proceed.
* :func:`check_output_files` — may a command write these files? Each that exists must be one
  this kind of command wrote before (``owned(path)``), else a ``UserError`` names it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from mmgen.cli_utils import UserError

# Files a diffusers save_pretrained of our models writes; nothing else may be in a folder we replace.
_MODEL_FILE_SUFFIXES = (".json", ".safetensors")


def _class_name(config: Path) -> str | None:
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("_class_name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def is_model_folder(path: str | os.PathLike) -> bool:
    """True iff ``path`` is a folder mmgen wrote with ``save_pretrained`` and holds nothing else:
    a ``model_index.json`` or ``config.json`` naming a class, plus only .json/.safetensors files
    and sub-folders that are model folders themselves."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    marker = path / "model_index.json" if (path / "model_index.json").is_file() else path / "config.json"
    if not marker.is_file() or _class_name(marker) is None:
        return False
    for entry in path.iterdir():
        if entry.is_symlink():
            return False
        if entry.is_dir():
            if not is_model_folder(entry):
                return False
        elif not entry.name.endswith(_MODEL_FILE_SUFFIXES):
            return False
    return True


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_model_destination(path: str | os.PathLike, overwrite: bool = False,
                            inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Return the resolved ``path`` if a model folder may be written there; else raise UserError."""
    target = Path(path).expanduser().resolve()
    shown = os.fspath(path)
    cwd = Path.cwd().resolve()
    if _inside(cwd, target):
        raise UserError(f"output folder {shown} is the current folder or holds it; "
                        f"write to a new folder instead (for example {Path(shown) / 'model'})")
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if _inside(source, target):
            raise UserError(f"output folder {shown} is or holds the input {item}; choose another output folder")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UserError(f"output folder {shown} exists and is not a folder; choose another output folder")
    if not target.exists() or not any(target.iterdir()):
        return target
    if not is_model_folder(target):
        raise UserError(f"output folder {shown} is not empty and is not an mmgen model folder; "
                        "choose a new or empty folder (nothing was written)")
    if not overwrite:
        raise UserError(f"output folder {shown} already holds a model; pass --overwrite to replace it "
                        "or choose another folder")
    return target


def check_output_files(paths: Iterable[str | os.PathLike], owned: Callable[[Path], bool], how: str) -> None:
    """Raise UserError naming the first existing path that ``owned`` does not recognise.

    ``how``: what the user can do instead (e.g. "choose another --out")."""
    for p in map(Path, paths):
        if os.path.lexists(p) and not owned(p):
            raise UserError(f"{p} already exists and was not written by this command; {how} (nothing was written)")
