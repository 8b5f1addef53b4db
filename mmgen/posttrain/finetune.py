"""Fine-tune a trained VideoAR pipeline on new clips: full, LoRA, BeamLoRA or APEX.

The clips are encoded once by the pipeline's frozen tokenizer; the loss is the generator's
training loss (:func:`mmgen.ar.training.ar_loss`, teacher forcing, classifier-free-guidance
dropout of the caption). Whatever the method, the result is a plain VideoAR of the original
architecture (adapters merged, APEX operators fused), saved as a pipeline folder that
``mmgen sample`` loads.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmgen.ar.corruption import CorruptionConfig, corrupted_history
from mmgen.ar.training import ar_loss

from .apex import APEX, APEXConfig
from .beamlora import BeamLoRA, BeamLoRAConfig
from .lora import DEFAULT_TARGETS, add_lora, remove_lora, save_peft_adapter

METHODS = ("full", "lora", "beamlora", "apex")
DEFAULT_LR = {"full": 3e-4, "lora": 2e-3, "beamlora": 2e-3, "apex": 2e-3}


@dataclass
class FinetuneConfig:
    method: str = "lora"
    steps: int = 200
    batch_size: int = 8
    lr: float | None = None  # None = DEFAULT_LR[method]
    warmup_steps: int = 10
    cond_dropout: float = 0.1  # keep the unconditional branch (CFG) alive
    seed: int = 0
    rank: int = 8
    alpha: float | None = None  # None = 2 * rank
    targets: tuple[str, ...] = DEFAULT_TARGETS
    temperature: float = 0.05  # BeamLoRA gate softmax temperature (0.03 for lr < 1e-4)
    beam: BeamLoRAConfig = field(default_factory=BeamLoRAConfig)
    apex: APEXConfig = field(default_factory=APEXConfig)
    apex_stages: int = 2  # vote / expand / fuse rounds over the run
    apex_record_batches: int = 4  # batches of votes before each stage

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown fine-tuning method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.method == "apex" and not 1 <= self.apex_stages <= self.steps:
            raise ValueError(f"apex_stages must be in 1..steps, got {self.apex_stages}")


@torch.no_grad()
def encode_clips(tokenizer, dataset, batch_size: int = 16) -> tuple[torch.Tensor, list[str]]:
    """(latents [N, d, t, h, w], captions) of every item of a video dataset."""
    latents, captions = [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        latents.append(tokenizer.encode(torch.stack([it["video"] for it in items]).to(tokenizer.device).float()).cpu())
        captions += [it["caption"] for it in items]
    if not latents:
        raise ValueError("no clips to fine-tune on (the dataset is empty)")
    return torch.cat(latents), captions


def teacher_forced_loss(model, quantizer, z: torch.Tensor, captions: list[str], cond_dropout: float = 0.0,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator's training loss on latents ``z`` (no history corruption)."""
    targets, used = corrupted_history(quantizer, z.to(model.device), CorruptionConfig(enabled=False))
    tokens = model.condition_tokens(captions)
    if cond_dropout > 0:
        drop = torch.rand(tokens.shape[0], generator=generator) < cond_dropout
        tokens = torch.where(drop[:, None].to(tokens.device), model.null_condition(tokens.shape[0]), tokens)
    return ar_loss(model(tokens, quantizer.next_scale_inputs(used)), targets, model)


def _schedule(cfg: FinetuneConfig, offset: int = 0) -> Callable[[int], float]:
    """Linear warm-up then cosine to 0 over the run; ``offset`` = steps already done."""
    def f(step: int) -> float:
        step += offset
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))))
    return f


class Finetuner:
    """Owns the method's set-up, the optimiser and the loop; :meth:`run` returns the history."""

    def __init__(self, model, quantizer, cfg: FinetuneConfig, log: Callable[[str], None] = print):
        self.model, self.q, self.cfg, self.log = model, quantizer, cfg, log
        self.beam: BeamLoRA | None = None
        self.apex: APEX | None = None
        self.trainable = 0

    def _params(self) -> list[torch.nn.Parameter]:
        c, m = self.cfg, self.model
        if c.method == "full":
            m.requires_grad_(True)
        elif c.method in ("lora", "beamlora"):
            add_lora(m, c.targets, c.rank, c.alpha, gated=c.method == "beamlora", temperature=c.temperature)
        return [p for p in m.parameters() if p.requires_grad]

    def _optimizer(self, params, offset: int = 0) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        lr = self.cfg.lr if self.cfg.lr is not None else DEFAULT_LR[self.cfg.method]
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, _schedule(self.cfg, offset))

    def run(self, latents: torch.Tensor, captions: list[str]) -> dict:
        c = self.cfg
        torch.manual_seed(c.seed)
        gen = torch.Generator().manual_seed(c.seed)
        self.model.train()
        history = {"loss": [], "acc": []}
        stage_ends = ([round((i + 1) * c.steps / c.apex_stages) for i in range(c.apex_stages)]
                      if c.method == "apex" else [c.steps])
        if c.method == "apex":
            self.apex = APEX(self.model, c.apex)
            self.trainable = self.apex.trainable_count()
            opt = sched = None
        else:
            params = self._params()
            self.trainable = sum(p.numel() for p in params)
            opt, sched = self._optimizer(params)
            if c.method == "beamlora":
                self.beam = BeamLoRA(self.model, opt, c.steps, c.beam)
        t0 = time.time()
        for step in range(c.steps):
            if self.apex is not None and (step == 0 or step in stage_ends[:-1]):
                opt, sched = self._apex_stage(latents, captions, gen, step)
            idx = torch.randint(len(latents), (c.batch_size,), generator=gen)
            loss, acc = teacher_forced_loss(self.model, self.q, latents[idx], [captions[i] for i in idx],
                                            c.cond_dropout, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss became {loss.item()} at step {step}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            sched.step()
            if self.beam is not None:
                self.beam.after_step(step + 1)
            if self.apex is not None and step + 1 in stage_ends:
                self.apex.fuse()
            history["loss"].append(loss.item())
            history["acc"].append(acc.item())
            if (step + 1) % max(1, c.steps // 10) == 0 or step + 1 == c.steps:
                self.log(f"step {step + 1}/{c.steps} loss {loss.item():.4f} bit-acc {acc.item():.3f} "
                         f"({time.time() - t0:.0f} s)")
        self.model.eval()
        history["trainable_parameters"] = self.trainable
        if self.beam is not None:
            history["beamlora_rounds"] = self.beam.history
        return history

    def _apex_stage(self, latents, captions, gen, step):
        with torch.no_grad(), self.apex.record():
            for _ in range(self.cfg.apex_record_batches):
                idx = torch.randint(len(latents), (self.cfg.batch_size,), generator=gen)
                teacher_forced_loss(self.model, self.q, latents[idx], [captions[i] for i in idx])
        return self._optimizer(self.apex.attach(), offset=step)  # a stage continues the run's schedule

    def finish(self, adapter_dir: str | Path | None = None) -> None:
        """Export the PEFT adapter (LoRA methods) and merge: the model is a plain VideoAR again."""
        if self.cfg.method in ("lora", "beamlora"):
            if adapter_dir is not None:
                save_peft_adapter(self.model, adapter_dir)
            remove_lora(self.model)
