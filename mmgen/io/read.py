"""Video decoding behind one function, with several backends.

``auto`` tries decord first (fast, random access), then torchcodec (only when it imports;
a failed decode just moves on), then PyAV (plain FFmpeg, reads almost anything, and the
only backend for GIFs). A backend that fails on a file hands it to the next one, so a
file decord chokes on is still read by PyAV; only when every backend fails does the
caller see a :class:`VideoReadError`, naming the file and each backend's complaint.

Frames come back as ``torch.uint8 [T, H, W, C]`` (RGB), the layout used at file I/O.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

BACKENDS = ("decord", "torchcodec", "pyav")


class VideoReadError(Exception):
    """A video file is missing, unreadable or does not hold the requested frames."""


class _BadRequest(ValueError):
    """The caller asked for something invalid (not the file's fault): no other backend is tried."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int
    duration_s: float
    backend: str


class _Reader:
    """An open video: metadata plus random access to frames by index."""

    num_frames: int
    fps: float
    height: int
    width: int

    def get(self, indices: Sequence[int]) -> np.ndarray | torch.Tensor:
        """uint8 ``[N, H, W, 3]`` for the given (valid, in-range) frame indices."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _DecordReader(_Reader):
    def __init__(self, path: str, decord) -> None:
        # One decoder thread: data loading parallelises over DataLoader workers instead.
        self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        self.num_frames = len(self._vr)
        self.fps = float(self._vr.get_avg_fps())
        if self.num_frames == 0:
            raise RuntimeError("no frames")
        self.height, self.width = self._vr[0].shape[:2]

    def get(self, indices: Sequence[int]) -> np.ndarray:
        return self._vr.get_batch(list(indices)).asnumpy()


class _TorchcodecReader(_Reader):
    def __init__(self, path: str, decoders) -> None:
        self._decoder = decoders.VideoDecoder(path, dimension_order="NHWC")
        meta = self._decoder.metadata
        self.num_frames = int(meta.num_frames)
        self.fps = float(meta.average_fps or 0.0)
        self.height, self.width = int(meta.height), int(meta.width)

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        return self._decoder.get_frames_at(indices=list(indices)).data


class _PyAVReader(_Reader):
    """Sequential decoding from the start up to the last index asked for (exact, no seeking)."""

    def __init__(self, path: str, av) -> None:
        self._container = av.open(path)
        try:
            if not self._container.streams.video:
                raise RuntimeError("no video stream")
            stream = self._container.streams.video[0]
            self.height, self.width = stream.codec_context.height, stream.codec_context.width
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            # Containers such as webm/mkv do not store a frame count: count packets instead.
            self.num_frames = stream.frames or self._count_packets()
        except BaseException:
            self._container.close()
            raise
        if self.num_frames == 0:
            self.close()
            raise RuntimeError("no frames")

    def _count_packets(self) -> int:
        stream = self._container.streams.video[0]
        count = sum(1 for packet in self._container.demux(stream) if packet.size > 0)
        self._container.seek(0)
        return count

    def get(self, indices: Sequence[int]) -> np.ndarray:
        wanted = set(indices)
        last = max(wanted)
        decoded: dict[int, np.ndarray] = {}
        count = 0
        for frame in self._container.decode(video=0):
            if count in wanted:
                decoded[count] = frame.to_ndarray(format="rgb24")
            count += 1
            if count > last:
                break
        if len(decoded) < len(wanted):
            raise RuntimeError(f"only {count} frames decodable, frame {last} requested")
        return np.stack([decoded[i] for i in indices])

    def close(self) -> None:
        self._container.close()


@functools.cache
def _backend_module(name: str):
    """The backend's module, or ``None`` when it does not import on this machine."""
    try:
        if name == "decord":
            import decord

            return decord
        if name == "torchcodec":
            from torchcodec import decoders

            return decoders
        import av

        return av
    except Exception:  # noqa: BLE001 - a broken install (missing FFmpeg libs) raises all sorts
        return None


_READERS: dict[str, Callable] = {"decord": _DecordReader, "torchcodec": _TorchcodecReader, "pyav": _PyAVReader}


def available_backends() -> list[str]:
    """Backends that import here, in ``auto`` order."""
    return [name for name in BACKENDS if _backend_module(name) is not None]


def _check_path(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoReadError(f"video file not found: {path}")
    if not os.path.isfile(path):
        raise VideoReadError(f"not a file: {path}")
    if os.path.getsize(path) == 0:
        raise VideoReadError(f"empty (zero-byte) video file: {path}")
    return path


def _candidates(backend: str) -> list[str]:
    if backend == "auto":
        names = available_backends()
        if not names:
            raise VideoReadError("no video backend available: install decord or av (PyAV)")
        return names
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not 'auto' or one of {list(BACKENDS)}")
    if _backend_module(backend) is None:
        raise VideoReadError(f"video backend {backend!r} is not installed or does not import")
    return [backend]


def _with_reader(path, backend: str, use: Callable[[_Reader], object]):
    """Run ``use(reader)`` with the first backend that opens the file and succeeds."""
    path = _check_path(path)
    errors = []
    for name in _candidates(backend):
        reader = None
        try:
            reader = _READERS[name](path, _backend_module(name))
            return use(reader), name
        except _BadRequest:
            raise
        except Exception as exc:  # noqa: BLE001 - decoders raise their own error types
            # decord appends a native stack trace after the first line: keep the message only.
            first_line = (str(exc).strip().splitlines() or [""])[0]
            errors.append(f"{name}: {type(exc).__name__}: {first_line}")
        finally:
            if reader is not None:
                reader.close()
    raise VideoReadError(f"cannot read video {path}: " + "; ".join(errors))


def video_info(path: str | os.PathLike, backend: str = "auto") -> VideoInfo:
    """Frame count, frame rate and size of a video, as seen by the backend that reads it."""

    def info(reader: _Reader) -> tuple:
        return reader.num_frames, reader.fps, reader.height, reader.width

    (num_frames, fps, height, width), name = _with_reader(path, backend, info)
    duration = num_frames / fps if fps > 0 else 0.0
    return VideoInfo(num_frames, fps, height, width, duration, name)


def read_video(
    path: str | os.PathLike,
    frames: Sequence[int] | None = None,
    size: int | tuple[int, int] | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Decode a video to ``torch.uint8 [T, H, W, C]``.

    Args:
        path: video file (.mp4, .avi, .mkv, .webm, .mov, .gif, ... whatever a backend reads).
        frames: frame indices to return (any order, repeats allowed); ``None`` = all frames.
            Negative or out-of-range indices raise ``ValueError``.
        size: resize after decoding: an int sets the shorter side (aspect kept), ``(h, w)``
            sets both. Bilinear with antialiasing, the same for every backend.
        backend: ``"auto"`` or one of ``decord``, ``torchcodec``, ``pyav``.

    Raises:
        VideoReadError: missing, empty or undecodable file (the message names the file).
    """

    def read(reader: _Reader) -> torch.Tensor:
        indices = list(range(reader.num_frames)) if frames is None else [int(i) for i in frames]
        if not indices:
            raise _BadRequest(f"no frame indices requested from {os.fspath(path)}")
        bad = [i for i in indices if not 0 <= i < reader.num_frames]
        if bad:
            raise _BadRequest(
                f"frame indices {bad[:5]} out of range for {os.fspath(path)} with {reader.num_frames} frames"
            )
        return torch.as_tensor(reader.get(indices))

    video, _ = _with_reader(path, backend, read)
    return resize_video(video, size) if size is not None else video


def resize_video(video: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize uint8 ``[T, H, W, C]``; an int sets the shorter side, a pair sets ``(h, w)``."""
    t, h, w, _ = video.shape
    if isinstance(size, int):
        scale = size / min(h, w)
        out_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    else:
        out_hw = (int(size[0]), int(size[1]))
    if out_hw == (h, w):
        return video
    x = video.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

