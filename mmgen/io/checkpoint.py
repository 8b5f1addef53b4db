"""Reading a training checkpoint (``.ckpt``) safely: tensors and plain data only, clear errors."""
from __future__ import annotations

import os

from mmgen.cli_utils import UserError


def load_checkpoint(path: str | os.PathLike, made_by: str) -> dict:
    """``torch.load(path, weights_only=True)`` on CPU; a missing, empty, corrupt or foreign file
    raises UserError naming the file (never advice to load it unsafely).

    made_by: the command that writes such checkpoints, for the message (``mmgen ar fit``)."""
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} not found (train with `{made_by}`; it writes RUN/.../checkpoints/last.ckpt)")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint {path} is empty (an interrupted copy?); use another checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # random bytes fail in many ways (KeyError, UnpicklingError, RuntimeError...)
        raise UserError(f"{path} is not a readable checkpoint written by `{made_by}` (corrupt, truncated or "
                        f"another format: {type(exc).__name__})") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise UserError(f"{path} is not a Lightning checkpoint written by `{made_by}` (no state_dict)")
    return state
