"""A BERT encoder in plain torch, for the frozen sentence encoders of text prompts (MiniLM).

Why not ``transformers.BertModel``: importing transformers' model code costs several times
``import torch`` (it pulls scipy, sympy, torchvision), and ``mmgen sample`` embeds every prompt
to tell the user how far it is from the training captions. This module loads the same
``config.json`` + ``model.safetensors`` + ``tokenizer.json`` folder with ``safetensors`` and
``tokenizers`` alone and computes the same function (``tests/test_bert.py`` compares the last
hidden states with transformers' within 1e-5). Inference only: no dropout; padding is not computed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.attn_out, self.attn_norm = nn.Linear(dim, dim), nn.LayerNorm(dim, eps=eps)
        self.up, self.down, self.out_norm = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = (p(x).view(B, L, self.heads, -1).transpose(1, 2) for p in (self.query, self.key, self.value))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)
        a = a.transpose(1, 2).reshape(B, L, C)
        x = self.attn_norm(self.attn_out(a) + x)
        return self.out_norm(self.down(F.gelu(self.up(x))) + x)


# our parameter names -> the checkpoint's (per layer, after "encoder.layer.{i}.")
_LAYER_KEYS = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
               "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
               "up": "intermediate.dense", "down": "output.dense", "out_norm": "output.LayerNorm"}


class BertEncoder(nn.Module):
    """Token embeddings -> ``num_hidden_layers`` post-norm blocks; returns the last hidden states."""

    def __init__(self, config: dict):
        super().__init__()
        dim, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        self.word = nn.Embedding(config["vocab_size"], dim)
        self.position = nn.Embedding(config["max_position_embeddings"], dim)
        self.token_type = nn.Embedding(config.get("type_vocab_size", 2), dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.layers = nn.ModuleList(_Layer(dim, config["num_attention_heads"], config["intermediate_size"], eps)
                                    for _ in range(config["num_hidden_layers"]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states [B, L, dim]; right padding (``attention_mask`` 0) is cut before the
        layers and its rows come back as zeros (real tokens never attend to padding, so they get
        the values of the padded computation up to float rounding)."""
        L, n = input_ids.shape[1], max(int(attention_mask.sum(1).max()), 1)
        input_ids, attention_mask = input_ids[:, :n], attention_mask[:, :n]
        x = self.word(input_ids) + self.token_type.weight[0]  # one segment: token type 0 everywhere
        x = self.norm(x + self.position.weight[:n])
        mask = attention_mask.bool()[:, None, None, :]  # padding keys are never attended to
        for layer in self.layers:
            x = layer(x, mask)
        return F.pad(x * attention_mask[..., None], (0, 0, 0, L - n))

    def load_checkpoint(self, state: dict[str, torch.Tensor]) -> None:
        """Load a transformers-named BERT state dict (with or without the ``bert.`` prefix)."""
        state = {k.removeprefix("bert."): v for k, v in state.items()}
        ours = {"word.weight": "embeddings.word_embeddings.weight",
                "position.weight": "embeddings.position_embeddings.weight",
                "token_type.weight": "embeddings.token_type_embeddings.weight",
                "norm.weight": "embeddings.LayerNorm.weight", "norm.bias": "embeddings.LayerNorm.bias"}
        for i in range(len(self.layers)):
            for name, theirs in _LAYER_KEYS.items():
                for p in ("weight", "bias"):
                    ours[f"layers.{i}.{name}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
        missing = sorted(v for v in ours.values() if v not in state)
        if missing:
            raise ValueError(f"not a BERT checkpoint: missing {missing[:3]}")
        self.load_state_dict({k: state[v] for k, v in ours.items()})


class BertTokenizer:
    """``tokenizer.json`` through the ``tokenizers`` library: ``[CLS] ... [SEP]`` ids, padded /
    truncated to a fixed length on request (what transformers' fast BERT tokenizer returns)."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        special = json.loads((folder / "tokenizer_config.json").read_text()) \
            if (folder / "tokenizer_config.json").is_file() else {}
        self.pad_token = special.get("pad_token", "[PAD]")
        self.pad_id = self._tok.token_to_id(self.pad_token)

    def token_count(self, text: str) -> int:
        self._tok.no_truncation()
        self._tok.no_padding()
        return len(self._tok.encode(text).ids)

    def batch(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), both Long [B, max_len]."""
        self._tok.enable_truncation(max_len)
        self._tok.enable_padding(length=max_len, pad_id=self.pad_id, pad_token=self.pad_token)
        enc = self._tok.encode_batch(texts)
        return torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc])


def is_bert(folder: Path, config: dict) -> bool:
    """Whether ``folder`` (its transformers ``config.json`` read into ``config``) holds a plain BERT
    encoder with a fast tokenizer file, which this module computes."""
    return (config.get("model_type") == "bert" and config.get("hidden_act", "gelu") == "gelu"
            and config.get("position_embedding_type", "absolute") == "absolute"
            and (folder / "tokenizer.json").is_file())


def load_bert(folder: Path, config: dict) -> BertEncoder:
    from safetensors.torch import load_file

    model = BertEncoder(config)
    model.load_checkpoint(load_file(str(folder / "model.safetensors")))
    return model.eval().requires_grad_(False)
