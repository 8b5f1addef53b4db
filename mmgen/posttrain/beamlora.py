"""BeamLoRA: prune the least important LoRA ranks across all modules and re-grow them from the best.

Every adapter is a gated :class:`~mmgen.posttrain.lora.LoRALinear`; a rank's importance is its
weight ``softmax(gate / T)[i] * r``, so each module's importances sum to ``r``. Every
``interval`` optimiser steps (never inside the last window of training):

* rank all ranks of all modules together (global ranking); walking down from the most
  important, the ranks after the point where the running sum exceeds ``p * n_modules * r`` are
  pruned; ``p`` follows a cosine from ``p_start`` to ``p_end`` by ``p_end_fraction`` of training
  (fewer prunes as training goes on);
* each module refills its pruned slots from its own top ranks (the k-th pruned slot from the
  k-th best kept rank), copying A's row and B's column from a snapshot taken ``interval // 2``
  steps earlier; the source's and the destination's gates are both set to their mean;
* optimiser state (Adam): the gates' moments are reset (``reset_gate_state``); the A/B moments
  of a refilled slot are copied from its source when ``copy_ab_moments`` (the authors' code tries
  to and, indexing with a boolean mask, copies into a temporary: in effect it keeps the slot's
  old moments, which is ``copy_ab_moments=False``).

The number of ranks per module never changes (the tensors keep their shapes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .lora import LoRALinear, lora_modules


@dataclass
class BeamLoRAConfig:
    interval: int = 100  # T: steps between prune/expand rounds (3000 at 7B)
    p_start: float = 0.95
    p_end: float = 1.0
    p_end_fraction: float = 2 / 3  # p reaches p_end at this fraction of training
    reset_gate_state: bool = True
    copy_ab_moments: bool = False

    def __post_init__(self):
        if self.interval < 2:
            raise ValueError(f"BeamLoRA interval must be >= 2 steps, got {self.interval}")
        if not 0 < self.p_start <= self.p_end <= 1:
            raise ValueError(f"BeamLoRA needs 0 < p_start <= p_end <= 1, got {self.p_start}, {self.p_end}")


class BeamLoRA:
    """Drives prune/expand rounds; call :meth:`after_step` after every optimiser step."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, total_steps: int,
                 config: BeamLoRAConfig | None = None):
        self.cfg = config or BeamLoRAConfig()
        self.modules: dict[str, LoRALinear] = lora_modules(model)
        if not self.modules or any(m.gate is None for m in self.modules.values()):
            raise ValueError("BeamLoRA needs gated LoRA adapters (add_lora(..., gated=True))")
        self.optimizer, self.total_steps = optimizer, int(total_steps)
        self.snapshot: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.history: list[dict] = []  # one entry per round: step, p, pruned per module

    def threshold(self, step: int) -> float:
        c = self.cfg
        progress = min(1.0, step / max(1.0, c.p_end_fraction * self.total_steps))
        return c.p_end - (c.p_end - c.p_start) * 0.5 * (1 + math.cos(math.pi * progress))

    def after_step(self, step: int) -> None:
        """``step`` = optimiser steps done so far."""
        T = self.cfg.interval
        if step % T == T // 2:
            self.snapshot = {n: (m.lora_A.detach().clone(), m.lora_B.detach().clone()) for n, m in self.modules.items()}
        elif step % T == 0 and step > 0 and step + T <= self.total_steps and self.snapshot is not None:
            self.prune_and_expand(step)

    def importances(self) -> dict[str, torch.Tensor]:
        return {n: m.rank_weights().detach().float() for n, m in self.modules.items()}

    def pruned_ranks(self, p: float) -> dict[str, list[int]]:
        """Global ranking: the ranks past the point where the sorted running sum exceeds p * total."""
        imp = self.importances()
        names = list(imp)
        flat = torch.cat([imp[n] for n in names])
        owner = torch.cat([torch.full_like(imp[n], i, dtype=torch.long) for i, n in enumerate(names)])
        slot = torch.cat([torch.arange(len(imp[n])) for n in names])
        order = torch.argsort(flat, descending=True, stable=True)
        csum = torch.cumsum(flat[order], 0)
        cut = p * float(flat.sum())
        drop = order[torch.cat([torch.zeros(1, dtype=torch.bool), csum[:-1] > cut + 1e-6])]
        out: dict[str, list[int]] = {}
        for j in drop.tolist():
            out.setdefault(names[int(owner[j])], []).append(int(slot[j]))
        return out

    @torch.no_grad()
    def prune_and_expand(self, step: int) -> dict[str, list[int]]:
        p = self.threshold(step)
        pruned = self.pruned_ranks(p)
        for name, dst_slots in pruned.items():
            m = self.modules[name]
            a_old, b_old = self.snapshot[name]
            imp = m.rank_weights().detach().float()
            kept = [int(i) for i in torch.argsort(imp, descending=True, stable=True) if int(i) not in dst_slots]
            if not kept:  # every rank of the module was pruned: nothing to grow from
                continue
            for k, dst in enumerate(dst_slots):
                src = kept[k % len(kept)]
                m.lora_A[dst] = a_old[src]
                m.lora_B[:, dst] = b_old[:, src]
                mean = (m.gate[src] + m.gate[dst]) / 2
                m.gate[src] = mean
                m.gate[dst] = mean
                if self.cfg.copy_ab_moments:
                    self._copy_moments(m, src, dst)
            if self.cfg.reset_gate_state:
                for v in self.optimizer.state.get(m.gate, {}).values():
                    if torch.is_tensor(v) and v.shape == m.gate.shape:
                        v.zero_()
        self.history.append({"step": step, "p": p, "pruned": {n: len(s) for n, s in pruned.items()}})
        return pruned

    def _copy_moments(self, m: LoRALinear, src: int, dst: int) -> None:
        for param, rows in ((m.lora_A, True), (m.lora_B, False)):
            for v in self.optimizer.state.get(param, {}).values():
                if torch.is_tensor(v) and v.shape == param.shape:
                    if rows:
                        v[dst] = v[src]
                    else:
                        v[:, dst] = v[:, src]
