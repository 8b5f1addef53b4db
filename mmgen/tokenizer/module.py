"""Lightning module training a :class:`VideoTokenizer` (thin wrapper: losses + optimisers).

Loss = ``l1 * |x - x_rec| + l2 * (x - x_rec)^2 + chroma * (chroma error)^2 + object * (object error)^2
+ commitment + entropy (+ codebook for the index quantizer) + lpips * LPIPS + gan * ramp * hinge_G``.
The object term is the squared error averaged over object pixels only (pixels brighter than any
MovingShapes background, and their 1-pixel ring): 92% of a MovingShapes frame is background, so
under plain MSE a square that comes back with round corners costs almost nothing, and a
tokenizer trained that way loses the shapes a generator must draw. The chroma term
compares each pixel's colour minus its own channel mean: on sparse clips (small objects on black)
plain MSE is dominated by where objects are and how bright, so an autoencoder learns hue last
and for a long time reconstructs every object in the same average colour; weighting chroma
errors up makes it learn colour from the start. The GAN (3D discriminator, hinge loss,
LeCAM regularisation) starts at ``gan_start_step`` and ramps in linearly over
``gan_warmup_steps``; with ``gan_weight = 0`` no discriminator is built. A non-finite loss or
gradient stops training with a message before the optimiser step, so the last checkpoint on
disk is still a good one.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Timer

from mmgen.nn.schedule import warmup_cosine
from mmgen.tokenizer.losses import LPIPS, Discriminator3d, LeCAM, hinge_d_loss, hinge_g_loss
from mmgen.tokenizer.model import VideoTokenizer, config_mismatches
from mmgen.tokenizer.quality import psnr, ssim


def object_mse(x_rec: torch.Tensor, x: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """MSE over the pixels of ``[B, C, T, H, W]`` videos (in [-1, 1]) whose brightest channel
    exceeds ``threshold`` in the target, grown by one pixel so edges count from both sides;
    zero when there is no such pixel."""
    mask = (x.amax(1, keepdim=True) > threshold).float()
    mask = F.max_pool3d(mask, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))
    count = mask.sum() * x.shape[1]
    return (((x_rec - x) ** 2) * mask).sum() / count.clamp_min(1.0)


def chroma_mse(x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MSE between the colours of ``[B, C, ...]`` videos with each pixel's channel mean removed."""
    return F.mse_loss(x_rec - x_rec.mean(1, keepdim=True), x - x.mean(1, keepdim=True))


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN/Inf; raised before the optimiser step so checkpoints stay good."""


class TokenizerModule(L.LightningModule):
    """Train a VideoTokenizer.

    Args:
        tokenizer: VideoTokenizer config (keyword arguments); ``{}`` = the tiny default.
        init_from: optional pretrained folder to start from (its config must match).
        lr, betas, weight_decay, warmup_steps, min_lr_ratio: AdamW with linear warm-up, then
            cosine decay to ``min_lr_ratio * lr`` at the trainer's last step, or, with
            ``schedule="time"``, at the end of ``trainer.max_time`` (for runs bounded by wall
            time, such as the CPU MovingShapes config).
        l1_weight, l2_weight, chroma_weight, object_weight, commitment_weight, entropy_weight,
            codebook_weight: loss weights.
        lpips_weight, lpips_vgg_weights, lpips_lin_weights: perceptual loss from local files.
        gan_weight, gan_start_step, gan_warmup_steps, lecam_weight, disc_channels, disc_lr: GAN.
        grad_clip: max gradient norm (0 disables).
    """

    def __init__(
        self,
        tokenizer: dict[str, Any] | None = None,
        init_from: str | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.05,
        l1_weight: float = 1.0,
        l2_weight: float = 0.0,
        chroma_weight: float = 0.0,
        object_weight: float = 0.0,
        commitment_weight: float = 0.25,
        entropy_weight: float = 0.01,
        codebook_weight: float = 1.0,
        lpips_weight: float = 0.0,
        lpips_vgg_weights: str | None = None,
        lpips_lin_weights: str | None = None,
        gan_weight: float = 0.0,
        gan_start_step: int = 0,
        gan_warmup_steps: int = 1000,
        lecam_weight: float = 0.001,
        disc_channels: int = 32,
        disc_lr: float | None = None,
        grad_clip: float = 1.0,
        schedule: str = "steps",
    ):
        super().__init__()
        if schedule not in ("steps", "time"):
            raise ValueError(f"schedule={schedule!r}: expected 'steps' or 'time'")
        self.save_hyperparameters()
        self.automatic_optimization = False
        if init_from:
            # from_pretrained returns eval mode, which Lightning keeps: the quantizer would
            # then stop tracking its code magnitudes while the encoder moves.
            self.tokenizer = VideoTokenizer.from_pretrained(init_from).train()
            wanted = dict(VideoTokenizer(**(tokenizer or {})).config)
            bad = config_mismatches(dict(self.tokenizer.config), wanted)
            if bad:
                raise ValueError(f"init_from={init_from!r} has a different tokenizer config: " + "; ".join(bad))
        else:
            self.tokenizer = VideoTokenizer(**(tokenizer or {}))
        self.lpips = None
        if lpips_weight > 0:
            if not (lpips_vgg_weights and lpips_lin_weights):
                raise ValueError("lpips_weight > 0 needs lpips_vgg_weights and lpips_lin_weights (local files)")
            self.lpips = LPIPS(lpips_vgg_weights, lpips_lin_weights)
        self.discriminator = Discriminator3d(self.tokenizer.config.in_channels, disc_channels) if gan_weight > 0 else None
        self.lecam = LeCAM() if gan_weight > 0 else None

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        h = self.hparams
        params = [p for n, p in self.named_parameters() if not n.startswith(("discriminator.", "lpips."))]
        opt_g = torch.optim.AdamW(params, lr=h.lr, betas=tuple(h.betas), weight_decay=h.weight_decay)
        sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, self._lr_factor)
        if self.discriminator is None:
            return [opt_g], [sched_g]
        opt_d = torch.optim.AdamW(
            self.discriminator.parameters(), lr=h.disc_lr or h.lr, betas=tuple(h.betas), weight_decay=h.weight_decay
        )
        return [opt_g, opt_d], [sched_g]

    def on_fit_start(self) -> None:
        if self.discriminator is not None and str(self.trainer.precision).startswith("16"):
            raise ValueError("the GAN loss needs precision 32 or bf16-mixed (fp16 loss scaling is not supported)")

    def _lr_factor(self, step: int) -> float:
        h = self.hparams
        progress = 0.0
        if step >= h.warmup_steps and h.schedule == "time":
            progress = self._time_progress()
        elif step >= h.warmup_steps:
            total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else 0
            if total <= h.warmup_steps:
                return 1.0
            progress = (step - h.warmup_steps) / (total - h.warmup_steps)
        return warmup_cosine(step, h.warmup_steps, progress, h.min_lr_ratio)

    def _time_progress(self) -> float:
        """Fraction of ``trainer.max_time`` spent training (Lightning's Timer; survives resume)."""
        timers = [c for c in (self.trainer.callbacks if self.trainer else []) if isinstance(c, Timer)]
        remaining = timers[0].time_remaining("train") if timers else None
        if remaining is None:
            raise ValueError("schedule='time' needs trainer.max_time")
        elapsed = timers[0].time_elapsed("train")
        return elapsed / max(elapsed + remaining, 1e-9)

    def _gan_ramp(self) -> float:
        h = self.hparams
        if self.discriminator is None or self.global_step < h.gan_start_step:
            return 0.0
        return min(1.0, (self.global_step - h.gan_start_step + 1) / max(1, h.gan_warmup_steps))

    def _check_finite(self, value: torch.Tensor, what: str, terms: dict[str, torch.Tensor]) -> None:
        if not torch.isfinite(value):
            shown = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            raise NonFiniteLossError(
                f"non-finite {what} at step {self.global_step} ({shown}); training stopped before "
                "the optimiser step, the last saved checkpoint is intact (lower the lr or check the data)"
            )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        h = self.hparams
        x = batch["video"]
        optimizers = self.optimizers()
        opt_g, opt_d = (optimizers, None) if self.discriminator is None else optimizers
        x_rec, q = self.tokenizer(x)
        terms: dict[str, torch.Tensor] = {"l1": (x_rec - x).abs().mean()}
        if h.l2_weight > 0:
            terms["l2"] = F.mse_loss(x_rec, x)
        if h.chroma_weight > 0:
            terms["chroma"] = chroma_mse(x_rec, x)
        if h.object_weight > 0:
            terms["object"] = object_mse(x_rec, x)
        ramp = self._gan_ramp()
        weights = {"l1": h.l1_weight, "l2": h.l2_weight, "chroma": h.chroma_weight, "object": h.object_weight,
                   "commitment": h.commitment_weight,
                   "entropy": h.entropy_weight, "codebook": h.codebook_weight,
                   "lpips": h.lpips_weight, "gan_g": h.gan_weight * ramp}
        terms.update(q.losses)
        if self.lpips is not None:
            terms["lpips"] = self.lpips(x_rec, x)
        if ramp > 0:
            terms["gan_g"] = hinge_g_loss(self.discriminator(x_rec))
        loss = sum(weights[k] * v for k, v in terms.items())
        self._check_finite(loss, "loss", terms)

        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if h.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.tokenizer.parameters(), h.grad_clip)
            self._check_finite(norm, "gradient norm", terms)
        opt_g.step()
        self.lr_schedulers().step()

        if ramp > 0:
            real, fake = self.discriminator(x), self.discriminator(x_rec.detach())
            d_loss = hinge_d_loss(real, fake) + h.lecam_weight * self.lecam(real, fake)
            self._check_finite(d_loss, "discriminator loss", {"d": d_loss})
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            # Step the raw optimizer: through the Lightning wrapper it would count as a training
            # step, doubling global_step (max_steps, schedules and checkpoints count G steps).
            opt_d.optimizer.step()
            self.log("train/d_loss", d_loss.detach())

        with torch.no_grad():
            p = psnr(x_rec.detach(), x).mean()
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/psnr", p, prog_bar=True)
        for k, v in terms.items():
            self.log(f"train/{k}", v.detach())
        return loss.detach()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = batch["video"]
        x_rec, _ = self.tokenizer(x)
        self.log("val/psnr", psnr(x_rec, x).mean(), prog_bar=True, batch_size=x.shape[0])
        self.log("val/ssim", ssim(x_rec, x).mean(), batch_size=x.shape[0])

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer_config"] = _plain_config(self.tokenizer.config)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("tokenizer_config")
        if saved is None:
            raise ValueError("checkpoint has no 'tokenizer_config': it was not written by mmgen's tokenizer trainer")
        bad = config_mismatches(saved, _plain_config(self.tokenizer.config))
        if bad:
            raise ValueError("checkpoint comes from a different tokenizer config: " + "; ".join(bad))


def _plain_config(config) -> dict:
    out = {}
    for k, v in dict(config).items():
        if k.startswith("_"):
            continue
        out[k] = [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, (list, tuple)) else v
    return out
