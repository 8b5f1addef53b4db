"""Byte-level text tokens for the condition prefix.

A prompt is encoded as its bytes; the vocabulary is printable ASCII (bytes 32..126), so a
token id is the character's code point.  Prompts are right-padded with ``PAD_ID`` to the
model's ``max_text_len``: the prefix length is fixed, so one layout (and one cached
attention mask) serves every prompt, and the empty prompt (all padding) is the
unconditional input for classifier-free guidance.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

PAD_ID = 256
VOCAB_SIZE = 257  # 256 byte values + padding; only printable ASCII is ever produced
FIRST_CHAR, LAST_CHAR = 32, 126


def validate(prompt: str, max_len: int) -> None:
    """Raise ValueError naming the problem if ``prompt`` cannot be encoded."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    for i, ch in enumerate(prompt):
        if not FIRST_CHAR <= ord(ch) <= LAST_CHAR:
            raise ValueError(f"prompt {prompt!r}: character {ch!r} (U+{ord(ch):04X}) at position {i} is "
                             f"outside the text vocabulary (printable ASCII, ' ' to '~')")
    if len(prompt) > max_len:
        raise ValueError(f"prompt {prompt!r} is {len(prompt)} characters long; this model accepts at most "
                         f"{max_len} (max_text_len)")


def encode(prompt: str, max_len: int) -> torch.Tensor:
    """Prompt -> Long [max_len] token ids, right-padded with PAD_ID."""
    validate(prompt, max_len)
    ids = torch.full((max_len,), PAD_ID, dtype=torch.long)
    ids[:len(prompt)] = torch.tensor([ord(c) for c in prompt], dtype=torch.long)
    return ids


def encode_batch(prompts: Sequence[str], max_len: int) -> torch.Tensor:
    """list of prompts -> Long [B, max_len]."""
    if isinstance(prompts, str):
        raise TypeError("encode_batch expects a list of prompts, got a single str")
    return torch.stack([encode(p, max_len) for p in prompts]) if prompts else torch.empty(0, max_len, dtype=torch.long)


def decode(ids: torch.Tensor) -> str:
    """Token ids [L] -> prompt (padding dropped)."""
    return "".join(chr(i) for i in ids.tolist() if i != PAD_ID)
