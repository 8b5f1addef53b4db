"""Datasets: procedural MovingShapes, video folders, UCF-101 and clip sampling.

The LightningDataModule lives in :mod:`mmgen.data.datamodule` (imported on demand, as
Lightning is slow to import).
"""
from mmgen.data.clips import ClipConfig, ShortVideoError, clip_indices, resize_crop, to_model_range, to_uint8
from mmgen.data.folder import VIDEO_EXTENSIONS, EmptyDatasetError, VideoClipDataset, VideoFolder, scan_videos
from mmgen.data.moving_shapes import (
    COLORS,
    MOTIONS,
    SHAPES,
    SIZES,
    MovingShapes,
    ObjectSpec,
    ShapesSample,
    caption_of,
    class_id,
    class_names,
    parse_caption,
)
from mmgen.data.ucf101 import UCF101

__all__ = [
    "COLORS",
    "MOTIONS",
    "SHAPES",
    "SIZES",
    "UCF101",
    "VIDEO_EXTENSIONS",
    "ClipConfig",
    "EmptyDatasetError",
    "MovingShapes",
    "ObjectSpec",
    "ShapesSample",
    "ShortVideoError",
    "VideoClipDataset",
    "VideoFolder",
    "caption_of",
    "class_id",
    "class_names",
    "clip_indices",
    "parse_caption",
    "resize_crop",
    "scan_videos",
    "to_model_range",
    "to_uint8",
]
