"""Lightning module for VideoAR: the frozen tokenizer, corruption, CFG dropout, losses, optimiser.

The model (:class:`~mmgen.ar.model.VideoAR`) stays free of training code; this wrapper owns

* the frozen tokenizer (encodes videos on the fly, or reads latents from a pre-tokenized cache),
* Cross-Frame Error Correction (:mod:`mmgen.ar.corruption`) and Random Frame Mask,
* classifier-free-guidance dropout of the condition,
* the loss (bitwise BCE, or CE for an index head) and bit accuracy,
* AdamW (fused on CUDA) with linear warm-up and cosine decay, optional EMA weights,
* optional ``torch.compile`` of the blocks and gradient checkpointing,
* sparse FFNs: the sequence-wise balance loss, the loss-free bias update after each optimiser
  step, per-modality routing statistics, and elastic sub-models (one per micro-batch, its loss
  added to the full model's in the same backward),
* a hard stop with a clear message when the loss stops being finite.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import random
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from mmgen.nn.schedule import warmup_cosine_schedule
from mmgen.nn import moe

from .corruption import CorruptionConfig, corrupted_history
from mmgen.data.latents import LatentCache
from .model import VideoAR
from .presets import preset_config

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training loss became NaN/inf; the last good checkpoint is left untouched."""


def load_tokenizer(path: str | None = None, config: dict | None = None):
    """Frozen VideoTokenizer from a save_pretrained directory, or an (untrained) one from a config."""
    from mmgen.tokenizer.model import VideoTokenizer

    if path is not None:
        p = Path(path)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"tokenizer directory {p} has no config.json; train and export a tokenizer "
                                    f"(`mmgen tokenizer fit` then `mmgen tokenizer export`) and pass its folder")
        tok = VideoTokenizer.from_pretrained(str(p))
    else:
        if config is None:
            log.warning("no tokenizer path given: using an UNTRAINED default VideoTokenizer (smoke tests only)")
        tok = VideoTokenizer.from_config(config or {})
    tok.requires_grad_(False)
    return tok.eval()


