"""Save/load for our models: a folder with ``config.json`` + ``diffusion_pytorch_model.safetensors``.

The folder format is diffusers' (``_class_name`` + the constructor arguments in config.json, the
state dict in safetensors), so folders written before this module existed load unchanged and
diffusers can still read ours. The class is ours because importing diffusers' ``ModelMixin`` pulls
in ``torch._dynamo`` and costs seconds on every ``mmgen`` command.

A model subclasses :class:`PretrainedModel` and decorates ``__init__`` with
:func:`register_to_config`; its constructor arguments become ``model.config`` (a read-only dict
with attribute access). ``ignore_for_config`` names arguments that are run-time choices: they are
neither saved nor read back (an old config that holds them still loads).
"""
from __future__ import annotations

import functools
import inspect
import itertools
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
KEPT_PRIVATE = ("_name_or_path",)  # private config keys carried from a loaded folder to the model


class Config(dict):
    """A model's config: a dict whose keys also read as attributes; changed only through
    ``model.register_to_config``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no field {name!r}") from None

    def _read_only(self, *args, **kwargs):
        raise TypeError("a model's config is read-only; use model.register_to_config(...)")

    __setitem__ = __delitem__ = __setattr__ = update = pop = popitem = setdefault = clear = _read_only

    def __reduce__(self):  # pickle / deepcopy without the blocked __setitem__
        return type(self), (dict(self),)


def register_to_config(init):
    """Decorator for ``__init__``: records every argument (defaults filled in, ``ignore_for_config``
    left out) as the model's config before the constructor body runs."""
    params = [p for p in inspect.signature(init).parameters.values()][1:]

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        ignore = set(type(self).ignore_for_config)
        values = {p.name: p.default for p in params}
        values.update(zip((p.name for p in params), args))
        values.update(kwargs)
        self.__dict__["_config"] = Config({k: v for k, v in values.items() if k not in ignore})
        init(self, *args, **kwargs)

    return wrapper


def _atomic_write(path: Path, write) -> None:
    from mmgen.io import atomic_path

    with atomic_path(path) as tmp:
        write(tmp)


class PretrainedModel(nn.Module):
    """``save_pretrained`` / ``from_pretrained`` / ``from_config`` / ``config`` for an ``nn.Module``."""

    ignore_for_config: tuple[str, ...] | list[str] = ()

    @property
    def config(self) -> Config:
        return self.__dict__["_config"]

    def register_to_config(self, **fields) -> None:
        """Set config fields (values the model learned after construction, e.g. training captions)."""
        self.__dict__["_config"] = Config({**self.__dict__.get("_config", {}), **fields})

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating-point parameter (or buffer)."""
        tensors = itertools.chain(self.parameters(), self.buffers())
        return next((t.dtype for t in tensors if t.is_floating_point()), torch.get_default_dtype())

    @property
    def device(self) -> torch.device:
        return next((t.device for t in itertools.chain(self.parameters(), self.buffers())), torch.device("cpu"))

    # ------------------------------------------------------------------ config
    @classmethod
    def load_config(cls, folder: str | os.PathLike) -> dict:
        """The config.json of a model folder as a plain dict."""
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {folder} is not a saved {cls.__name__} folder "
                                    f"(write one with save_pretrained)")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return config

    @classmethod
    def from_config(cls, config: dict, **overrides):
        """A new model (fresh weights) from a config dict; ``overrides`` replace its fields.
        Private ``_`` keys and run-time choices are not constructor arguments; unknown fields
        are named in a warning and ignored (a config written by a newer version)."""
        config = {**config, **overrides}
        params = set(inspect.signature(cls.__init__).parameters) - {"self"} - set(cls.ignore_for_config)
        unknown = sorted(k for k in config if k not in params and not k.startswith("_")
                         and k not in cls.ignore_for_config)
        if unknown:
            warnings.warn(f"{cls.__name__}: ignoring config fields this version does not know: {unknown}",
                          stacklevel=2)
        model = cls(**{k: v for k, v in config.items() if k in params})
        kept = {k: config[k] for k in KEPT_PRIVATE if k in config}
        if kept:
            model.register_to_config(**kept)
        return model

    def to_json_string(self) -> str:
        """The config.json text: the config plus ``_class_name`` and the writing version."""
        from mmgen import __version__

        config = {**self.config, "_class_name": type(self).__name__, "_mmgen_version": __version__}
        return json.dumps(config, indent=2, sort_keys=True, default=_json_value) + "\n"

    def _check_checkpoint(self, state: dict[str, torch.Tensor], folder: Path) -> None:
        """Called by :meth:`from_pretrained` before ``state`` loads: a model that can name the config
        field behind a mismatch raises ValueError here (default: the generic checks only)."""

    # ------------------------------------------------------------------ folders
    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True) -> None:
        """Write config.json and the safetensors state dict into ``save_directory`` (created if
        needed; each file replaced atomically). Only safetensors are written."""
        from safetensors.torch import save_file

        if not safe_serialization:
            raise ValueError("save_pretrained writes safetensors only (safe_serialization=False is not supported)")
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        text = self.to_json_string()
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        _atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        _atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None,
                        torch_dtype: torch.dtype | None = None, low_cpu_mem_usage: bool | None = None,
                        **overrides):
        """Load a folder written by :meth:`save_pretrained` (or by diffusers), in eval mode.
        ``overrides`` replace config fields (e.g. a local path of the text encoder);
        ``torch_dtype`` casts the floating-point weights. ``low_cpu_mem_usage`` is accepted for
        diffusers-style callers and has no effect (the weights load into a built model)."""
        from safetensors.torch import load_file

        folder = Path(pretrained_model_name_or_path) / (subfolder or "")
        config = cls.load_config(folder)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found: a {cls.__name__} folder holds config.json and "
                                    f"{WEIGHTS_NAME} (write one with save_pretrained)")
        model = cls.from_config({**config, "_name_or_path": str(pretrained_model_name_or_path)}, **overrides)
        state = load_file(str(weights))
        model._check_checkpoint(state, folder)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches, one per line: name the first
            lines = [line.strip() for line in str(e).splitlines()[1:]] or [str(e)]
            more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
            raise ValueError(f"{weights} does not fit its config.json: {lines[0]}{more}") from None
        if missing or unexpected:
            raise ValueError(f"{weights} does not fit its config.json: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]} (of {len(missing)} / {len(unexpected)})")
        if torch_dtype is not None:
            model.to(torch_dtype)
        return model.eval()


def _json_value(value: Any) -> Any:
    if isinstance(value, Path):
        return value.as_posix()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"config value {value!r} is not JSON-serialisable")
