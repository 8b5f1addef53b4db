"""Neural-network building blocks shared by the generator (mmgen.ar) and the MLLM (mmgen.mllm)."""
from .attention import BACKENDS, GroupMask, attention, resolve_backend, xformers_available
from .layers import Block, KVCache, RMSNorm, SelfAttention, SwiGLU, ffn_hidden
from .moe import SparseMoE
from .rope import Rope3D, apply_rope, default_axes_dims

__all__ = [
    "BACKENDS", "GroupMask", "attention", "resolve_backend", "xformers_available",
    "Block", "KVCache", "ffn_hidden", "RMSNorm", "SelfAttention", "SwiGLU",
    "SparseMoE", "Rope3D", "apply_rope", "default_axes_dims",
]
