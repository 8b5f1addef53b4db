"""VideoARPipeline: prompt or class id -> video, following diffusers' pipeline conventions.

    pipe = VideoARPipeline.from_pretrained("mmgen/assets/default")   # the whole folder
    out = pipe(prompt=["a large red circle moving right"], num_frames=17, seed=0)
    out.frames                       # np.float32 [B, T, H, W, 3] in [0, 1]  (output_type="np")

Components: ``tokenizer`` (:class:`mmgen.tokenizer.VideoTokenizer`) and ``transformer``
(:class:`mmgen.ar.VideoAR`); pipeline config: ``fps`` and the default ``sampling`` settings
(:class:`mmgen.ar.sampling.SamplerSettings` as a dict), saved in ``model_index.json``. The folder
is diffusers' pipeline layout (``DiffusionPipeline.from_pretrained`` reads it), but the class does
not derive from ``DiffusionPipeline``: importing that pulls in diffusers' whole model zoo (and
peft, transformers, scipy.stats when installed), several times the cost of ``import torch``.

Video extension (VideoAR section 7, "frame re-encoding"): :meth:`extend` re-encodes the
last frames of a clip (one frame for image-to-video), teacher-forces their codes as the
first latent frames and samples the rest; longer extensions chain such windows, each
conditioned on the end of the previous one. :meth:`stream` decodes frame by frame (causal
decoder state) and hands frames to a callback as soon as they exist; with a model trained
with a frame window its memory does not grow with the length of the video.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmgen import __version__
from mmgen.ar.model import VideoAR
from mmgen.ar.sampling import SamplerSettings, forward_steps, sample_codes
from mmgen.io import atomic_path, resize_video
from mmgen.tokenizer.layers import StreamState
from mmgen.tokenizer.model import VideoTokenizer

OUTPUT_TYPES = ("np", "pt", "pil", "latent")


@dataclass
class VideoARPipelineOutput:
    """``frames``: np.float32 ``[B, T, H, W, 3]`` in [0, 1] ("np"), torch float ``[B, T, 3, H, W]``
    in [0, 1] ("pt"), ``list[list[PIL.Image]]`` ("pil") or the codes, list[K] of
    ``[B, t, h_k, w_k, d]`` ("latent")."""

    frames: object


def to_uint8_videos(frames) -> list[np.ndarray]:
    """Pipeline "np" output (float [B, T, H, W, C] in [0, 1]) -> list of uint8 [T, H, W, C]."""
    arr = np.asarray(frames)
    if arr.ndim != 5:
        raise ValueError(f"expected [B, T, H, W, C] frames, got shape {arr.shape}")
    return [np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8) for v in arr]


def _video_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Decoder output float [B, 3, T, H, W] in ~[-1, 1] -> uint8 [B, T, H, W, 3]."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu()


@dataclass(frozen=True)
class PipelineConfig:
    """The pipeline's own settings (``model_index.json`` beside the components)."""

    fps: int = 8
    sampling: dict = field(default_factory=dict)


