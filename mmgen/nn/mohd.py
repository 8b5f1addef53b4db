"""MoHD (Mixture of Hidden-Dimensions, arXiv 2412.05644) as a parametrisation of
:class:`~mmgen.nn.moe.SparseMoE`.

The FFN's hidden dimensions are split into always-on SHARED sub-dimensions and ROUTED ones; the
routed sub-dimensions are fused into groups of ``group`` dimensions (group fusion: one routing
decision and one GEMM per group, not per dimension), of which each token activates ``top_k``.
Activation scaling: the routed groups' outputs are multiplied by ``top_k``, so the normalised
gates (summing to 1) give each active dimension the weight 1 a dense FFN gives it.

Sizes (the paper gives no small-model recipe): the layer holds ``expansion * dense_hidden``
hidden dimensions, ``shared_fraction * dense_hidden`` of them shared, and activates exactly
``dense_hidden`` per token (matched active parameters).
"""
from __future__ import annotations


def mohd_kwargs(dense_hidden: int, expansion: float = 2.0, shared_fraction: float = 0.5, group: int = 32) -> dict:
    """SparseMoE keyword arguments (without dim and dense_hidden) of a MoHD FFN."""
    shared = int(round(shared_fraction * dense_hidden))
    routed_active = dense_hidden - shared
    if shared < 0 or routed_active <= 0 or routed_active % group:
        raise ValueError(f"mohd_shared_fraction={shared_fraction} and mohd_group={group}: the routed active "
                         f"dimensions ({routed_active} of hidden {dense_hidden}) must be a positive multiple of the group")
    n_groups = int(round((expansion * dense_hidden - shared) / group))
    top_k = routed_active // group
    if n_groups <= top_k:
        raise ValueError(f"mohd_expansion={expansion} leaves {n_groups} routed groups for {top_k} active ones; raise it")
    return dict(n_experts=n_groups, top_k=top_k, expert_hidden=group, n_shared=0, shared_hidden=shared,
                gate_scale=float(top_k))
