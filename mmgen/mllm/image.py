"""Reading a user's image for `mmgen vqa`.

Handling (documented here and in --help): unreadable/missing files -> ValueError naming the
file; any mode (grey, palette, RGBA) -> RGB (alpha composited on black, the training
background); a side longer than ``max_side`` -> downscaled first, with a note (the model
itself sees ``image_size`` pixels anyway); non-square -> centred on a black square, with a
note (the model was trained on square scenes, stretching would change shapes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load_image(path: str | Path, max_side: int = 4096) -> tuple[np.ndarray, list[str]]:
    """-> (uint8 [S, S, 3], notes)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image file not found: {path}")
    notes: list[str] = []
    try:
        with Image.open(path) as im:
            im.draft("RGB", (max_side, max_side))  # JPEG: decode straight at a reduced size when huge
            if max(im.size) > max_side:
                notes.append(f"{path.name} is {im.size[0]}x{im.size[1]}; downscaled to at most {max_side} px")
                im.thumbnail((max_side, max_side), Image.Resampling.BOX)
            im = im.convert("RGBA")
            rgb = Image.new("RGB", im.size, (0, 0, 0))
            rgb.paste(im, mask=im.getchannel("A"))
    except Image.DecompressionBombError as e:
        raise ValueError(f"image {path} is too large to decode safely ({e}); downscale it first") from e
    except (OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    arr = np.asarray(rgb)
    h, w = arr.shape[:2]
    if h != w:
        s = max(h, w)
        notes.append(f"{path.name} is {w}x{h}; centred on a black {s}x{s} square")
        sq = np.zeros((s, s, 3), dtype=np.uint8)
        sq[(s - h) // 2:(s - h) // 2 + h, (s - w) // 2:(s - w) // 2 + w] = arr
        arr = sq
    return arr, notes
