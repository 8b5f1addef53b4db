"""MoUE (Mixture of Universal Experts, arXiv 2603.04971): one expert pool reused across layers.

* :class:`UniversalPool` holds ``pool_size`` SwiGLU experts once (the model owns it).  Layer l
  sees the window of ``window`` experts starting at ``l * stride`` (mod pool size): a staggered
  rotational topology, so neighbouring layers share ``window - stride`` experts.
* Universal load balance: one bias per pool expert, moved after each optimiser step from the
  counts of every layer; an expert reachable from more layers is expected to carry
  proportionally more tokens, so the load is divided by its exposure (the number of layers whose
  window holds it) before comparing with the mean (depth-aware correction).
* Trajectory router: each token carries a small state (``traj_dim``) from one MoUE layer to the
  next; a layer's logits are ``router(x) + traj_in(state)`` and the new state is
  ``tanh(state + traj_out(gates))``.  traj_in starts at zero, so an untrained trajectory routes
  exactly like a plain per-layer router (this makes :func:`pool_state_from_moe` exact).
  The state lives on the pool for the duration of one forward pass (layers run in order); it
  does not survive recomputation, so MoUE excludes gradient checkpointing.
"""
from __future__ import annotations

import torch
from torch import nn

from .moe import SparseMoE


class UniversalPool(nn.Module):
    def __init__(self, dim: int, pool_size: int, hidden: int, layers: list[int], window: int, stride: int,
                 bias_rate: float = 1e-3):
        super().__init__()
        if not 1 <= window <= pool_size:
            raise ValueError(f"moue_pool={pool_size} must hold at least the moe_experts={window} of one layer's window")
        self.pool_size, self.window, self.stride, self.bias_rate = pool_size, window, stride, bias_rate
        self.layers = list(layers)
        self.w_gate = nn.Parameter(torch.empty(pool_size, dim, hidden))
        self.w_up = nn.Parameter(torch.empty(pool_size, dim, hidden))
        self.w_down = nn.Parameter(torch.empty(pool_size, hidden, dim))
        for w in (self.w_gate, self.w_up, self.w_down):
            nn.init.normal_(w, std=0.02)
        self.register_buffer("expert_bias", torch.zeros(pool_size))
        self.register_buffer("step_counts", torch.zeros(pool_size), persistent=False)
        exposure = torch.zeros(pool_size)
        for i in range(len(self.layers)):
            exposure[self.indices(i)] += 1
        if (exposure == 0).any():
            raise ValueError(f"moue_pool={pool_size}: experts {torch.nonzero(exposure == 0).flatten().tolist()} are in "
                             f"no layer's window; lower moue_pool or raise moue_stride")
        self.register_buffer("exposure", exposure, persistent=False)
        self.state: torch.Tensor | None = None  # trajectory of the tokens of the running forward

    def indices(self, slot: int) -> torch.Tensor:
        """Pool indices of the window of the ``slot``-th MoUE layer."""
        return (slot * self.stride + torch.arange(self.window)) % self.pool_size