def ar_loss(logits: torch.Tensor, targets: list[torch.Tensor], model: VideoAR,
            scored: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, accuracy): bitwise BCE and bit accuracy, or CE and token accuracy for an index head;
    ``scored`` (bool [B, L_visual], bit head) leaves out the tokens the model was shown."""
    layout = model.layout(targets[0].shape[1])
    target = layout.flatten_visual(targets)
    if model.config.head == "bits":
        bits01 = (target > 0).to(logits.dtype)
        if scored is None:
            loss = F.binary_cross_entropy_with_logits(logits, bits01)
        else:
            per_token = F.binary_cross_entropy_with_logits(logits, bits01, reduction="none").mean(-1)
            loss = (per_token * scored).sum() / scored.sum().clamp_min(1)
        acc = ((logits > 0) == (target > 0)).float().mean()
    else:
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        acc = (logits.argmax(-1) == target).float().mean()
    return loss, acc


class ARModule(pl.LightningModule):
    """Train a VideoAR generator.

    Args:
      preset: name in mmgen.ar.presets.PRESETS (None = generator gives the full config).
      generator: VideoAR config overrides (or the whole config without a preset).
      tokenizer: folder of a saved VideoTokenizer (save_pretrained); tokenizer_config builds an
        untrained one instead (tests / smoke runs).
      lr, betas, weight_decay, warmup_steps, min_lr_ratio: AdamW + warm-up + cosine to min_lr_ratio*lr
        over the trainer's total steps.  Weight decay applies to matrices only.
      cond_dropout: probability of replacing a sample's condition by the null condition (CFG).
      corruption: CorruptionConfig fields (enabled, p_min, p_max, delta, time_dependent, inherit, self_correct).
      frame_mask_p: Random Frame Mask drop probability per past frame (0 = off; window = generator.frame_window).
      reveal_p: partial reveal (generator ``reveal_scales``): per row and frame, each such scale's group
        is, with this probability, shown a fraction r ~ U(0, 1) of its own tokens' codes (each token
        with probability r), which are left out of the loss; 0 = off. Teaches the passes of
        ``SamplerSettings.reveal_steps``.
      frame_offset_max: half of the training batches keep the plain layout (what a sample of a
        training clip's length sees); the other half start their frames at a random temporal position
        1..frame_offset_max after the prompt (0 = off), so a windowed model meets, in training, the
        prompt-to-frame distances of sampling far more frames than a training clip has.
      ema_decay: keep an EMA copy of the weights (None = off); export prefers it.
      compile_blocks: torch.compile each transformer block.
      fused_adamw: None = fused kernels whenever the parameters live on CUDA.
      init_from: start from the weights of an exported generator folder (a curriculum's next
        stage); its config must match the one built here, but for ``reveal_scales`` (added fresh).
    """

    def __init__(self, preset: str | None = "tiny", generator: dict | None = None, tokenizer: str | None = None,
                 tokenizer_config: dict | None = None, lr: float = 3e-4, betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.05, warmup_steps: int = 100, min_lr_ratio: float = 0.1,
                 cond_dropout: float = 0.1, corruption: dict | None = None, frame_mask_p: float = 0.0,
                 frame_offset_max: int = 0, reveal_p: float = 0.0,
                 ema_decay: float | None = None, compile_blocks: bool = False, fused_adamw: bool | None = None,
                 init_from: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        config = preset_config(preset, **(generator or {})) if preset else dict(generator or {})
        self.model = VideoAR(**config)
        if init_from is not None:
            self._init_from(init_from)
        self.tokenizer = load_tokenizer(tokenizer, tokenizer_config)
        self.model.check_tokenizer(self.tokenizer)
        self.corruption = CorruptionConfig(**(corruption or {}))
        if reveal_p and not self.model.config.reveal_scales:
            raise ValueError("reveal_p needs generator.reveal_scales (the scales to reveal)")
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if ema_decay else None
        self._compiled = False
        self._elastic_rng = random.Random(0)

    def _init_from(self, folder: str) -> None:
        previous = VideoAR.from_pretrained(folder)
        if previous.caption_memory is not None:
            self.model.register_buffer("caption_memory", previous.caption_memory.clone(), persistent=True)
        missing, unexpected = self.model.load_state_dict(previous.state_dict(), strict=False)
        # a stage may add partial reveal to a model trained without it: reveal_proj starts fresh
        new = [k for k in missing if not k.startswith("reveal_proj.")]
        if new or unexpected:
            raise ValueError(f"init_from {folder}: its weights do not fit this generator config "
                             f"(missing {new[:4]}, unexpected {unexpected[:4]}); use the config it was trained with")

    def on_fit_start(self) -> None:
        train_set = getattr(self.trainer.datamodule, "train_set", None)
        cache = train_set if isinstance(train_set, LatentCache) else getattr(train_set, "cache", None)
        if isinstance(cache, LatentCache):
            cache.check_tokenizer(self.tokenizer)
        # Encode the training captions once (stored in a latent cache for later stages and
        # resumes) and record them, so samplers can say how far a prompt is from them.
        captions = getattr(train_set, "captions", None)
        encoder = self.model.text_encoder
        if not captions or encoder is None:
            return
        unique, max_len = sorted(set(captions)), self.model.config.max_text_len
        stored = train_set.load_text_encodings(encoder.sha256, max_len) if isinstance(train_set, LatentCache) else None
        if stored is not None:
            encoder.prime(*stored, max_len)
        elif isinstance(train_set, LatentCache):
            train_set.save_text_encodings(encoder.sha256, max_len, unique, encoder.encode(unique, max_len))
        self.model.remember_captions(unique)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A resumed run restores a caption memory the freshly built model does not have yet.
        memory = checkpoint["state_dict"].get("model.caption_memory")
        if memory is not None:
            self.model.register_buffer("caption_memory", torch.zeros_like(memory), persistent=True)

    # the tokenizer is frozen: keep it in eval mode whatever Lightning asks
    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()
        if self.ema is not None:
            self.ema.eval()
        return self

    def setup(self, stage: str) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        if self.ema is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            raise ValueError("ema_decay is not supported with the FSDP strategy (sharded weights); "
                             "set model.ema_decay: null or use strategy ddp")

    def configure_model(self) -> None:
        if self.hparams.compile_blocks and not self._compiled:
            for block in self.model.blocks:
                block.compile()
            self._compiled = True

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Plain-JSON configs so `mmgen ar export` can rebuild both models without the original
        # tokenizer folder (and load with weights_only=True).
        checkpoint["generator_config"] = json.loads(self.model.to_json_string())
        checkpoint["tokenizer_config"] = json.loads(self.tokenizer.to_json_string())

    # ------------------------------------------------------------------ data -> model inputs
    @torch.no_grad()
    def latents(self, batch: dict) -> torch.Tensor:
        if "latent" in batch:
            return batch["latent"].float()
        with torch.autocast(self.device.type, enabled=False):
            return self.tokenizer.encode(batch["video"].float())

    def condition(self, batch: dict, dropout: float) -> torch.Tensor:
        cond = batch["caption"] if self.model.config.cond == "text" else batch["label"]
        tokens = self.model.condition_tokens(cond)
        if dropout > 0:
            drop = torch.rand(tokens.shape[0], device=tokens.device) < dropout
            drop = drop.view(-1, *([1] * (tokens.ndim - 1)))
            tokens = torch.where(drop, self.model.null_condition(tokens.shape[0]), tokens)
        return tokens

    def _inputs(self, batch: dict, train: bool):
        """(latents, targets, next-scale inputs, condition, Random Frame Mask draw) of a batch; in
        training with corruption, condition dropout and the frame mask."""
        z = self.latents(batch)
        q = self.tokenizer.quantizer
        corruption = self.corruption if train else CorruptionConfig(enabled=False)
        targets, used = corrupted_history(q, z, corruption)
        inputs = q.next_scale_inputs(used)
        cond = self.condition(batch, self.hparams.cond_dropout if train else 0.0)
        keep = None
        if train and self.hparams.frame_mask_p > 0:
            keep = self.model.layout(z.shape[2]).sample_frame_keep(z.shape[0], self.hparams.frame_mask_p)
        return z, targets, inputs, cond, keep

    def _moe_aux_loss(self) -> torch.Tensor | float:
        """The sequence-wise balance loss of this training forward (0 when off), logged."""
        extra = moe.aux_loss(self.model)
        if extra is None:
            return 0.0
        self.log("train/moe_aux", extra)
        return extra

    def _reveal(self, targets: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """A partial-reveal draw (see ``reveal_p``): the revealed codes per scale (0 = not shown)
        and which tokens the loss scores."""
        revealed = [torch.zeros_like(c) for c in targets]
        shown = [torch.zeros(c.shape[:4], dtype=torch.bool, device=c.device) for c in targets]
        for k in self.model.config.reveal_scales:
            B, t, h, w = targets[k].shape[:4]
            rows = torch.rand(B, t, 1, 1, device=targets[k].device) < self.hparams.reveal_p
            fraction = torch.rand(B, t, 1, 1, device=targets[k].device)
            shown[k] = rows & (torch.rand(B, t, h, w, device=targets[k].device) < fraction)
            revealed[k] = torch.where(shown[k].unsqueeze(-1), targets[k], 0.0)
        return revealed, ~self.model.layout(targets[0].shape[1]).flatten_visual(shown)

    def _step(self, batch: dict, train: bool):
        z, targets, inputs, cond, keep = self._inputs(batch, train)
        offset = 0
        if train and self.hparams.frame_offset_max and torch.rand(()) < 0.5:
            offset = int(torch.randint(1, self.hparams.frame_offset_max + 1, ()))
        revealed, scored = self._reveal(targets) if train and self.hparams.reveal_p else (None, None)
        logits = self.model(cond, inputs, keep, offset, revealed=revealed)
        loss, acc = ar_loss(logits, targets, self.model, scored)
        if train:
            loss = loss + self._moe_aux_loss()
            if self.model.elastic is not None:
                loss = loss + self._elastic_loss(cond, inputs, keep, targets)
        return loss, acc

    def _elastic_loss(self, cond, inputs, keep, targets) -> torch.Tensor | float:
        """Loss of one sampled sub-model (ERNIE 5.0 elastic training), weighted; 0 when the draw is the full model."""
        el = self.model.elastic
        n_experts = self.model.sparse_ffn["n_experts"] if self.model.sparse_ffn else 0
        setting = el.sample(self._elastic_rng, n_experts)
        if not setting:
            return 0.0
        mask = None
        if "experts" in setting:  # a random subset in training
            mask = torch.zeros(n_experts, dtype=torch.bool)
            mask[torch.randperm(n_experts)[:setting.pop("experts")]] = True
        try:
            self.model.set_submodel(**setting, expert_mask=mask)
            sub_loss, _ = ar_loss(self.model(cond, inputs, keep), targets, self.model)
        finally:
            self.model.set_submodel()
        self.log("train/elastic_loss", sub_loss)
        return el.weight * sub_loss

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch, batch_idx):
        loss, acc = self._step(batch, train=True)
        if not torch.isfinite(loss):
            ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
            raise NonFiniteLossError(f"training loss became {loss.item()} at step {self.global_step}; stopping. "
                                     f"Last good checkpoint: {ckpt} (not overwritten). Lower the lr or check the data.")
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", acc, prog_bar=True)
        for name, counts in self.model.routing_counts().items():
            self.log(f"route/{name}_maxvio", sum(map(moe.max_violation, counts)) / len(counts))
        return loss

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        total = self.trainer.estimated_stepping_batches
        maxvio = moe.balance_step(self.model, self.global_step, int(total) if math.isfinite(total) else None)
        if maxvio is not None:
            self.log("route/maxvio", maxvio, prog_bar=True)
        # Here, not in on_train_batch_end: Lightning's checkpoint callback runs before that hook,
        # so a checkpoint would hold EMA weights one step behind the model it was saved with.
        self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = self.hparams.ema_decay
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p.detach().to(e.dtype), 1 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)  # copied, not averaged: the routing bias, SGT's loops and kept heads

    def validation_step(self, batch, batch_idx):
        loss, acc = self._step(batch, train=False)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/acc", acc, sync_dist=True)

    def on_before_optimizer_step(self, optimizer) -> None:
        # Once per optimiser step, before the checkpoint of this step is written, so a resumed
        # run continues the SGT schedule exactly (its state is in the model's buffers).
        if self.model.sgt_scheduler is not None:
            layer = self.model.sgt_step(self.global_step, max(1, int(self.trainer.estimated_stepping_batches)))
            if layer is not None:
                heads = self.model.blocks[layer].sgt.kept.tolist()
                log.info("SGT step %d: layer %d starts looping (kept heads %s)", self.global_step, layer, heads)
            self.log("sgt/loops", float(len(self.model.sgt_scheduler.layers)))

    def on_train_end(self) -> None:
        if self.model.sgt_scheduler is not None and self.trainer.is_global_zero:
            from mmgen.io import atomic_path
            from mmgen.nn.sgt import plot_trace

            from .callbacks import LossCurve

            run = LossCurve.run_dir(self.trainer)
            trace = self.model.sgt_scheduler.trace(self.model.sgt_loops())
            with atomic_path(run / "sgt_trace.json") as tmp:
                Path(tmp).write_text(json.dumps(trace, indent=1))
            plot_trace(trace, len(self.model.blocks), self.global_step, run / "sgt_trace.png")

    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        fused = hp.fused_adamw
        if fused is None:
            fused = all(p.is_cuda and type(p.data) is torch.Tensor for p in decay + no_decay)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=hp.lr, betas=tuple(hp.betas), fused=bool(fused))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = warmup_cosine_schedule(opt, hp.warmup_steps, total, hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
