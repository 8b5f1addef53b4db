"""ERNIE 5.0's unified next-group-of-tokens model: one VideoAR transformer that generates video
from text and writes text about a video.

A unified model is a :class:`~mmgen.ar.model.VideoAR` with a word vocabulary (config
``text_vocab``, :mod:`mmgen.ar.words`): its prompts are words embedded by ``cond_embed``, and
the same table embeds text *after* a video, where a text head predicts the next word. Two
kinds of training sequence share every weight:

* generation  ``[prompt | video groups]``: the visual loss, exactly the plain generator's;
* understanding ``[null prompt | video groups | <caption> words <eos>]`` or
  ``[... | <question> words <answer> words <eos>]``: the text loss on the caption / answer
  words only (a question is input). The video of such a row is input only: no visual loss, so
  "video tokens trained on" counts generation rows alone. Its groups carry their OWN content
  (:func:`video_inputs`), not the generation inputs: those hold only what precedes a group, so
  the finest scale of every frame (most of a small object) would never reach the text. With the
  generator's ``understand_input="latent"`` they read the tokenizer encoder's continuous latent
  instead (:meth:`~mmgen.ar.model.VideoAR.latent_inputs`, through the model's own
  ``latent_proj``): the bit codes of a small object are too noisy to be read at this size.

A text token is a group of one (:class:`~mmgen.ar.layout.GroupLayout` ``text_len``) with the
uni-RoPE position ``(s + j, s + j, s + j)`` just past the video. Optional multi-token prediction
(ERNIE 5.0): ``mtp_heads`` extra linear heads on the same hidden state predict tokens t+2, t+3,
... with loss weights 0.3, 0.1 (:data:`MTP_WEIGHTS`). The visual loss can weight early scales up
(:func:`scale_weights`). Training lives in :mod:`mmgen.ar.unified_training`, decoding in
:mod:`mmgen.ar.caption`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .words import ANSWER, CAPTION, EOS, PAD, QUESTION

MTP_WEIGHTS = (0.3, 0.1)  # ERNIE 5.0: loss weight of the head predicting t+2, then t+3
IGNORE = -100  # target id that carries no loss (cross_entropy's ignore_index)


class TextHead(nn.Module):
    """Next-token head plus ``mtp`` multi-token-prediction heads over the final hidden state."""

    def __init__(self, width: int, vocab_size: int, mtp: int = 0):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(width, vocab_size, bias=False) for _ in range(1 + mtp))

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        """Hidden states [B, S, width] -> float32 logits [B, S, vocab], one per head (head i: token t+1+i)."""
        return [head(h).float() for head in self.heads]


def text_sequences(words, queries: Sequence[str], answers: Sequence[str], length: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) Long [B, length] of understanding rows; ``queries[i]`` "" = caption the video.

    Row: ``<caption> answer <eos>`` or ``<question> query <answer> answer <eos>``, padded; targets
    are the next token where it is an answer word or <eos>, else IGNORE. An empty answer marks a
    generation row: all padding, no target.
    """
    inputs = torch.full((len(answers), length), PAD, dtype=torch.long)
    targets = torch.full_like(inputs, IGNORE)
    for i, (query, answer) in enumerate(zip(queries, answers)):
        if not answer:
            continue
        head = [QUESTION, *words.encode(query), ANSWER] if query else [CAPTION]
        body = [*words.encode(answer), EOS]
        row = head + body
        if len(row) > length:
            raise ValueError(f"text {query!r} -> {answer!r} needs {len(row)} tokens; the model has text_len={length}")
        inputs[i, :len(row)] = torch.tensor(row)
        targets[i, len(head) - 1:len(row) - 1] = torch.tensor(body)
    return inputs, targets


def text_loss(logits: list[torch.Tensor], targets: torch.Tensor, mtp_weights: Sequence[float] = MTP_WEIGHTS
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, next-token accuracy): CE of the next-token head + sum_i w_i CE of MTP head i (t+2+i).
    0 when no row has a target."""
    targets = targets.to(logits[0].device)
    valid = targets != IGNORE
    if not valid.any():
        zero = logits[0].sum() * 0.0  # keeps the graph (DDP) when a batch has no text rows
        return zero, zero.detach()
    loss = F.cross_entropy(logits[0].flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    for shift, (head, weight) in enumerate(zip(logits[1:], mtp_weights), start=1):
        ahead = targets[:, shift:]
        if (ahead != IGNORE).any():
            loss = loss + weight * F.cross_entropy(head[:, :-shift].flatten(0, 1), ahead.flatten(), ignore_index=IGNORE)
    acc = (logits[0].argmax(-1) == targets)[valid].float().mean()
    return loss, acc


def video_inputs(quantizer, codes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The video as the input of understanding rows, one ``[B, t, h_k, w_k, d]`` tensor per scale:
    group (t, k) carries frame t's scales 0..k summed at full size and resized to scale k, so the
    last group of a frame holds the whole frame. Generation rows use
    ``quantizer.next_scale_inputs`` instead (scales 0..k-1: the group's history), where a frame's
    finest codes are never an input. Group (0, 0) is the <SOS> embedding either way (the model's);
    its content reaches the text through group (0, 1)."""
    out, f_hat = [], None
    for k, code in enumerate(codes):
        part = quantizer.dequant_up(code, k)
        f_hat = part if f_hat is None else f_hat + part
        out.append(quantizer.down_to(f_hat, k))
    return out


def scale_weights(layout, alpha: float) -> torch.Tensor:
    """Per visual token loss weight [L_visual] emphasising early (coarse) scales: a token of scale k
    weighs ``(h_k w_k) ** -alpha``, normalised to mean 1 (alpha 0 = the plain mean)."""
    sizes = torch.tensor([h * w for h, w in layout.scales], dtype=torch.float32)
    P = layout.prefix_len
    w = sizes[layout.scale_id[P:P + layout.num_visual]] ** -alpha
    return w / w.mean()


def visual_loss(logits: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted bitwise BCE, bit accuracy) over the generation ``rows`` (bool [B]) only."""
    if not rows.any():
        zero = logits.sum() * 0.0
        return zero, zero.detach()
    logits, target = logits[rows], target[rows]
    bits01 = (target > 0).to(logits.dtype)
    per_token = F.binary_cross_entropy_with_logits(logits, bits01, reduction="none").mean(-1)  # [b, L]
    loss = (per_token * weights.to(per_token.device)).mean()
    acc = ((logits > 0) == (target > 0)).float().mean()
    return loss, acc
