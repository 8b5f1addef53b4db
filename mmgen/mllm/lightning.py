"""Lightning wrappers: MLLM training on the synthetic VQA set, and TokenSR training.

MLLMModule — next-token cross-entropy on the one-word answer.  Zoom-view augmentation
(``zoom_prob``, default 0.5): a sample gets, appended after its visual tokens, the tokens of
one region seen as a zoomed crop of the high-resolution render (the region holding the
object the question is about, or a random one when there is none and for a share
``zoom_off_target``, default 0.25, of the others), at the same sub-grid positions Blink uses.
The model thereby learns what appended region tokens mean, and — from the off-target share —
to answer about the object the question names even when the appended region does not hold it
(the previous packaged model, trained on target regions only, followed a zoom of the wrong
tile towards the object it showed: 0.530 instead of vanilla's 0.555 on val with the true zoom
of Blink's tile); the
vanilla forward pass (nothing appended) is the baseline every Blink variant is compared to.
Dense auxiliary loss (``aux_weight``): two linear heads on the ViT features predict each
patch's object colour and shape (see :func:`mmgen.mllm.data.patch_labels`); it gives the patch
tokens meaning within a few hundred steps, which a from-scratch model otherwise reaches only
after a long plateau at the answer prior.  The heads live here, not in the model.
LM-side dense loss (``lm_aux_weight``): a linear head on the visual tokens' hidden states at the
input of the first Blink layer predicts each patch's colour, shape and image quadrant.  The
ViT-side loss alone made the ViT tell shapes apart (0.77 per object patch) while the LM still
answered shape and position questions at chance although its question token attended to the
right patch (0.5-0.7 of its attention): the features the question token reads did not carry
shape or place in a form the 4-layer LM picked up within a CPU budget.
Grounding loss (``ground_weight``, layers ``ground_layers`` = Blink's default scan range): for
questions about one object, the negative log of Blink's saliency (last question token's query
against the visual keys, head-mean softmax; :func:`mmgen.mllm.blink.saliency`) at the patch
holding the object's centre.  Without it the model never learned to bind the question's words
to image positions within a CPU budget (2800 steps stayed at the per-question-type answer
prior, ~0.37 on val); with it the model leaves the prior within ~700 steps and the middle
layers attend where the answer is (the target's 2x2 tile is the top tile for ~70-75% of
questions) — the property Blink's saliency-guided scanning assumes of a pretrained MLLM.

TokenSRModule — the MLLM frozen; per Blink layer l, TokenSR_l maps the layer-l hidden states
of a region (full view) to the layer-l hidden states of the same region's zoom tokens (the
prefix [visual; zoom] run through the frozen model).  Loss: mean squared error divided by
the target's mean per-channel variance (scale-free across layers; 1.0 = predicting the mean).  Visual and zoom tokens come before the
question, so their hidden states do not depend on it: only images are needed.
Optional answer-level terms, computed on a student = the frozen model with TokenSR's tokens
appended at Blink layer l (each Blink layer in turn; exactly what Blink computes when it
expands there): ``kd_weight`` — self-distillation KL(teacher || student) over the vocabulary,
teacher = the frozen model answering with the true zoom tokens of the same region appended at
its input (no ground-truth answer: TokenSR learns to make the model behave as if it had seen
the zoomed crop; on by default, weight 1 next to the MSE); ``ce_weight`` — cross-entropy to the
true answer (a task-trained TokenSR, a departure from the paper, kept as a diagnostic; off).
Measured with the packaged model, accuracy on a fine-grained development stream (seed 1, 600
questions) with TokenSR's tokens of the asked-about object's tile appended at layer 1
(``bench/blink_bench.py --diagnose``): vanilla 0.517, interpolation 0.513, MSE only (3000 steps)
0.532, MSE + KD (1500 steps, shipped) 0.565, the true zoomed crop 0.808.  Targets cut from the
model's own 64-px input instead of the high-resolution render (a reachable target: no detail
the model does not receive) fitted no better (relative MSE 0.27 vs 0.30) and gave 0.525.
Those were regions of 2x2 tokens; the packaged TokenSR is trained on 1-token regions (Blink's
default, 4 SR tokens): on 1000 questions of the same stream vanilla 0.508, interpolation 0.519,
TokenSR 0.568, the true zoomed crop 0.727 (region 2's TokenSR on 1-token regions: 0.521).
Regions: the asked-about object's tile with probability ``target_prob``, otherwise the tile
Blink would choose (top saliency tile at the first Blink layer), so TokenSR also sees the
regions it meets at inference.
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mmgen.nn.moe import aux_loss, balance_step
from mmgen.nn.schedule import warmup_cosine_schedule

from .blink import BlinkConfig, concentration, gather_region, region_scores, saliency, super_resolve, tokens_to_grid
from .data import COLORS, NORMAL_SIZES, QUADRANTS, SHAPES, VQADataset
from .model import TinyLlava, zoom_view
from .text import WORD_TO_ID, batch_encode
from .tokensr import TokenSRBank


def target_tiles(model: TinyLlava, bbox: torch.Tensor, region: int, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """Tile index [B] holding the centre of each target bbox (model pixels); random where bbox is -1."""
    gh, gw = model.grid
    p, patch = region, model.config.patch
    n_tiles = (gh // p) * (gw // p)
    cx, cy = (bbox[:, 0] + bbox[:, 2]) / 2, (bbox[:, 1] + bbox[:, 3]) / 2
    r = (cy / patch).long().clamp(0, gh - 1) // p
    c = (cx / patch).long().clamp(0, gw - 1) // p
    tiles = r * (gw // p) + c
    rand = torch.randint(n_tiles, tiles.shape, generator=generator).to(tiles.device)
    return torch.where(bbox[:, 0] >= 0, tiles, rand)


def target_patches(model: TinyLlava, bbox: torch.Tensor) -> torch.Tensor:
    """Index [B] of the visual token (row-major patch) holding the centre of each bbox (model pixels)."""
    gh, gw = model.grid
    patch = model.config.patch
    r = ((bbox[:, 1] + bbox[:, 3]) / 2 / patch).long().clamp(0, gh - 1)
    c = ((bbox[:, 0] + bbox[:, 2]) / 2 / patch).long().clamp(0, gw - 1)
    return r * gw + c


def tile_origin(model: TinyLlava, tiles: torch.Tensor, region: int) -> tuple[torch.Tensor, torch.Tensor]:
    per_row = model.grid[1] // region
    return (tiles // per_row) * region, (tiles % per_row) * region


@torch.no_grad()
def blink_tiles(model: TinyLlava, images: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor, layer: int,
                region: int) -> torch.Tensor:
    """The tile [B] Blink would expand at ``layer``: top saliency tile of the last question token."""
    state = model.prepare(images, ids, lengths)
    for i in range(layer):
        state = model.run_layer(i, state)
    return concentration(region_scores(saliency(*model.query_keys(layer, state)), model.grid, region))[1]


def _dense_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of per-patch logits [B, N, K] against labels Long [B, N]."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


def _answers(answers: list[str], device) -> torch.Tensor:
    return torch.tensor([WORD_TO_ID[a] for a in answers], device=device)


class MLLMModule(L.LightningModule):
    def __init__(self, model_config: dict | None = None, lr: float = 3e-3, weight_decay: float = 0.05,
                 warmup_steps: int = 100, total_steps: int = 1500, zoom_prob: float = 0.5,
                 zoom_off_target: float = 0.25, region: int = 2, factor: int = 2, aux_weight: float = 1.0,
                 ground_weight: float = 1.0, ground_layers: tuple[int, int] = (1, 3), lm_aux_weight: float = 1.0,
                 init: str | None = None):
        """init: a saved MLLM folder whose architecture and weights replace ``model_config`` (continued
        training with a fresh schedule)."""
        super().__init__()
        self.save_hyperparameters()
        if init is not None:
            self.model = TinyLlava.from_pretrained(init, low_cpu_mem_usage=False)
        else:
            self.model = TinyLlava(**(model_config or {}))
        vit_dim = self.model.config.vit_dim
        self.aux_color = torch.nn.Linear(vit_dim, len(COLORS) + 1)
        self.aux_shape = torch.nn.Linear(vit_dim, len(SHAPES) + 1)
        self.lm_aux = torch.nn.Linear(self.model.config.dim, len(COLORS) + 1 + len(SHAPES) + 1 + len(QUADRANTS))

    def _step(self, batch, zoom: bool):
        m, hp = self.model, self.hparams
        ids, lengths = batch_encode(batch["question"], m.config.max_text_len)
        ids, lengths = ids.to(self.device), lengths.to(self.device)
        extra = {}
        if zoom and hp.zoom_prob > 0:
            bbox = batch["target_bbox"].clone()
            bbox[torch.rand(len(bbox)) < hp.zoom_off_target] = -1  # -> a random tile
            tiles = target_tiles(m, bbox, hp.region)
            r0, c0 = tile_origin(m, tiles, hp.region)
            extra = {"extra": zoom_view(m, batch["hires"], r0, c0, hp.region, hp.factor),
                     "extra_pos": m.region_positions(r0, c0, hp.region, hp.factor),
                     "extra_active": torch.rand(len(tiles), device=self.device) < hp.zoom_prob}
        feats = m.vit_features(batch["image"])
        state = m.prepare(batch["image"], ids, lengths, visual=m.projector(feats), **extra)
        start, end = hp.ground_layers
        sal = []
        for i in range(m.num_layers):
            if i == start:
                read = state.h[:, :state.n_visual]  # what the question token reads at the Blink layers
            if hp.ground_weight > 0 and start <= i < end:
                sal.append(saliency(*m.query_keys(i, state)))
            state = m.run_layer(i, state)
        logits = m.readout(state)
        target = _answers(batch["answer"], self.device)
        loss = F.cross_entropy(logits.float(), target)
        bbox = batch["target_bbox"].to(self.device)
        has_target = bbox[:, 0] >= 0
        if sal and bool(has_target.any()):
            patch = target_patches(m, bbox[has_target])
            picked = torch.stack([s[has_target].gather(1, patch[:, None])[:, 0] for s in sal])
            loss = loss + hp.ground_weight * -picked.clamp_min(1e-6).log().mean()
        if hp.aux_weight > 0:
            labels = batch["patch_labels"]
            aux = _dense_ce(self.aux_color(feats), labels[..., 0]) + _dense_ce(self.aux_shape(feats), labels[..., 1])
            loss = loss + hp.aux_weight * aux
        if hp.lm_aux_weight > 0:
            loss = loss + hp.lm_aux_weight * self._lm_aux(read, batch["patch_labels"])
        return loss, (logits.argmax(-1) == target).float().mean()

    def _lm_aux(self, read: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Dense colour / shape / quadrant loss on the visual hidden states [B, N, dim] the question
        token reads (see the module docstring)."""
        nc, ns = len(COLORS) + 1, len(SHAPES) + 1
        gh, gw = self.model.grid
        r, c = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        quadrant = ((r >= gh // 2).long() * 2 + (c >= gw // 2).long()).reshape(-1).to(read.device)
        out = self.lm_aux(read)
        return (_dense_ce(out[..., :nc], labels[..., 0]) + _dense_ce(out[..., nc:nc + ns], labels[..., 1])
                + _dense_ce(out[..., nc + ns:], quadrant.expand(len(read), -1)))

    def training_step(self, batch, batch_idx):
        loss, acc = self._step(batch, zoom=True)
        self.log_dict({"train/loss": loss, "train/acc": acc}, prog_bar=True, batch_size=len(batch["answer"]))
        balance = aux_loss(self.model)  # an MoE LM's optional sequence-wise balance loss
        return loss if balance is None else loss + balance

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        maxvio = balance_step(self.model, self.global_step, self.hparams.total_steps)  # MoE LM: loss-free bias
        if maxvio is not None:
            self.log("route/maxvio", maxvio)

    def validation_step(self, batch, batch_idx):
        loss, acc = self._step(batch, zoom=False)
        self.log_dict({"val/loss": loss, "val/acc": acc}, prog_bar=True, batch_size=len(batch["answer"]))

    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for p in self.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr, betas=(0.9, 0.98))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup_cosine_schedule(opt, hp.warmup_steps, hp.total_steps, 0.05),
                                                   "interval": "step"}}