class UniversalMoE(SparseMoE):
    """The FFN of one layer over a window of a shared :class:`UniversalPool` (routing, dispatch,
    kernels, elastic settings and statistics as :class:`SparseMoE`)."""

    def __init__(self, pool: UniversalPool, slot: int, dim: int, top_k: int, n_shared: int = 1,
                 traj_dim: int = 16, aux_alpha: float = 0.0, kernel: str = "auto"):
        nn.Module.__init__(self)  # the experts and the bias live in the pool, not here
        if not 1 <= top_k <= pool.window:
            raise ValueError(f"moe_top_k={top_k} must be in 1..moe_experts={pool.window}")
        self.n_experts, self.top_k, self.expert_hidden = pool.window, top_k, pool.w_gate.shape[2]
        self.bias_rate, self.aux_alpha, self.kernel, self.gate_scale = pool.bias_rate, aux_alpha, kernel, 1.0
        object.__setattr__(self, "pool", pool)  # a reference, not a submodule: the model saves the pool once
        self.slot, self.first = slot, slot == 0
        self.register_buffer("window_index", pool.indices(slot), persistent=False)
        self.router = nn.Linear(dim, pool.window, bias=False)
        self.traj_in = nn.Linear(traj_dim, pool.window, bias=False)
        nn.init.zeros_(self.traj_in.weight)
        self.traj_out = nn.Linear(pool.window, traj_dim, bias=False)
        from .layers import SwiGLU

        self.shared = SwiGLU(dim, n_shared * self.expert_hidden) if n_shared else None
        self.active_top_k = self.active_experts = self.aux_loss = self.last_choice = None
        self.in_submodel = False

    w_gate = property(lambda self: self.pool.w_gate[self.window_index])
    w_up = property(lambda self: self.pool.w_up[self.window_index])
    w_down = property(lambda self: self.pool.w_down[self.window_index])
    expert_bias = property(lambda self: self.pool.expert_bias[self.window_index])

    def route(self, x: torch.Tensor):
        state = self.pool.state
        if self.first or state is None or state.shape[0] != x.shape[0]:
            state = x.new_zeros(x.shape[0], self.traj_in.in_features)
        choice, gates, scores = self._select(self.router(x) + self.traj_in(state.to(x.dtype)))
        mixed = torch.zeros_like(scores).scatter(-1, choice, gates)
        self.pool.state = torch.tanh(state + self.traj_out(mixed.to(x.dtype)))
        return choice, gates, scores

    def _count(self, counts: torch.Tensor) -> None:
        self.pool.step_counts.index_add_(0, self.window_index, counts.to(self.pool.step_counts.dtype))


def pool_state_from_moe(expert_weights: list[dict[str, torch.Tensor]], biases: list[torch.Tensor],
                        pool: UniversalPool) -> dict[str, torch.Tensor]:
    """Pool tensors (w_gate, w_up, w_down, expert_bias) from the per-layer experts of a trained MoE:
    each pool expert is the mean of the layer experts its windows map onto.  Exact (every pool
    expert from one layer expert) when stride = window and pool size = layers x window."""
    sums = {name: torch.zeros_like(getattr(pool, name)) for name in ("w_gate", "w_up", "w_down", "expert_bias")}
    hits = torch.zeros(pool.pool_size)
    for slot, (weights, bias) in enumerate(zip(expert_weights, biases)):
        idx = pool.indices(slot)
        for name, value in weights.items():
            sums[name].index_add_(0, idx, value.to(sums[name].dtype))
        sums["expert_bias"].index_add_(0, idx, bias.float())
        hits.index_add_(0, idx, torch.ones(len(idx)))
    return {name: v / hits.view(-1, *[1] * (v.ndim - 1)) for name, v in sums.items()}


def convert_moe_to_moue(model, stride: int | None = None, pool_size: int | None = None):
    """A MoUE copy of a trained ``ffn='moe'`` model (VideoAR-style: ``config``, ``blocks``,
    ``from_config``).  stride None = moe_experts and pool None = layers x experts: the copy computes
    exactly what the MoE does (no sharing yet; continued training starts from there).  A smaller
    stride shares experts between neighbouring layers, each pool expert the mean of its sources."""
    cfg = {k: v for k, v in model.config.items() if not k.startswith("_")}  # diffusers' bookkeeping keys
    if cfg.get("ffn") != "moe":
        raise ValueError(f"convert to MoUE: the model has ffn={cfg.get('ffn')!r}; it must be 'moe'")
    sparse = [(i, b.mlp) for i, b in enumerate(model.blocks) if isinstance(b.mlp, SparseMoE)]
    E = cfg["moe_experts"]
    stride = stride or E
    new = type(model).from_config({**cfg, "ffn": "moue", "moue_stride": stride,
                                   "moue_pool": pool_size or stride * len(sparse)})
    state = {k: v for k, v in model.state_dict().items()
             if not k.endswith((".mlp.w_gate", ".mlp.w_up", ".mlp.w_down", ".mlp.expert_bias"))}
    weights = [{n: getattr(m, n).detach() for n in ("w_gate", "w_up", "w_down")} for _, m in sparse]
    pool = pool_state_from_moe(weights, [m.expert_bias for _, m in sparse], new.universal_pool)
    state.update({f"universal_pool.{k}": v for k, v in pool.items()})
    traj = {k: v for k, v in new.state_dict().items() if ".traj_" in k}  # fresh trajectory (traj_in = 0)
    new.load_state_dict({**state, **traj}, strict=True)
    return new
