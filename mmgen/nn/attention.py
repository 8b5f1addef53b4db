"""One attention entry point with interchangeable backends.

``attention(q, k, v, mask, backend)`` is the only place in mmgen that computes softmax
attention.  Three backends compute the same function:

* ``"sdpa"`` — ``torch.nn.functional.scaled_dot_product_attention`` with a dense boolean mask.
  The reference; runs everywhere (CPU tests use it).
* ``"flex"`` — FlexAttention with a ``BlockMask``.  On CUDA the kernel is ``torch.compile``d
  once (lazily, module level) and skips fully masked 128x128 tiles, so a group-causal mask
  costs roughly half of dense attention instead of the 2x a materialised dense mask costs.
  On CPU it runs the (slow, eager) reference implementation, which the parity tests use.
* ``"xformers"`` — ``memory_efficient_attention`` with an additive bias; used only when a real
  tiny CUDA call succeeds (checked once and cached), never just because the import works.

Every backend takes every mask (see :func:`resolve_backend` for the fallbacks).
Masks are either a boolean tensor (``True`` = may attend), ``[Lq, Lk]`` or ``[B, 1, Lq, Lk]``,
or a :class:`GroupMask`, which describes the mask by per-token group ids and a group-level
visibility table.  A GroupMask can become a dense mask (for SDPA/xformers) or a BlockMask
(for Flex); both are built once and cached on the object, so a layout that owns its
GroupMask builds its block mask once.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flex", "xformers")


@dataclass(eq=False)
class GroupMask:
    """Attention mask expressed through groups: query i may attend key j iff
    ``visible[q_group[i], k_group[j]]`` (or ``visible[b, ...]`` when ``visible`` has a batch dim).

    q_group: Long [Lq]; k_group: Long [Lk]; visible: bool [G, G] or [B, G, G].
    """

    q_group: torch.Tensor
    k_group: torch.Tensor
    visible: torch.Tensor
    _dense: dict = field(default_factory=dict, repr=False)
    _block: dict = field(default_factory=dict, repr=False)
    _copies: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.q_group.ndim != 1 or self.k_group.ndim != 1:
            raise ValueError("GroupMask: q_group and k_group must be 1-D group-id tensors")
        if self.visible.dtype != torch.bool or self.visible.ndim not in (2, 3):
            raise ValueError("GroupMask: visible must be a bool [G, G] or [B, G, G] tensor")

    @property
    def batched(self) -> bool:
        return self.visible.ndim == 3

    def to(self, device) -> "GroupMask":
        """The same mask on ``device``; the copy is cached, so its dense/block masks are built once."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self.q_group.device == device:
            return self
        if device not in self._copies:
            self._copies[device] = GroupMask(self.q_group.to(device), self.k_group.to(device),
                                             self.visible.to(device))
        return self._copies[device]

    def rows(self, queries: slice, num_keys: int) -> "GroupMask":
        """The mask of queries ``queries`` against the first ``num_keys`` keys (KV-cached decoding),
        without building the full [Lq, Lk] mask: the group ids are sliced, the table is shared."""
        return GroupMask(self.q_group[queries], self.k_group[:num_keys], self.visible)

    def dense(self, device=None) -> torch.Tensor:
        """Bool mask [Lq, Lk] (or [B, 1, Lq, Lk] when batched), cached per device."""
        device = torch.device(device) if device is not None else self.q_group.device
        if device not in self._dense:
            m = self.to(device)
            if self.batched:
                dense = m.visible[:, m.q_group][:, :, m.k_group].unsqueeze(1)
            else:
                dense = m.visible[m.q_group][:, m.k_group]
            self._dense[device] = dense
        return self._dense[device]

    def block_mask(self, device, num_heads: int | None = None):
        """FlexAttention BlockMask for this mask, built once per device and cached."""
        from torch.nn.attention.flex_attention import create_block_mask

        device = torch.device(device)
        if device not in self._block:
            m = self.to(device)
            qg, kg, vis = m.q_group, m.k_group, m.visible
            if self.batched:
                def mask_mod(b, h, q_idx, kv_idx):
                    return vis[b, qg[q_idx], kg[kv_idx]]
                batch = vis.shape[0]
            else:
                def mask_mod(b, h, q_idx, kv_idx):
                    return vis[qg[q_idx], kg[kv_idx]]
                batch = None
            # _compile=True builds the mask with vectorised compiled code instead of a Python
            # loop over tiles; it matters for L ~ 10k on GPU and is unnecessary on CPU.
            self._block[device] = create_block_mask(
                mask_mod, batch, None, len(qg), len(kg), device=str(device),
                _compile=device.type == "cuda")
        return self._block[device]


