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
        # Caches of extra passes over the same tokens (an SGT attention loop, ITT thinking steps,
        # a repeated block), keyed by name and created on first use by :meth:`child`.
        self.children: dict[str, KVCache] = {}

    def child(self, name: str, n_heads: int | None = None) -> "KVCache":
        """The cache named ``name`` of an extra pass (same batch, length, dtype; ``n_heads`` heads)."""
        if name not in self.children:
            B, H, L, D = self.k.shape
            self.children[name] = KVCache(B, n_heads or H, L, D, self.k.dtype, self.k.device)
        return self.children[name]

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

    def pop(self, n: int) -> None:
        """Forget the last ``n`` entries (here and in every child cache)."""
        self.length -= n
        for child in self.children.values():
            child.pop(n)

    def drop(self, start: int, n: int) -> None:
        """Remove the ``n`` entries from ``start`` on, moving the later ones down."""
        keep = slice(start + n, self.length)
        # clone: source and destination ranges overlap
        self.k[:, :, start:self.length - n] = self.k[:, :, keep].clone()
        self.v[:, :, start:self.length - n] = self.v[:, :, keep].clone()
        self.length -= n
        for child in self.children.values():
            child.drop(start, n)


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
        self._fused_qkv: tuple | None = None  # (weights' identity and versions, [q; k; v] weight)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:  # [B, L, h*D] -> [B, L, h, D]
        return t.view(*t.shape[:2], -1, self.head_dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v projections; without autograd (decoding) one matmul over the concatenated weight,
        rebuilt whenever a projection's weight changes (in-place updates bump ``_version``).
        Wrapped projections (LoRA, APEX) and training keep the three modules."""
        linears = (self.q_proj, self.k_proj, self.v_proj)
        if torch.is_grad_enabled() or any(type(p) is not nn.Linear for p in linears):
            return tuple(p(x) for p in linears)
        key = tuple((p.weight.data_ptr(), p.weight._version) for p in linears)
        if self._fused_qkv is None or self._fused_qkv[0] != key:
            self._fused_qkv = key, torch.cat([p.weight for p in linears])
        return F.linear(x, self._fused_qkv[1]).split([p.out_features for p in linears], dim=-1)

    def _rows(self, heads: torch.Tensor) -> torch.Tensor:  # weight rows of the given heads
        return (heads[:, None] * self.head_dim + torch.arange(self.head_dim, device=heads.device)).flatten()

    def project(self, x, rope=None, heads: torch.Tensor | None = None):
        """q, k, v [B, h, L, D] after QK-norm and rotary; ``heads`` (Long indices) computes only
        those heads, from row slices of the projection weights."""
        if heads is None:
            q, k, v = self._qkv(x)
        else:
            rows = self._rows(heads)
            q, k, v = (F.linear(x, p.weight[rows]) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        if self.q_norm is not None:  # per head vector: before the transpose, on rows in memory order
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def attend(self, q, k, v, mask=None, kv_cache: KVCache | None = None, heads: torch.Tensor | None = None,
               head_scale: torch.Tensor | None = None):
        """Attention of projected q/k/v and the output projection (of ``heads`` only, if given);
        ``head_scale`` [H] weighs each head's output before the projection."""
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)  # stored in the cache's dtype
            if q.dtype != k.dtype:
                q = q.to(k.dtype)
        out = attention(q, k, v, mask, backend=self.backend)
        if head_scale is not None:
            out = out * head_scale.to(out.dtype)[:, None, None]
        B, _, L, _ = out.shape
        out = out.transpose(1, 2).reshape(B, L, -1)
        if heads is None:
            return self.o_proj(out)
        return F.linear(out, self.o_proj.weight[:, self._rows(heads)])

    def forward(self, x, rope=None, mask=None, kv_cache: KVCache | None = None,
                heads: torch.Tensor | None = None, head_scale: torch.Tensor | None = None):
        return self.attend(*self.project(x, rope, heads), mask, kv_cache, heads, head_scale)


def ffn_hidden(dim: int, mlp_ratio: float) -> int:
    """SwiGLU hidden size of a Block: mlp_ratio * dim rounded up to a multiple of 64."""
    return int(-(-mlp_ratio * dim // 64) * 64)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x)).

    SwiGLU hidden size = mlp_ratio * dim rounded up to a multiple of 64.
    moe: keyword arguments of :class:`~mmgen.nn.moe.SparseMoE` to make the FFN sparse, or a ready
    sparse FFN module (MoUE layers share a pool); None = dense.
    checkpointing=True recomputes the block in backward (training only, not with a KV cache).
    Depth options (at most one; all off = the plain block):
      sgt: kwargs of :class:`mmgen.nn.sgt.SGTLoop` — an entropy-scheduled attention loop;
      itt: kwargs of :class:`mmgen.nn.itt.ITT` — thinking steps for routed tokens
        (``forward(..., groups=)`` gives the routing groups);
      repeat: run the whole block this many times (static block looping).
    """

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 backend: str = "auto", checkpointing: bool = False, moe: dict | None = None,
                 sgt: dict | None = None, itt: dict | None = None, repeat: int = 1):
        super().__init__()
        hidden = ffn_hidden(dim, mlp_ratio)
        self.norm1 = RMSNorm(dim)
        self.attn = SelfAttention(dim, n_heads, qk_norm=qk_norm, backend=backend)
        self.norm2 = RMSNorm(dim)
        self.mlp = (SwiGLU(dim, hidden) if moe is None else moe if isinstance(moe, nn.Module)
                    else SparseMoE(dim, dense_hidden=hidden, **moe))
        self.checkpointing = checkpointing
        if (sgt is not None) + (itt is not None) + (repeat > 1) > 1:
            raise ValueError("Block: choose at most one of sgt, itt and repeat > 1")
        from .itt import ITT
        from .sgt import SGTLoop

        self.sgt = SGTLoop(n_heads, **sgt) if sgt is not None else None
        self.itt = ITT(dim, **itt) if itt is not None else None
        self.repeat = repeat

    def _forward(self, x, rope, mask, kv_cache):
        if self.sgt is None:
            x = x + self.attn(self.norm1(x), rope, mask, kv_cache)
        else:
            x = self.sgt(self, x, rope, mask, kv_cache)
        return x + self.mlp(self.norm2(x))

    def _run(self, x, rope=None, mask=None, kv_cache: KVCache | None = None):
        if self.checkpointing and self.training and kv_cache is None and torch.is_grad_enabled():
            return checkpoint(self._forward, x, rope, mask, None, use_reentrant=False)
        return self._forward(x, rope, mask, kv_cache)

    def forward(self, x, rope=None, mask=None, kv_cache: KVCache | None = None, groups=None):
        if self.itt is not None:
            return self.itt(self._run, x, rope, mask, kv_cache, groups)
        x = self._run(x, rope, mask, kv_cache)
        for r in range(1, self.repeat):
            x = self._run(x, rope, mask, None if kv_cache is None else kv_cache.child(f"repeat{r}"))
        if self.sgt is not None:
            self.sgt.commit()
        return x
