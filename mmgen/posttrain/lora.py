"""LoRA over any ``nn.Linear`` of our models, with BeamLoRA's per-rank gate, and PEFT export.

    y = base(x) + scaling * B(A(x) * w),   scaling = alpha / r,
    w = softmax(gate / T) * r  (gated, BeamLoRA)   or   w = 1  (plain LoRA)

The gate starts at 0, so w = 1 and a freshly gated adapter equals a plain one. ``B`` starts at
zero, so a new adapter leaves the model's outputs unchanged.

:func:`add_lora` replaces the matching ``nn.Linear`` modules in place by :class:`LoRALinear`
(the base layer is kept as ``.base`` and frozen); :func:`merge_lora` folds the adapters into the
base weights (and :func:`unmerge_lora` takes them out again); :func:`remove_lora` puts plain
``nn.Linear`` modules back (merged). :func:`save_peft_adapter` writes a folder stock ``peft``
loads with ``PeftModel.from_pretrained(model, folder)``: the gate is folded into ``B``.
"""
from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from mmgen.io import atomic_dir

# Every linear layer of a VideoAR block (attention and SwiGLU); in_proj/out_proj are left alone.
DEFAULT_TARGETS = ("blocks.*.attn.q_proj", "blocks.*.attn.k_proj", "blocks.*.attn.v_proj", "blocks.*.attn.o_proj",
                   "blocks.*.mlp.gate_up_proj", "blocks.*.mlp.down_proj")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a low-rank update (optionally gated per rank)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, gated: bool = False,
                 temperature: float = 0.05):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if temperature <= 0:
            raise ValueError(f"gate temperature must be > 0, got {temperature}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha = int(rank), float(alpha if alpha is not None else 2 * rank)
        self.temperature = float(temperature)
        dev, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's default for A
        self.gate = nn.Parameter(torch.zeros(rank, device=dev, dtype=dtype)) if gated else None
        self.merged = False

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def rank_weights(self) -> torch.Tensor:
        """w [r]: softmax(gate / T) * r for a gated adapter, ones otherwise."""
        if self.gate is None:
            return torch.ones(self.rank, device=self.lora_A.device, dtype=self.lora_A.dtype)
        return torch.softmax(self.gate.float() / self.temperature, dim=0).to(self.lora_A.dtype) * self.rank

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to ``base.weight``: scaling * B diag(w) A."""
        return self.scaling * (self.lora_B * self.rank_weights()) @ self.lora_A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        h = nn.functional.linear(x.to(self.lora_A.dtype), self.lora_A) * self.rank_weights()
        return y + self.scaling * nn.functional.linear(h, self.lora_B).to(y.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, gated={self.gate is not None}, merged={self.merged}"


def matching_linears(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the ``nn.Linear`` modules whose qualified name matches one of ``targets``
    (``fnmatch`` patterns, e.g. ``blocks.*.attn.q_proj`` or ``*proj``)."""
    if isinstance(targets, str):
        targets = [targets]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
             and any(fnmatch.fnmatchcase(n, t) for t in targets)]
    if not names:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"LoRA targets {list(targets)} match no nn.Linear of the model; its linear layers are "
                         f"e.g. {linears[:6]} (use fnmatch patterns such as 'blocks.*.attn.q_proj')")
    return names


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def add_lora(model: nn.Module, targets: Sequence[str] = DEFAULT_TARGETS, rank: int = 8, alpha: float | None = None,
             gated: bool = False, temperature: float = 0.05) -> list[str]:
    """Wrap the matching linear layers in :class:`LoRALinear` (in place), freeze everything but
    the adapters, and return the wrapped names."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    names = matching_linears(model, targets)
    model.requires_grad_(False)
    for name in names:
        _set_module(model, name, LoRALinear(model.get_submodule(name), rank, alpha, gated, temperature))
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    for m in lora_modules(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_modules(model).values():
        m.unmerge()


def remove_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter and put the plain ``nn.Linear`` back: the architecture is the original."""
    for name, m in lora_modules(model).items():
        m.merge()
        _set_module(model, name, m.base)
    return model


# ---------------------------------------------------------------------------------------- PEFT format
def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter weights under PEFT's key names (``base_model.model.<module>.lora_A.weight``), the
    gate folded into B so that PEFT's plain LoRA computes the same update."""
    state = {}
    for name, m in lora_modules(model).items():
        key = f"base_model.model.{name}"
        state[f"{key}.lora_A.weight"] = m.lora_A.detach().float().contiguous().cpu()
        state[f"{key}.lora_B.weight"] = (m.lora_B * m.rank_weights()).detach().float().contiguous().cpu()
    return state


def save_peft_adapter(model: nn.Module, out_dir: str | Path) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (atomically) for stock PEFT."""
    mods = lora_modules(model)
    if not mods:
        raise ValueError("the model has no LoRA adapters to save")
    ranks = {m.rank for m in mods.values()}
    scalings = {m.scaling for m in mods.values()}
    if len(ranks) != 1 or len(scalings) != 1:
        raise ValueError("PEFT export needs one rank and alpha for all adapters")
    if any(m.merged for m in mods.values()):
        raise ValueError("unmerge the adapters before exporting them (PEFT adds them to the base weights)")
    rank = ranks.pop()
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "revision": None,
        "r": rank, "lora_alpha": next(iter(mods.values())).alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": sorted(mods), "fan_in_fan_out": False, "init_lora_weights": True,
        "use_rslora": False, "use_dora": False, "modules_to_save": None, "inference_mode": True,
    }
    with atomic_dir(out_dir) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        save_file(peft_state_dict(model), str(tmp / "adapter_model.safetensors"))
    return Path(out_dir)
