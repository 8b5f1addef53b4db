"""Word-level vocabulary of the VQA grammar (questions and one-word answers).

Questions are lower-cased and split on whitespace, with "?" as its own token.  A word outside
the vocabulary, an empty question or one longer than the context is a ``ValueError`` that
names the problem (the CLI prints it).
"""
from __future__ import annotations

import torch

from .data import ANSWERS, COLORS, SHAPES

PAD = "<pad>"
_QUESTION_WORDS = ("what", "color", "is", "the", "shape", "object", "how", "many", "objects",
                   "are", "there", "where", "a", "?")
VOCAB: tuple[str, ...] = tuple(dict.fromkeys((PAD, *_QUESTION_WORDS, *COLORS, *SHAPES, *ANSWERS)))
WORD_TO_ID = {w: i for i, w in enumerate(VOCAB)}
PAD_ID = WORD_TO_ID[PAD]
ANSWER_IDS = tuple(WORD_TO_ID[a] for a in ANSWERS)


def tokenize(question: str) -> list[str]:
    return question.lower().replace("?", " ? ").split()


def encode(question: str, max_len: int) -> list[int]:
    """Question -> token ids; raises ValueError for empty/too long/out-of-vocabulary questions."""
    words = tokenize(question)
    if not words:
        raise ValueError("empty question: ask e.g. 'what color is the circle ?'")
    if len(words) > max_len:
        raise ValueError(f"question has {len(words)} tokens but the model's context allows "
                         f"{max_len}: shorten it")
    unknown = sorted({w for w in words if w not in WORD_TO_ID})
    if unknown:
        raise ValueError(f"words not in the model's vocabulary: {unknown}. Known words: "
                         f"{' '.join(w for w in VOCAB if w != PAD)}")
    return [WORD_TO_ID[w] for w in words]


def batch_encode(questions: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (ids Long [B, Lmax] right-padded with PAD_ID, lengths Long [B])."""
    encoded = [encode(q, max_len) for q in questions]
    lengths = torch.tensor([len(e) for e in encoded])
    ids = torch.full((len(encoded), int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, :len(e)] = torch.tensor(e)
    return ids, lengths


def decode_answer(token_id: int) -> str:
    return VOCAB[token_id]
