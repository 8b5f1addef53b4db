"""Named VideoAR shapes.  ``preset_config(name, **overrides)`` -> VideoAR config kwargs.

* ``tiny``: CPU-trainable in minutes, matched to the tiny default VideoTokenizer
  (32 bits, scales 1/2/4/8, 5 latent frames of 8x8) and MovingShapes captions
  (max_text_len 88 > the longest caption, 81 characters).
* ``videoar-l`` / ``videoar-xl``: the paper's L (24 layers, 1536 wide, 12 heads, reported 926M
  parameters) and XL (32, 2048, 16; reported 2.0B).  SwiGLU at mlp_ratio 4 gives 0.91B / 2.15B
  with d = 48 bits and a class prefix — the paper's parameter counting (and MLP) are not stated,
  so these are ballpark matches.  UCF-101 class-conditional defaults: 101 classes, d = 48,
  5 latent frames of 8x8 (16x spatial compression of 128 px), 6 scales per frame (30 decoding
  steps, as the paper's UCF sampling).
"""
from __future__ import annotations

UCF_SCALES = [[1, 1], [2, 2], [3, 3], [4, 4], [6, 6], [8, 8]]  # 6 scales x 5 frames = the paper's 30 steps

PRESETS: dict[str, dict] = {
    "tiny": dict(bits=32, scales=[[1, 1], [2, 2], [4, 4], [8, 8]], num_frames=5, width=256, depth=4,
                 heads=4, cond="text", max_text_len=88),
    "videoar-l": dict(bits=48, scales=UCF_SCALES, num_frames=5, width=1536, depth=24, heads=12,
                      cond="class", num_classes=101, grad_checkpointing=False),
    "videoar-xl": dict(bits=48, scales=UCF_SCALES, num_frames=5, width=2048, depth=32, heads=16,
                       cond="class", num_classes=101, grad_checkpointing=True),
}


def preset_config(name: str, **overrides) -> dict:
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown VideoAR preset {name!r}; choose one of {sorted(PRESETS)}")
    return {**PRESETS[key], **overrides}
