"""VideoAR generator: group layout, byte-level text prefix, the transformer, corruption, training."""
from .layout import GroupLayout
from .model import ARCache, VideoAR

__all__ = ["GroupLayout", "VideoAR", "ARCache"]