class VideoARPipeline:
    """Text- or class-conditional video generation with a VideoAR transformer and its tokenizer."""

    COMPONENTS = {"tokenizer": VideoTokenizer, "transformer": VideoAR}
    INDEX = "model_index.json"

    def __init__(self, tokenizer: VideoTokenizer, transformer: VideoAR, fps: int = 8, sampling: dict | None = None):
        transformer.check_tokenizer(tokenizer)
        self.tokenizer, self.transformer = tokenizer, transformer
        self.config = PipelineConfig(int(fps), SamplerSettings.from_dict(sampling).to_dict())

    # ------------------------------------------------------------------ save / load / device
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write each component's ``save_pretrained`` folder and ``model_index.json`` (diffusers' layout)."""
        root = Path(save_directory)
        root.mkdir(parents=True, exist_ok=True)
        index = {"_class_name": type(self).__name__, "_mmgen_version": __version__,
                 "fps": self.config.fps, "sampling": self.config.sampling}
        for name, cls in self.COMPONENTS.items():
            getattr(self, name).save_pretrained(root / name)
            index[name] = [cls.__module__, cls.__name__]
        with atomic_path(root / self.INDEX) as tmp:
            Path(tmp).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "VideoARPipeline":
        """Load a folder written by :meth:`save_pretrained`; ``kwargs`` go to each component's
        ``from_pretrained`` (e.g. ``torch_dtype``). Only the expected component classes
        are loaded, whatever the index names."""
        root = Path(pretrained_model_name_or_path)
        index_file = root / cls.INDEX
        if not index_file.is_file():
            raise FileNotFoundError(f"{root} has no {cls.INDEX}: not a pipeline folder (write one with "
                                    f"python -m mmgen.pipelines.assemble)")
        index = json.loads(index_file.read_text())
        parts = {}
        for name, expected in cls.COMPONENTS.items():
            named = index.get(name)
            if named is None or list(named)[-1] != expected.__name__:
                raise ValueError(f"{index_file}: component {name!r} is {named}, expected {expected.__name__}")
            parts[name] = expected.from_pretrained(str(root / name), **kwargs).eval()
        return cls(**parts, fps=index.get("fps", 8), sampling=index.get("sampling"))

    def to(self, device) -> "VideoARPipeline":
        self.tokenizer.to(device)
        self.transformer.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    def progress_bar(self, total: int):
        return tqdm(total=total)

    # ------------------------------------------------------------------ properties
    @property
    def fps(self) -> int:
        return int(self.config.fps)

    @property
    def temporal_factor(self) -> int:
        return self.tokenizer.temporal_compression

    @property
    def frame_size(self) -> tuple[int, int]:
        s = self.tokenizer.spatial_compression
        h, w = self.tokenizer.quantizer.latent_size
        return h * s, w * s

    @property
    def conditioning(self) -> str:
        """"text" or "class"."""
        return self.transformer.config.cond

    # ------------------------------------------------------------------ validation
    def check_prompts(self, prompts: Sequence[str]) -> None:
        """Raise ValueError / TypeError naming the first prompt this model cannot take."""
        if self.conditioning != "text":
            raise ValueError(f"this model is class-conditional ({self.transformer.config.num_classes} classes); "
                             f"use class ids, not prompts")
        self.transformer.condition_tokens(list(prompts))

    def check_class_labels(self, labels: Sequence[int]) -> None:
        if self.conditioning != "class":
            raise ValueError("this model is text-conditional; use prompts, not class ids")
        n = self.transformer.config.num_classes
        bad = [c for c in labels if not 0 <= int(c) < n]
        if bad:
            raise ValueError(f"class id {bad[0]} out of range: this model has classes 0..{n - 1}")

    def resolve_settings(self, **overrides) -> dict:
        """The pipeline's default sampling settings with ``overrides`` (None = keep) applied,
        validated, as the plain dict that goes into sidecars."""
        merged = dict(self.config.sampling)
        merged.update({k: v for k, v in overrides.items() if v is not None})
        settings = SamplerSettings.from_dict(merged)
        self.transformer.decoding_window(settings.window)
        self.transformer.reveal_groups(settings.reveal_steps)
        return settings.to_dict()

    def num_latent_frames(self, num_frames: int) -> int:
        """Latent frames for ``num_frames`` video frames (rounded up to 1 + factor*k, with a warning)."""
        f = self.temporal_factor
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        latent = 1 + -(-(num_frames - 1) // f)
        if 1 + f * (latent - 1) != num_frames:
            warnings.warn(f"num_frames={num_frames} is not of the form 1 + {f}k; generating "
                          f"{1 + f * (latent - 1)} frames", stacklevel=3)
        return latent

    # ------------------------------------------------------------------ helpers
    def _condition(self, prompt, class_labels):
        if (prompt is None) == (class_labels is None):
            raise ValueError("pass exactly one of prompt= (text models) or class_labels= (class models)")
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            self.check_prompts(prompts)
            return prompts
        labels = [int(class_labels)] if isinstance(class_labels, int) else [int(c) for c in class_labels]
        self.check_class_labels(labels)
        return labels

    def _generators(self, batch: int, generator, seed):
        if generator is not None and seed is not None:
            raise ValueError("pass generator= or seed=, not both")
        if seed is None:
            return generator
        seeds = [int(seed) + i for i in range(batch)] if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for {batch} videos")
        # CPU generators: the same seed gives the same video on every device
        return [torch.Generator().manual_seed(s) for s in seeds]

    @contextlib.contextmanager
    def _progress(self, total: int, enabled: bool):
        if not enabled:
            yield None
            return
        bar = self.progress_bar(total=total)
        try:
            yield bar.update
        finally:
            bar.close()

    def _autocast(self):
        """bf16 autocast (and so a bf16 KV cache) for the transformer on CUDA; fp32 elsewhere."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def _settings(self, **overrides) -> SamplerSettings:
        return SamplerSettings.from_dict(self.resolve_settings(**overrides))

    def _decode(self, codes: list[torch.Tensor], state: StreamState | None = None) -> torch.Tensor:
        # bit codes take the tokenizer's dtype; index codes stay integer
        latent = self.tokenizer.codes_to_latent([c.to(self.tokenizer.dtype) if c.is_floating_point() else c
                                                 for c in codes])
        return self.tokenizer.decode(latent, state=state)

    def _format(self, video_u8: torch.Tensor, output_type: str):
        """uint8 [B, T, H, W, 3] -> the requested output type."""
        if output_type == "np":
            return video_u8.numpy().astype(np.float32) / 255.0
        if output_type == "pt":
            return video_u8.permute(0, 1, 4, 2, 3).float() / 255.0
        from PIL import Image

        return [[Image.fromarray(f) for f in v.numpy()] for v in video_u8]

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str] | None = None, class_labels: int | Sequence[int] | None = None,
                 num_frames: int = 17, guidance=None, temperature=None, top_p: float | None = None,
                 window: int | None = None, use_cache: bool = True, reveal_steps: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 seed: int | Sequence[int] | None = None, output_type: str = "np", return_dict: bool = True,
                 progress: bool = True, callback_on_frames: Callable[[np.ndarray], None] | None = None):
        """Generate one video per prompt / class label.

        Args:
            prompt / class_labels: the conditions (exactly one; the kind the model was trained on).
            num_frames: video frames; rounded up to ``1 + 4k`` (with a warning).
            guidance, temperature, top_p, window, use_cache, reveal_steps: override the pipeline's default
                sampling settings (see :class:`SamplerSettings`; ``guidance`` takes a number,
                ``"adaptive"``, ``"linear:5:3"`` or a dict).
            generator / seed: one ``torch.Generator`` or one per video, or seeds (an int: video i
                gets ``seed + i``). Per-video seeds make each video independent of the batch.
            output_type: "np" | "pt" | "pil" | "latent" (see :class:`VideoARPipelineOutput`).
            callback_on_frames: streaming — called with uint8 ``[B, n, H, W, 3]`` as soon as
                each latent frame is decoded (causal decoder, exact).

        On CUDA the transformer runs under bf16 autocast with a bf16 KV cache; on CPU in fp32.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}: expected one of {OUTPUT_TYPES}")
        cond = self._condition(prompt, class_labels)
        settings = self._settings(guidance=guidance, temperature=temperature, top_p=top_p, window=window,
                                  use_cache=use_cache, reveal_steps=reveal_steps)
        latent_frames = self.num_latent_frames(num_frames)
        generators = self._generators(len(cond), generator, seed)
        # Frames are decoded as each latent frame completes and kept as uint8: memory holds neither
        # every frame's codes nor a float copy of the whole video (flat but for the uint8 frames).
        decoder = _StreamDecoder(self, callback_on_frames) if output_type != "latent" else None
        K = len(self.transformer.scales)
        with self._autocast(), self._progress(forward_steps(latent_frames, K), progress) as update:
            codes = sample_codes(self.transformer, self.tokenizer.quantizer, cond, latent_frames, settings,
                                 generators, on_frame=decoder, progress=update, keep_codes=decoder is None)
        frames = codes if decoder is None else self._format(torch.cat(decoder.chunks, dim=1), output_type)
        if not return_dict:
            return (frames,)
        return VideoARPipelineOutput(frames=frames)

    @torch.no_grad()
    def stream(self, on_frames: Callable[[np.ndarray], None], prompt=None, class_labels=None,
               num_frames: int = 17, generator=None, seed=None, progress: bool = True, **settings) -> int:
        """Generate and hand uint8 ``[B, n, H, W, 3]`` chunks to ``on_frames`` as they are decoded,
        keeping no finished frames (with a windowed model, memory is bounded for any length).
        Returns the number of frames produced."""
        cond = self._condition(prompt, class_labels)
        sampler = self._settings(**settings)
        latent_frames = self.num_latent_frames(num_frames)
        decoder = _StreamDecoder(self, on_frames, keep=False)
        K = len(self.transformer.scales)
        with self._autocast(), self._progress(forward_steps(latent_frames, K), progress) as update:
            sample_codes(self.transformer, self.tokenizer.quantizer, cond, latent_frames, sampler,
                         self._generators(len(cond), generator, seed), on_frame=decoder, keep_codes=False,
                         progress=update)
        return decoder.frames_out

    # ------------------------------------------------------------------ codes <-> frames, extension
    @torch.no_grad()
    def decode_codes(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """Codes (``output_type="latent"``, :meth:`encode_frames`) -> uint8 ``[B, T, H, W, 3]``."""
        return _video_to_uint8(self._decode(codes))

    def encode_frames(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """uint8 ``[T, H, W, 3]`` (T = 1 + 4k, model frame size) -> codes list[K] of ``[1, t, h_k, w_k, d]``."""
        x = frames.to(self.device).permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0
        return self.tokenizer.tokenize(x.to(self.tokenizer.dtype))

    @torch.no_grad()
    def extend(self, frames, num_new_frames: int, prompt: str | None = None, class_label: int | None = None,
               context_frames: int | None = None, chunk_latent_frames: int | None = None,
               seed: int = 0, generator: torch.Generator | None = None,
               on_frames: Callable[[torch.Tensor], None] | None = None, progress: bool = True,
               **settings) -> torch.Tensor:
        """Continue ``frames`` (uint8 ``[T, H, W, 3]``; one frame = image-to-video) by
        ``num_new_frames`` frames; returns uint8 ``[T + num_new_frames, H, W, 3]`` at the model's
        frame size (the input is resized to it).

        Each window re-encodes the last ``context_frames`` frames (``1 + 4m``; default: half
        the model's training length, at most what is available) as teacher-forced latent
        frames and samples ``chunk_latent_frames`` new ones (default: the rest of the
        training length); windows chain until enough frames exist. Without a prompt / class
        label the continuation is unconditional.
        """
        if num_new_frames < 1:
            raise ValueError(f"num_new_frames must be >= 1, got {num_new_frames}")
        frames = torch.as_tensor(np.asarray(frames))
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
        video = resize_video(frames, self.frame_size)
        f = self.temporal_factor
        trained = int(self.transformer.config.num_frames)
        ctx_latent = self._context_latent(video.shape[0], context_frames, trained)
        new_latent = int(chunk_latent_frames or max(1, trained - ctx_latent))
        if prompt is None and class_label is None:
            cond = [""] if self.conditioning == "text" else [self.transformer.config.num_classes]
            settings["guidance"] = 1.0  # nothing to guide towards
        else:
            cond = self._condition(prompt if prompt is not None else None,
                                   None if prompt is not None else [class_label])
        sampler = self._settings(**settings)
        gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
        K = len(self.transformer.scales)
        windows = -(-num_new_frames // (f * new_latent))
        out = [video]
        have = 0
        with self._progress(windows * forward_steps(ctx_latent + new_latent, K), progress) as update:
            while have < num_new_frames:
                context = torch.cat(out)[-(1 + f * (ctx_latent - 1)):]
                with self._autocast():
                    codes = sample_codes(self.transformer, self.tokenizer.quantizer, cond, ctx_latent + new_latent,
                                         sampler, [gen], context=self.encode_frames(context), progress=update)
                decoded = self.decode_codes(codes)[0]
                new = decoded[1 + f * (ctx_latent - 1):][: num_new_frames - have]
                out.append(new)
                have += new.shape[0]
                if on_frames is not None:
                    on_frames(new)
        return torch.cat(out)

    def _context_latent(self, available: int, context_frames: int | None, trained: int) -> int:
        f = self.temporal_factor
        if context_frames is not None:
            if context_frames < 1 or (context_frames - 1) % f:
                raise ValueError(f"context_frames={context_frames} must be of the form 1 + {f}k")
            if context_frames > available:
                raise ValueError(f"context_frames={context_frames} but the input has only {available} frames")
            latent = 1 + (context_frames - 1) // f
        else:
            latent = min(1 + (available - 1) // f, max(1, trained // 2))
        if latent >= trained:
            raise ValueError(f"a context of {latent} latent frames leaves no room to generate within the "
                             f"model's {trained} trained latent frames")
        return latent


class _StreamDecoder:
    """Decodes each latent frame as soon as its codes are complete and passes the frames on.
    The causal decoder's state travels in ``self.state`` from call to call, so the frames are
    exactly those a full decode would give."""

    def __init__(self, pipe: VideoARPipeline, callback, keep: bool = True):
        self.pipe, self.callback, self.keep = pipe, callback, keep
        self.state = StreamState()
        self.chunks: list[torch.Tensor] = []
        self.frames_out = 0

    def __call__(self, t: int, frame_codes: list[torch.Tensor]) -> None:
        frames = _video_to_uint8(self.pipe._decode(frame_codes, self.state))
        self.frames_out += frames.shape[1]
        if self.keep:
            self.chunks.append(frames)
        if self.callback is not None:
            self.callback(frames.numpy())
