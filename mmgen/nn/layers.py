"""LLaMA-style transformer pieces: RMSNorm, SwiGLU, self-attention with RoPE and KV cache, Block."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import attention
from .moe import SparseMoE
from .rope import apply_rope


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (statistics in float32)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype:  # one fused op; it keeps its statistics in float32
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases; gate and up are one matmul (``gate_up_proj``,
    gate rows first). Checkpoints with separate ``gate_proj`` / ``up_proj`` weights still load."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(dim, 2 * hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self._register_load_state_dict_pre_hook(_fuse_gate_up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def _fuse_gate_up(state_dict, prefix, *args) -> None:
    """Load hook: an older checkpoint's ``gate_proj`` and ``up_proj`` become ``gate_up_proj``."""
    gate, up = prefix + "gate_proj.weight", prefix + "up_proj.weight"
    if gate in state_dict and up in state_dict:
        state_dict[prefix + "gate_up_proj.weight"] = torch.cat([state_dict.pop(gate), state_dict.pop(up)])


def upgrade_state_dict(model: nn.Module, state_dict: dict) -> None:
    """Rename an older checkpoint's keys in place for ``model`` (what the load hooks do, for
    loaders that bypass ``load_state_dict``, such as diffusers' ``from_pretrained``)."""
    for name, module in model.named_modules():
        if isinstance(module, SwiGLU):
            _fuse_gate_up(state_dict, f"{name}." if name else "")


class KVCache:
    """Pre-allocated keys/values of one attention layer: k, v [B, H, max_len, D] plus a fill length.

    ``append(k, v)`` writes the new entries and returns views of everything cached so far.
    ``dtype`` is the dtype the keys are stored in (the model's compute dtype, e.g. bf16).
    """

    def __init__(self, batch_size: int, n_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device):
        shape = (batch_size, n_heads, max_len, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = k.shape[2]
        if self.length + n > self.max_len:
            raise RuntimeError(f"KV cache full: {self.length} + {n} tokens > max_len {self.max_len}")
        self.k[:, :, self.length:self.length + n] = k
        self.v[:, :, self.length:self.length + n] = v
        self.length += n
        return self.k[:, :, :self.length], self.v[:, :, :self.length]

    def drop(self, start: int, n: int) -> None:
        """Remove the ``n`` entries from ``start`` on, moving the later ones down."""
        keep = slice(start + n, self.length)
        # clone: source and destination ranges overlap
        self.k[:, :, start:self.length - n] = self.k[:, :, keep].clone()
        self.v[:, :, start:self.length - n] = self.v[:, :, keep].clone()
        self.length -= n


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions, optional QK-norm and a KV cache.

    forward(x [B, L, C], rope=(cos, sin) or None, mask (see mmgen.nn.attention), kv_cache=None)
    With a kv_cache, the new keys/values are appended and the queries attend to the whole
    cache (mask, if given, must then be [Lq, L_cached_total]).
    """

    def __init__(self, dim: int, n_heads: int, qk_norm: bool = False, backend: str = "auto"):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"SelfAttention: dim {dim} not divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim, self.backend = n_heads, dim // n_heads, backend
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else None

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B, L, C] -> [B, H, L, D]
        B, L, _ = t.shape
        return t.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x, rope=None, mask=None, kv_cache: KVCache | None = None):
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)  # stored in the cache's dtype
            if q.dtype != k.dtype:
                q = q.to(k.dtype)
        out = attention(q, k, v, mask, backend=self.backend)
        B, _, L, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


def ffn_hidden(dim: int, mlp_ratio: float) -> int:
    """SwiGLU hidden size of a Block: mlp_ratio * dim rounded up to a multiple of 64."""
    return int(-(-mlp_ratio * dim // 64) * 64)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x)).

    SwiGLU hidden size = mlp_ratio * dim rounded up to a multiple of 64.
    moe: keyword arguments of :class:`~mmgen.nn.moe.SparseMoE` to make the FFN sparse, or a ready
    sparse FFN module (MoUE layers share a pool); None = dense.
    checkpointing=True recomputes the block in backward (training only, not with a KV cache).
    """

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 backend: str = "auto", checkpointing: bool = False, moe: dict | None = None):
        super().__init__()
        hidden = ffn_hidden(dim, mlp_ratio)
        self.norm1 = RMSNorm(dim)
        self.attn = SelfAttention(dim, n_heads, qk_norm=qk_norm, backend=backend)
        self.norm2 = RMSNorm(dim)
        self.mlp = (SwiGLU(dim, hidden) if moe is None else moe if isinstance(moe, nn.Module)
                    else SparseMoE(dim, dense_hidden=hidden, **moe))
        self.checkpointing = checkpointing

    def _forward(self, x, rope, mask, kv_cache):
        x = x + self.attn(self.norm1(x), rope, mask, kv_cache)
        return x + self.mlp(self.norm2(x))

    def forward(self, x, rope=None, mask=None, kv_cache: KVCache | None = None):
        if self.checkpointing and self.training and kv_cache is None and torch.is_grad_enabled():
            return checkpoint(self._forward, x, rope, mask, None, use_reentrant=False)
        return self._forward(x, rope, mask, kv_cache)
