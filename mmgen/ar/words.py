"""Word-level text vocabulary of the unified model (text in and text out, one embedding table).

A unified VideoAR (config ``text_vocab``) reads prompts and writes captions and answers in
words: the vocabulary is the small closed grammar the model was trained on (for MovingShapes,
:func:`mmgen.data.unified.grammar_words`), saved as a list in the model's ``config.json``, so
it works offline and can never drift from the weights. Text is lower-cased and split into
words and the punctuation marks ``, . ; ?``; a word outside the vocabulary is an error naming
it (never a silent unknown token). Ids 0..4 are the special tokens below.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch

SPECIALS = ("<pad>", "<caption>", "<question>", "<answer>", "<eos>")
PAD, CAPTION, QUESTION, ANSWER, EOS = range(len(SPECIALS))
_WORD = re.compile(r"[a-z]+|[,.;?]")
_OTHER = re.compile(r"[^a-z,.;?\s]+")


def split_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of ``text``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _WORD.findall(text.lower())


class WordVocab:
    """Special tokens + ``words``; the same interface as the byte tokens of :mod:`mmgen.ar.text`
    (``PAD_ID``, ``VOCAB_SIZE``, ``encode_batch``) so the model's prefix code serves both."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if len(set(words)) != len(words) or set(words) & set(SPECIALS):
            raise ValueError("text_vocab: words must be unique and must not repeat the special tokens")
        self.tokens = list(SPECIALS) + words
        self._examples = " ".join([w for w in words if w.isalpha()][:8])
        self.index = {w: i for i, w in enumerate(self.tokens)}
        self.PAD_ID = PAD
        self.VOCAB_SIZE = len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; ValueError naming every word outside the vocabulary."""
        words = split_words(text)
        unknown = [w for w in words if w not in self.index] + _OTHER.findall(text.lower())
        if unknown:
            names = ", ".join(repr(w) for w in dict.fromkeys(unknown))
            raise ValueError(f"{text!r}: {names} not in this model's vocabulary of {len(self.tokens) - len(SPECIALS)} "
                             f"words ({self._examples} ...)")
        return [self.index[w] for w in words]

    def encode_batch(self, texts: Sequence[str], max_len: int) -> torch.Tensor:
        """Texts -> Long [B, max_len], right-padded with PAD; ValueError when one is too long."""
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a list of texts, got a single str")
        out = torch.full((len(texts), max_len), PAD, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > max_len:
                raise ValueError(f"{text!r} is {len(ids)} words long; this model reads at most {max_len} "
                                 f"(max_text_len)")
            out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, up to the first <eos>, special tokens dropped, punctuation attached."""
        words = []
        for i in ids:
            if i == EOS:
                break
            if i >= len(SPECIALS):
                words.append(self.tokens[i])
        return re.sub(r" ([,.;?])", r"\1", " ".join(words))
