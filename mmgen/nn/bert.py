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


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


class _Linear(nn.Module):
    """``nn.Linear`` over given weights (nn.Linear would first spend time on a random init)."""

    def __init__(self, state: dict, prefix: str):
        super().__init__()
        self.weight, self.bias = _frozen(state[prefix + ".weight"]), _frozen(state[prefix + ".bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _LayerNorm(_Linear):
    def __init__(self, state: dict, prefix: str, eps: float):
        super().__init__(state, prefix)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class _Layer(nn.Module):
    def __init__(self, state: dict, prefix: str, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.attn_out, self.up, self.down = (
            _Linear(state, prefix + name) for name in ("attention.self.query", "attention.self.key",
                                                       "attention.self.value", "attention.output.dense",
                                                       "intermediate.dense", "output.dense"))
        self.attn_norm = _LayerNorm(state, prefix + "attention.output.LayerNorm", eps)
        self.out_norm = _LayerNorm(state, prefix + "output.LayerNorm", eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = (p(x).view(B, L, self.heads, -1).transpose(1, 2) for p in (self.query, self.key, self.value))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)
        a = a.transpose(1, 2).reshape(B, L, C)
        x = self.attn_norm(self.attn_out(a) + x)
        return self.out_norm(self.down(F.gelu(self.up(x))) + x)


class BertEncoder(nn.Module):
    """Token embeddings -> ``num_hidden_layers`` post-norm blocks, over the tensors of a
    transformers-named BERT state dict (with or without the ``bert.`` prefix)."""

    def __init__(self, config: dict, state: dict[str, torch.Tensor]):
        super().__init__()
        state = {k.removeprefix("bert."): v for k, v in state.items()}
        eps = config.get("layer_norm_eps", 1e-12)
        try:
            self.word = _frozen(state["embeddings.word_embeddings.weight"])
            self.position = _frozen(state["embeddings.position_embeddings.weight"])
            self.token_type = _frozen(state["embeddings.token_type_embeddings.weight"])
            self.norm = _LayerNorm(state, "embeddings.LayerNorm", eps)
            self.layers = nn.ModuleList(_Layer(state, f"encoder.layer.{i}.", config["num_attention_heads"], eps)
                                        for i in range(config["num_hidden_layers"]))
        except KeyError as e:
            raise ValueError(f"not a BERT checkpoint: no tensor {e}") from None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states [B, L, dim]; right padding (``attention_mask`` 0) is cut before the
        layers and its rows come back as zeros (real tokens never attend to padding, so they get
        the values of the padded computation up to float rounding)."""
        L, n = input_ids.shape[1], max(int(attention_mask.sum(1).max()), 1)
        input_ids, attention_mask = input_ids[:, :n], attention_mask[:, :n]
        x = F.embedding(input_ids, self.word) + self.token_type[0]  # one segment: token type 0 everywhere
        x = self.norm(x + self.position[:n])
        mask = attention_mask.bool()[:, None, None, :]  # padding keys are never attended to
        for layer in self.layers:
            x = layer(x, mask)
        return F.pad(x * attention_mask[..., None], (0, 0, 0, L - n))


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

    return BertEncoder(config, load_file(str(folder / "model.safetensors"))).eval()
