"""Text out of a unified VideoAR (:mod:`mmgen.ar.unified`): captions and answers about a video.

The video is encoded and tokenized, fed as teacher-forced groups after the null prompt (its
codes, or its continuous latent for a model with ``understand_input="latent"``), then the text is
decoded greedily one word at a time: ``<caption>`` (or ``<question> words <answer>``) and the
model's words up to ``<eos>``. Decoding uses the model's KV cache (``VideoAR.new_cache`` with
``text_len``, ``feed_video``: the prefix and the whole video in one chunk, then ``forward_text``
one token per step);
:func:`generate_text` with ``use_cache=False`` recomputes the whole sequence every step (the
reference the cache is tested against).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from mmgen.io import resize_video

from .model import VideoAR
from .unified import video_inputs
from .words import ANSWER, CAPTION, EOS, PAD, QUESTION


class NoTextHeadError(ValueError):
    """The model only generates video: it has no text head to caption with."""


def text_prompt(model: VideoAR, question: str | None) -> list[int]:
    """Token ids that start the text after the video: ``<caption>`` or ``<question> ... <answer>``."""
    if model.words is None:
        raise NoTextHeadError("this model has no text head (it only generates video); caption with a unified "
                              "model, e.g. the shipped mmgen/assets/unified")
    if not question:
        return [CAPTION]
    ids = [QUESTION, *model.words.encode(question), ANSWER]
    if len(ids) >= model.config.text_len:
        raise ValueError(f"question {question!r} is too long: at most {model.config.text_len - 3} words")
    return ids


@torch.no_grad()
def generate_text(model: VideoAR, inputs: Sequence[torch.Tensor], question: str | None = None,
                  use_cache: bool = True, latent: torch.Tensor | None = None) -> list[list[int]]:
    """Greedy text ids (without ``<eos>``) per row after the video ``inputs``
    (:func:`mmgen.ar.unified.video_inputs` of the clip's codes: list[K] of [B, t, h_k, w_k, d]);
    ``latent``: the clips' continuous latent, which a model with ``understand_input="latent"`` reads."""
    start = text_prompt(model, question)
    B, F = inputs[0].shape[:2]
    S = model.config.text_len
    rows = torch.tensor(start, device=model.device).expand(B, -1)
    if use_cache:
        cache = model.new_cache(B, F, text_len=S)
        model.feed_video(cache, model.null_condition(B), inputs, latent)
        logits = model.forward_text(cache, rows)[0]
    done = torch.zeros(B, dtype=torch.bool, device=model.device)
    while rows.shape[1] < S and not done.all():
        if not use_cache:
            text = torch.full((B, S), PAD, dtype=torch.long, device=model.device)
            text[:, :rows.shape[1]] = rows
            _, full = model(model.null_condition(B), inputs, text=text, latent=latent)
            logits = full[0][:, :rows.shape[1]]
        token = torch.where(done, EOS, logits[:, -1].argmax(-1))
        rows = torch.cat([rows, token[:, None]], dim=1)
        done |= token == EOS
        if use_cache and rows.shape[1] < S and not done.all():
            logits = model.forward_text(cache, token[:, None])[0]
    out = []
    for row in rows[:, len(start):].tolist():
        out.append(row[:row.index(EOS)] if EOS in row else row)
    return out


def frames_needed(model: VideoAR, temporal_factor: int) -> int:
    """Video frames the model reads: the latent frames it was trained on, 1 + f (F - 1)."""
    return 1 + temporal_factor * (int(model.config.num_frames) - 1)


@torch.no_grad()
def describe(pipe, videos: Sequence[torch.Tensor], question: str | None = None) -> list[str]:
    """Caption (or answer ``question`` about) each uint8 ``[T, H, W, 3]`` video with a
    :class:`~mmgen.pipelines.videoar.VideoARPipeline` whose transformer is a unified model.
    Each video's first :func:`frames_needed` frames are read, resized to the model's frame size."""
    model = pipe.transformer
    text_prompt(model, question)  # the model and question errors before any work
    n = frames_needed(model, pipe.temporal_factor)
    for video in videos:
        if video.ndim != 4 or video.shape[0] < n:
            raise ValueError(f"the video has {video.shape[0] if video.ndim == 4 else 0} frames; this model reads "
                             f"{n} (its {model.config.num_frames} latent frames)")
    clips = torch.stack([resize_video(v[:n], pipe.frame_size) for v in videos])  # [B, n, H, W, 3]
    x = clips.to(pipe.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    z = pipe.tokenizer.encode(x.to(pipe.tokenizer.dtype))  # the continuous latent, as the training cache holds it
    codes = pipe.tokenizer.quantize(z).codes
    ids = generate_text(model, video_inputs(pipe.tokenizer.quantizer, codes), question, latent=z)
    return [model.words.decode(row) for row in ids]