class TokenSRModule(L.LightningModule):
    def __init__(self, model: TinyLlava, layers: tuple[int, int] = BlinkConfig.layers, region: int = BlinkConfig.region,
                 factor: int = BlinkConfig.factor, hidden: int = 32, lr: float = 2e-3, total_steps: int = 1000, target_prob: float = 0.5,
                 mse_weight: float = 1.0, kd_weight: float = 1.0, ce_weight: float = 0.0):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model.eval().requires_grad_(False)
        self.bank = TokenSRBank(tuple(range(*layers)), model.config.dim, hidden, factor, region)

    def train(self, mode: bool = True):  # the frozen MLLM stays in eval mode
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def tiles(self, batch, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Training regions [B]: the target's tile with probability ``target_prob``, else Blink's choice."""
        m, hp = self.model, self.hparams
        salient = blink_tiles(m, batch["image"], ids, lengths, hp.layers[0], hp.region)
        bbox = batch["target_bbox"].to(salient.device)
        use_target = (bbox[:, 0] >= 0) & (torch.rand(len(bbox), device=salient.device) < hp.target_prob)
        return torch.where(use_target, target_tiles(m, bbox, hp.region), salient)

    @torch.no_grad()
    def pairs(self, batch, tiles: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """{layer: (full-view region tokens [B, C, p, p], zoom-view tokens [B, C, fp, fp])}, both without
        their absolute position embeddings (TokenSR maps content; see :func:`super_resolve`)."""
        m, hp = self.model, self.hparams
        layers = range(*hp.layers)
        r0, c0 = tile_origin(m, tiles, hp.region)
        full = m.hidden_states(m.prepare(batch["image"]), layers)
        zoom = zoom_view(m, batch["hires"], r0, c0, hp.region, hp.factor)
        zstate = m.prepare(batch["image"], extra=zoom, extra_pos=m.region_positions(r0, c0, hp.region, hp.factor))
        zoomed = m.hidden_states(zstate, layers)
        n, fp = zstate.n_visual, hp.region * hp.factor
        cells = tokens_to_grid(m.position_embedding(m.region_positions(r0, c0, hp.region, 1)), hp.region)
        subs = tokens_to_grid(m.position_embedding(m.region_positions(r0, c0, hp.region, hp.factor)), fp)
        out = {}
        for i in layers:
            region, _, _ = gather_region(full[i][:, :n], m.grid, hp.region, tiles)
            tgt = zoomed[i][:, n:n + fp * fp].transpose(1, 2).reshape(len(tiles), -1, fp, fp)
            out[i] = (region - cells, tgt - subs)
        return out

    def student_logits(self, layer: int, images: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
                       tiles: torch.Tensor) -> torch.Tensor:
        """Answer logits with TokenSR_layer's tokens of ``tiles`` appended at ``layer`` (what Blink does
        when it expands there)."""
        m, hp = self.model, self.hparams
        state = m.prepare(images, ids, lengths)
        for i in range(m.num_layers):
            if i == layer:
                region, r0, c0 = gather_region(state.h[:, :state.n_visual], m.grid, hp.region, tiles)
                state = m.set_extra(state, *super_resolve(m, self.bank[layer], region, r0, c0, hp.factor))
            state = m.run_layer(i, state)
        return m.readout(state)

    def _answer_terms(self, batch, ids, lengths, tiles) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(KD to the zoomed view, cross-entropy to the true answer) of the students, each averaged over
        the Blink layers; None where its weight is 0."""
        m, hp = self.model, self.hparams
        if hp.kd_weight <= 0 and hp.ce_weight <= 0:
            return None, None
        teacher = None
        if hp.kd_weight > 0:
            with torch.no_grad():
                r0, c0 = tile_origin(m, tiles, hp.region)
                zoom = zoom_view(m, batch["hires"], r0, c0, hp.region, hp.factor)
                teacher = m(batch["image"], ids, lengths, extra=zoom,
                            extra_pos=m.region_positions(r0, c0, hp.region, hp.factor)).float().log_softmax(-1)
        answers = _answers(batch["answer"], self.device)
        kds, ces = [], []
        for i in range(*hp.layers):
            student = self.student_logits(i, batch["image"], ids, lengths, tiles).float().log_softmax(-1)
            if teacher is not None:
                kds.append(F.kl_div(student, teacher, log_target=True, reduction="batchmean"))
            if hp.ce_weight > 0:
                ces.append(F.nll_loss(student, answers))
        return (torch.stack(kds).mean() if kds else None), (torch.stack(ces).mean() if ces else None)

    def _losses(self, batch):
        """-> (training loss, MSE of TokenSR (relative), MSE of interpolation (relative), KD term or None,
        answer cross-entropy or None)."""
        hp = self.hparams
        ids, lengths = batch_encode(batch["question"], self.model.config.max_text_len)
        ids, lengths = ids.to(self.device), lengths.to(self.device)
        tiles = self.tiles(batch, ids, lengths)
        losses, interp = [], []
        for i, (region, tgt) in self.pairs(batch, tiles).items():
            scale = tgt.var(dim=(0, 2, 3)).mean()  # per-channel variance: the shared offset is not signal
            losses.append(F.mse_loss(self.bank[i](region), tgt) / scale)
            interp.append(F.mse_loss(F.interpolate(region, scale_factor=hp.factor, mode="bilinear",
                                                   align_corners=False), tgt) / scale)
        mse, interp_mse = torch.stack(losses).mean(), torch.stack(interp).mean()
        kd, ce = self._answer_terms(batch, ids, lengths, tiles)
        loss = hp.mse_weight * mse
        if kd is not None:
            loss = loss + hp.kd_weight * kd
        if ce is not None:
            loss = loss + hp.ce_weight * ce
        return loss, mse, interp_mse, kd, ce

    def _log(self, stage: str, batch) -> torch.Tensor:
        loss, mse, interp, kd, ce = self._losses(batch)
        logs = {f"{stage}/rel_mse": mse, f"{stage}/interp_rel_mse": interp}
        for name, value in (("kd", kd), ("ce", ce)):
            if value is not None:
                logs[f"{stage}/{name}"] = value
        self.log_dict(logs, prog_bar=True, batch_size=len(batch["answer"]))
        return loss

    def training_step(self, batch, batch_idx):
        return self._log("train", batch)

    def validation_step(self, batch, batch_idx):
        self._log("val", batch)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.bank.parameters(), lr=self.hparams.lr, weight_decay=0.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup_cosine_schedule(opt, 50, self.hparams.total_steps, 0.05),
                                                   "interval": "step"}}



class VQADataModule(L.LightningDataModule):
    """Train on a large procedural stream (``train_samples`` distinct scenes), validate on ``val``."""

    def __init__(self, train_samples: int = 200_000, val_samples: int = 512, batch_size: int = 32,
                 seed: int = 0, num_workers: int = 0, image_size: int = 64, sizes: tuple[str, ...] = NORMAL_SIZES):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage=None):
        hp = self.hparams
        self.train_set = VQADataset(hp.train_samples, "train", hp.seed, size=hp.image_size, sizes=tuple(hp.sizes))
        self.val_set = VQADataset(hp.val_samples, "val", hp.seed, size=hp.image_size, sizes=tuple(hp.sizes))

    def train_dataloader(self):
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, generator=g,
                          num_workers=self.hparams.num_workers, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=128, num_workers=self.hparams.num_workers)
