"""Video file I/O: uint8 ``[T, H, W, C]`` frames in and out (decord / torchcodec / PyAV; libx264, GIF)."""
from mmgen.io.read import (
    BACKENDS,
    VideoInfo,
    VideoReadError,
    available_backends,
    read_video,
    resize_video,
    video_info,
)
from mmgen.io.digest import file_sha256
from mmgen.io.write import atomic_dir, atomic_path, make_grid, save_figure, write_grid, write_video

__all__ = [
    "BACKENDS",
    "VideoInfo",
    "VideoReadError",
    "atomic_dir",
    "atomic_path",
    "available_backends",
    "file_sha256",
    "make_grid",
    "read_video",
    "resize_video",
    "save_figure",
    "video_info",
    "write_grid",
    "write_video",
]
