"""Sparse FFN for the shared :class:`~mmgen.nn.layers.Block`: fine-grained routed experts plus
always-on shared experts (DeepSeekMoE / ERNIE 5.0).

Routing (DeepSeek-V3, ERNIE 5.0): affinity ``s = sigmoid(router(x))`` from the token alone (so
text and visual tokens share one pool); the top-k experts are chosen on ``s + bias`` but weighted
by the UNBIASED ``s`` renormalised over the chosen k.  ``expert_bias`` is a buffer outside
autograd, moved after each optimiser step by :func:`update_routing_bias` (loss-free balancing).
Dispatch is dropless: every (token, expert) pair is computed.  Two expert kernels give the same
numbers: torch's grouped GEMM where the device/dtype/shape has one (probed by a real call) and a
per-expert loop (the reference).

Elastic sub-models (ERNIE 5.0) set ``active_top_k`` / ``active_experts`` on the layers through
:func:`set_submodel`; routing counts for balancing are taken from full-model forwards only.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

KERNELS = ("auto", "grouped", "loop")
FFNS = ("dense", "moe", "mohd", "moue")
BIAS_SCHEDULES = ("constant", "cosine", "exp")
BIAS_RATE_END = 1e-4  # moe_bias_schedule "exp": the rate at the end of the run (ERNIE 5.0's rate)
_GROUPED_OK: dict[tuple, bool] = {}


def grouped_mm_available(device: torch.device, dtype: torch.dtype, k: int, n: int) -> bool:
    """Whether torch's grouped GEMM runs (forward and backward) for [M, k] x [E, k, n] here.

    Probed once per (device type, dtype, k, n) by a tiny real call: support depends on the torch
    build, the device (CPU kernels since torch 2.11), the dtype and 16-byte stride alignment."""
    key = (torch.device(device).type, dtype, k, n)
    if key not in _GROUPED_OK:
        fn = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
        ok = fn is not None
        if ok:
            try:
                a = torch.zeros(4, k, device=device, dtype=dtype, requires_grad=True)
                b = torch.zeros(2, k, n, device=device, dtype=dtype, requires_grad=True)
                offs = torch.tensor([1, 4], device=device, dtype=torch.int32)
                fn(a, b, offs=offs).backward(torch.ones(4, n, device=device, dtype=dtype))
            except (RuntimeError, TypeError, NotImplementedError):
                ok = False
        _GROUPED_OK[key] = ok
    return _GROUPED_OK[key]


def expert_matmul(x: torch.Tensor, w: torch.Tensor, counts: list[int], kernel: str) -> torch.Tensor:
    """Rows of ``x`` [M, K] sorted by expert (``counts[e]`` rows for expert e) times ``w[e]`` [K, N]."""
    if kernel == "grouped" or (kernel == "auto" and grouped_mm_available(x.device, x.dtype, w.shape[1], w.shape[2])):
        fn = getattr(F, "grouped_mm", None) or torch._grouped_mm
        offs = torch.tensor(counts, device=x.device).cumsum(0).to(torch.int32)
        return fn(x, w.to(x.dtype), offs=offs)
    parts = [xe @ w[e].to(x.dtype) for e, xe in enumerate(x.split(counts)) if xe.shape[0]]
    return torch.cat(parts) if parts else x.new_zeros(0, w.shape[2])


def default_expert_hidden(dense_hidden: int, top_k: int, n_shared: int) -> int:
    """Expert hidden size whose top_k + n_shared active experts match a dense SwiGLU (rounded up to 8)."""
    return 8 * math.ceil(dense_hidden / (top_k + n_shared) / 8)


def max_violation(counts: torch.Tensor) -> float:
    """MaxVio = max load / mean load - 1 (0 = perfectly balanced)."""
    counts = counts.float()
    return float(counts.max() / counts.mean().clamp_min(1e-9) - 1)


class SparseMoE(nn.Module):
    """Routed SwiGLU experts (``n_experts`` of hidden ``expert_hidden``, ``top_k`` per token) plus
    ``n_shared`` always-on experts fused into one SwiGLU.  forward(x [..., C]) -> [..., C].

    expert_hidden None = ceil(dense_hidden / (top_k + n_shared)) rounded up to 8, so the active
    FFN parameters match a dense SwiGLU of ``dense_hidden``; shared_hidden None = n_shared * expert_hidden.
    gate_scale multiplies the routed outputs (MoHD's activation scaling; 1 for a plain MoE).
    bias_rate: step of the loss-free balancing bias (1e-3 DeepSeek-V3, 1e-4 ERNIE 5.0).
    aux_alpha: weight of the optional sequence-wise balance loss (0 = off); read ``aux_loss``.
    """

    def __init__(self, dim: int, n_experts: int, top_k: int, dense_hidden: int, n_shared: int = 1,
                 expert_hidden: int | None = None, bias_rate: float = 1e-3, aux_alpha: float = 0.0,
                 kernel: str = "auto", shared_hidden: int | None = None, gate_scale: float = 1.0):
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"moe_experts must be >= 1, got {n_experts}")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"moe_top_k={top_k} must be in 1..moe_experts={n_experts}")
        if kernel not in KERNELS:
            raise ValueError(f"moe_kernel={kernel!r} must be one of {KERNELS}")
        h = expert_hidden or default_expert_hidden(dense_hidden, top_k, n_shared)
        self.n_experts, self.top_k, self.expert_hidden = n_experts, top_k, h
        self.bias_rate, self.aux_alpha, self.kernel, self.gate_scale = bias_rate, aux_alpha, kernel, gate_scale
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.w_gate = nn.Parameter(torch.empty(n_experts, dim, h))
        self.w_up = nn.Parameter(torch.empty(n_experts, dim, h))
        self.w_down = nn.Parameter(torch.empty(n_experts, h, dim))
        for w in (self.w_gate, self.w_up, self.w_down):
            nn.init.normal_(w, std=0.02)
        from .layers import SwiGLU  # layers imports this module

        shared_hidden = n_shared * h if shared_hidden is None else shared_hidden
        self.shared = SwiGLU(dim, shared_hidden) if shared_hidden else None
        self.register_buffer("expert_bias", torch.zeros(n_experts))
        self.register_buffer("step_counts", torch.zeros(n_experts), persistent=False)
        self.active_top_k: int | None = None  # elastic sparsity
        self.active_experts: torch.Tensor | None = None  # elastic width: bool [n_experts]
        self.in_submodel = False  # any elastic sub-model (a depth one too): no balance counts, no statistics
        self.aux_loss: torch.Tensor | None = None
        self.last_choice: torch.Tensor | None = None  # Long [..., k] of the last forward (statistics)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        w = state_dict.get(prefix + "w_gate")
        if w is not None and tuple(w.shape) != tuple(self.w_gate.shape):
            raise ValueError(f"checkpoint expert layout [experts, dim, hidden] = {list(w.shape)} at {prefix}w_gate "
                             f"differs from the config's {list(self.w_gate.shape)} (moe_experts / moe_expert_hidden)")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(choice Long [N, k], gate weights [N, k], affinities float [N, E]) for tokens x [N, C]."""
        return self._select(self.router(x))

    def _select(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores = torch.sigmoid(logits.float())
        k = self.active_top_k or self.top_k
        pick = scores.detach() + self.expert_bias
        if self.active_experts is not None:
            pick = pick.masked_fill(~self.active_experts, float("-inf"))
        choice = pick.topk(k, dim=-1).indices
        gates = scores.gather(-1, choice)
        return choice, gates / gates.sum(-1, keepdim=True).clamp_min(1e-9), scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        choice, gates, scores = self.route(flat)
        k = choice.shape[-1]
        order = choice.flatten().argsort(stable=True)
        counts = torch.bincount(choice.flatten(), minlength=self.n_experts)
        token = order // k
        xs = flat[token]
        cl = counts.tolist()
        hidden = F.silu(expert_matmul(xs, self.w_gate, cl, self.kernel)) * expert_matmul(xs, self.w_up, cl, self.kernel)
        weight = gates.flatten()[order, None] * self.gate_scale
        ys = expert_matmul(hidden, self.w_down, cl, self.kernel) * weight.to(x.dtype)
        out = torch.zeros_like(flat).index_add_(0, token, ys)
        if self.shared is not None:
            out = out + self.shared(flat)
        if not self.in_submodel:  # statistics of the full model only
            if self.training and torch.is_grad_enabled():
                self._count(counts)
            self.last_choice = choice.detach().reshape(*shape[:-1], k)
        self.aux_loss = self._sequence_aux_loss(scores, choice, shape) if self.aux_alpha > 0 and self.training else None
        return out.reshape(shape)

    def _count(self, counts: torch.Tensor) -> None:
        self.step_counts += counts.to(self.step_counts.dtype)

    def _sequence_aux_loss(self, scores: torch.Tensor, choice: torch.Tensor, shape) -> torch.Tensor:
        """DeepSeek-V3's sequence-wise balance loss alpha * sum_i f_i P_i, averaged over sequences."""
        E, k = self.n_experts, choice.shape[-1]
        seq = scores.reshape(-1, shape[-2], E) if len(shape) > 2 else scores[None]
        chosen = torch.zeros_like(scores).scatter_(-1, choice, 1.0).reshape(seq.shape)
        f = chosen.mean(1) * E / k
        p = (seq / seq.sum(-1, keepdim=True)).mean(1)
        return self.aux_alpha * (f * p).sum(-1).mean()


def sparse_ffn_kwargs(config, dense_hidden: int, ffns: tuple[str, ...] = FFNS) -> dict | None:
    """Keyword arguments of the sparse FFN (:class:`SparseMoE`, without dim and dense_hidden) that a
    model config's ``ffn`` / ``moe_*`` / ``mohd_*`` fields ask for; None for a dense FFN.  One home
    for VideoAR and the MLLM's LM; ``ffns`` = the choices the model supports."""
    from .mohd import mohd_kwargs

    c = dict(config)
    for key in ("moe_experts", "moe_top_k", "moe_shared", "moe_dense_layers", "moe_expert_hidden", "mohd_group"):
        if c.get(key) is not None and (isinstance(c[key], bool) or not isinstance(c[key], int)):
            raise ValueError(f"{key}={c[key]!r} must be an integer: set it in the config YAML (a dotted "
                             f"command-line value inside a dict field such as --model.generator.{key} stays a string)")
    ffn = c.get("ffn", "dense")
    if ffn not in ffns:
        raise ValueError(f"ffn={ffn!r} must be one of {ffns}")
    schedule = c.get("moe_bias_schedule", "constant")
    if schedule not in BIAS_SCHEDULES:
        raise ValueError(f"moe_bias_schedule={schedule!r} must be one of {BIAS_SCHEDULES}")
    end = c.get("moe_bias_rate_end", BIAS_RATE_END)
    if schedule == "exp" and not 0 < end <= c.get("moe_bias_rate", 1e-3):
        raise ValueError(f"moe_bias_rate_end={end} must be in (0, moe_bias_rate={c.get('moe_bias_rate', 1e-3)}] "
                         f"for moe_bias_schedule='exp'")
    if ffn == "dense":
        return None
    if ffn == "mohd":
        shape = mohd_kwargs(dense_hidden, c.get("mohd_expansion", 2.0), c.get("mohd_shared_fraction", 0.5),
                            c.get("mohd_group", 32))
    else:
        shape = dict(n_experts=c.get("moe_experts", 8), top_k=c.get("moe_top_k", 2), n_shared=c.get("moe_shared", 1),
                     expert_hidden=c.get("moe_expert_hidden"))
    return dict(shape, bias_rate=c.get("moe_bias_rate", 1e-3), aux_alpha=c.get("moe_aux_alpha", 0.0),
                kernel=c.get("moe_kernel", "auto"))


def _ffn_shapes(named) -> dict[str, tuple]:
    shapes = {k: tuple(shape) for k, shape in named if ".mlp." in k or k.startswith("universal_pool.")}
    # checkpoints from before the fused SwiGLU projection hold gate/up separately (upgraded on load)
    for gate in [k for k in shapes if k.endswith("gate_proj.weight")]:
        up = gate.replace("gate_proj.weight", "up_proj.weight")
        if up in shapes:
            g, u = shapes.pop(gate), shapes.pop(up)
            shapes[gate.replace("gate_proj.weight", "gate_up_proj.weight")] = (g[0] + u[0], *g[1:])
    return shapes


def check_ffn_layout(model: nn.Module, state: dict, folder: Path) -> None:
    """ValueError naming the config fields when the FFN tensors of a saved ``state`` (read from
    ``folder``) do not match the layout ``model`` was built with from the same folder's config."""
    saved = _ffn_shapes((k, v.shape) for k, v in state.items())
    expected = _ffn_shapes((k, v.shape) for k, v in model.state_dict().items())
    config = model.config
    if saved == expected:
        return
    odd = sorted(set(saved) ^ set(expected))
    if odd:
        key = odd[0]
        fields = "ffn / moe_dense_layers / moe_shared (dense vs sparse layers, shared experts)"
    else:
        key = next(k for k in saved if saved[k] != expected[k])
        fields = "moe_experts / moue_pool (expert count) or moe_expert_hidden / mohd_* (expert size)"
    raise ValueError(f"{folder}: the checkpoint's expert layout differs from its config at {key} (saved "
                     f"{list(saved.get(key, []))}, config {config.get('ffn', 'dense')!r} expects "
                     f"{list(expected.get(key, []))}); fix the config fields {fields}")


def active_ffn_macs(dim: int, n_experts: int, top_k: int, dense_hidden: int, n_shared: int = 1,
                    expert_hidden: int | None = None, shared_hidden: int | None = None, **_) -> int:
    """Multiply-adds per token of a SparseMoE built with these arguments: active experts, shared
    part and router."""
    h = expert_hidden or default_expert_hidden(dense_hidden, top_k, n_shared)
    shared = n_shared * h if shared_hidden is None else shared_hidden
    return 3 * dim * (top_k * h + shared) + dim * n_experts


def moe_layers(module: nn.Module) -> list[SparseMoE]:
    return [m for m in module.modules() if isinstance(m, SparseMoE)]


@torch.no_grad()
def update_routing_bias(module: nn.Module, rate_scale: float = 1.0) -> list[torch.Tensor] | None:
    """After an optimiser step: all-reduce each layer's counts of that step over processes, move
    the bias by ``rate_scale * bias_rate * sign(mean load - load)``, clear the counts.  Returns the
    step's counts per bias owner (an MoE layer or a MoUE pool); None without sparse FFNs."""
    # owners of a balancing bias: each SparseMoE, or one universal pool (MoUE) for all its layers
    layers = [m for m in module.modules() if "step_counts" in m._buffers]
    if not layers:
        return None
    counts = torch.cat([m.step_counts for m in layers])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    counts = counts.split([m.step_counts.numel() for m in layers])
    for m, c in zip(layers, counts):
        load = c / m.exposure if hasattr(m, "exposure") else c  # MoUE: per layer that can reach the expert
        if c.sum() > 0:
            m.expert_bias += rate_scale * m.bias_rate * torch.sign(load.mean() - load)
        m.step_counts.zero_()
    return list(counts)


def bias_rate_scale(schedule: str, step: int, total_steps: int | None, end_ratio: float = 1.0) -> float:
    """Factor on ``bias_rate`` at optimiser step ``step`` of ``total_steps``: "constant" 1; "cosine"
    decays from 1 to 0 over the run; "exp" decays geometrically from 1 to ``end_ratio`` (=
    moe_bias_rate_end / moe_bias_rate).  Why decay: the bias must move fast while the router does
    (early), but a constant sign step larger than the gaps between tokens' affinities keeps
    flipping whole groups of tokens between experts (the bias oscillates around the balance)."""
    if schedule == "cosine" and total_steps:
        return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if schedule == "exp" and total_steps:
        return end_ratio ** (min(step, total_steps) / total_steps)
    return 1.0


def balance_step(model: nn.Module, step: int, total_steps: int | None = None) -> float | None:
    """What a training loop calls after every optimiser step (VideoAR's and the MLLM's): the
    loss-free bias update at the rate of the model config's ``moe_bias_schedule``.  Returns the
    step's MaxVio (mean over the bias owners that routed tokens), None when none did."""
    config = dict(getattr(model, "config", {}))
    rate = config.get("moe_bias_rate", 1e-3)
    end_ratio = config.get("moe_bias_rate_end", BIAS_RATE_END) / rate if rate else 1.0
    scale = bias_rate_scale(config.get("moe_bias_schedule", "constant"), step, total_steps, end_ratio)
    counts = [c for c in update_routing_bias(model, scale) or () if c.sum() > 0]
    return sum(map(max_violation, counts)) / len(counts) if counts else None


def aux_loss(module: nn.Module) -> torch.Tensor | None:
    """Sum of the layers' sequence-wise balance losses of the last forward (None when off)."""
    losses = [m.aux_loss for m in moe_layers(module) if m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else None


def set_submodel(module: nn.Module, top_k: int | None = None, experts: torch.Tensor | None = None,
                 depth_only: bool = False) -> None:
    """Elastic sparsity/width on every MoE layer: ``top_k`` (None = each layer's default) and a
    bool mask of usable experts (None = all); ``depth_only``: a shallower sub-model with neither.
    A sub-model's forwards neither count for the bias nor replace the routing statistics."""
    submodel = depth_only or top_k is not None or experts is not None
    for m in moe_layers(module):
        if top_k is not None and not 1 <= top_k <= m.n_experts:
            raise ValueError(f"elastic top_k={top_k} must be in 1..moe_experts={m.n_experts}")
        m.active_top_k = top_k
        m.active_experts = None if experts is None else experts.to(m.expert_bias.device)
        m.in_submodel = submodel