# --------------------------------------------------------------------------- backends
@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q, k, v, mask):
    from torch.nn.attention.flex_attention import flex_attention

    block = None if mask is None else mask.block_mask(q.device)
    if q.is_cuda:
        return _compiled_flex()(q, k, v, block_mask=block)
    with warnings.catch_warnings():
        # Eager Flex on CPU is the slow reference path used in parity tests; its
        # "not compiled" warning is expected there.
        warnings.simplefilter("ignore", UserWarning)
        return flex_attention(q, k, v, block_mask=block)


def _sdpa(q, k, v, mask):
    if isinstance(mask, GroupMask):
        mask = mask.dense(q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _xformers(q, k, v, mask):
    import xformers.ops as xops

    if isinstance(mask, GroupMask):
        mask = mask.dense(q.device)
    bias = None
    if mask is not None:
        B, H, Lq, _ = q.shape
        Lk = k.shape[2]
        # xformers wants the bias' last dim padded to a multiple of 8 (memory alignment).
        pad = (-Lk) % 8
        full = torch.zeros(B, H, Lq, Lk + pad, dtype=q.dtype, device=q.device)
        bias = full[..., :Lk]
        bias.masked_fill_(~mask.expand(B, H, Lq, Lk) if mask.ndim == 4 else ~mask, float("-inf"))
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)


@functools.cache
def xformers_available() -> bool:
    """True iff xformers is installed AND its kernel runs a tiny CUDA call here (cached)."""
    if not torch.cuda.is_available():
        return False
    try:
        import xformers.ops as xops

        x = torch.randn(1, 8, 1, 16, device="cuda", dtype=torch.float16)
        xops.memory_efficient_attention(x, x, x)
        torch.cuda.synchronize()
        return True
    except Exception:  # any failure (missing build, no kernel for this GPU) means "not usable"
        return False


def _warn_fallback(backend: str, reason: str) -> None:
    warnings.warn(f"attention backend {backend!r}: {reason}; using the SDPA reference (same result)", stacklevel=3)


def resolve_backend(backend: str, device: torch.device, mask=None, head_dim: int | None = None) -> str:
    """Pick the concrete backend for ``backend`` on ``device``.  "auto" takes Flex only for a
    GroupMask on CUDA with a power-of-two head dim >= 16 (what its kernels are tuned for).

    A requested backend that cannot compute this call falls back to SDPA (xformers with a
    warning, which Python's default filter shows once):
    xformers whose kernels do not run here, Flex given a dense tensor mask (it needs a
    GroupMask; a dense mask is already materialised, so SDPA costs nothing extra). A model
    saved with any backend therefore runs anywhere."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend == "xformers" and not xformers_available():
        _warn_fallback(backend, "xformers kernels do not run here (not installed, no CUDA, or no kernel for this GPU)")
        return "sdpa"
    if backend == "flex" and isinstance(mask, torch.Tensor):
        return "sdpa"
    if backend != "auto":
        return backend
    flex_dim = head_dim is None or (head_dim >= 16 and head_dim & (head_dim - 1) == 0)
    if device.type == "cuda" and isinstance(mask, GroupMask) and flex_dim:
        return "flex"
    return "sdpa"


def attention(q, k, v, mask=None, backend: str = "auto") -> torch.Tensor:
    """Softmax attention. q [B,H,Lq,D], k/v [B,H,Lk,D] -> [B,H,Lq,D].

    mask: None (full attention), bool [Lq,Lk] / [B,1,Lq,Lk] (True = may attend), or GroupMask.
    backend: "auto" (Flex for GroupMasks on CUDA, else SDPA), "sdpa", "flex", "xformers".
    """
    name = resolve_backend(backend, q.device, mask, q.shape[-1])
    if name == "flex":
        return _flex(q, k, v, mask)
    if name == "xformers":
        return _xformers(q, k, v, mask)
    return _sdpa(q, k, v, mask)
