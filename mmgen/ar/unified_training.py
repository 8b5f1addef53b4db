"""Training of the unified model: ARModule with both directions in every batch.

``mmgen ar fit-unified --config configs/generator/unified.yaml`` (LightningCLI, the same keys as
``mmgen ar fit`` plus the arguments below) over :class:`mmgen.data.unified.UnifiedLatents` rows.
One forward per batch: every row is ``[prefix | video | text]``; generation rows carry the
visual loss (their text is padding), understanding rows the text loss (their prefix is the null
prompt; their video is the clean clip, every group its own content: :func:`video_inputs`, or,
with the generator's ``understand_input="latent"``, the continuous latent the cache holds, which
the model reads through its own projection). Corruption, Random Frame Mask, CFG dropout, EMA, the
optimiser and export are ARModule's.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .training import ARModule
from .unified import MTP_WEIGHTS, scale_weights, text_loss, text_sequences, video_inputs, visual_loss


class UnifiedModule(ARModule):
    """ARModule for a unified VideoAR (generator config ``text_vocab`` set).

    Extra args:
      text_weight: weight of the text loss against the visual loss.
      mtp_weights: loss weights of the generator's ``mtp_heads`` (ERNIE 5.0: 0.3, then 0.1).
      scale_alpha: early-scale emphasis of the visual loss (:func:`mmgen.ar.unified.scale_weights`;
        0 = every visual token alike, as ARModule).
    The mix of directions is the data's (UnifiedLatents understand_ratio / question_ratio).
    """

    def __init__(self, *args, text_weight: float = 1.0, mtp_weights: Sequence[float] = MTP_WEIGHTS,
                 scale_alpha: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if self.model.words is None or self.model.config.head != "bits":
            raise ValueError("UnifiedModule trains a unified VideoAR: set generator.text_vocab "
                             "(mmgen.data.unified.grammar_words()) with the bits head")
        if self.hparams.reveal_p:
            raise ValueError("UnifiedModule does not train partial reveal (reveal_p); use ARModule")

    def losses(self, batch: dict, train: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(visual loss, text loss, bit accuracy, next-word accuracy) of one batch of both directions;
        the text loss is not yet weighted by ``text_weight``."""
        model = self.model
        z, targets, inputs, cond, keep = self._inputs(batch, train)
        understand = torch.tensor([bool(a) for a in batch["answer"]], device=z.device)
        cond = torch.where(understand[:, None], model.null_condition(len(understand)), cond)
        if understand.any() and model.config.understand_input == "codes":  # the whole clean clip (no corruption)
            q = self.tokenizer.quantizer
            seen = video_inputs(q, q.residual_pass(z)[0])
            rows = understand.view(-1, 1, 1, 1, 1)
            inputs = [torch.where(rows, s, i) for s, i in zip(seen, inputs)]
        text, text_targets = text_sequences(model.words, batch["query"], batch["answer"], model.config.text_len)
        visual, text_logits = model(cond, inputs, keep, text=text, latent=z)
        layout = model.layout(z.shape[2])
        v_loss, acc = visual_loss(visual, layout.flatten_visual(targets), ~understand,
                                  scale_weights(layout, self.hparams.scale_alpha))
        t_loss, t_acc = text_loss(text_logits, text_targets, self.hparams.mtp_weights)
        return v_loss, t_loss, acc, t_acc

    def _step(self, batch: dict, train: bool):
        v_loss, t_loss, acc, t_acc = self.losses(batch, train)
        if train:
            v_loss = v_loss + self._moe_aux_loss()
        self.log(f"{'train' if train else 'val'}/text_acc", t_acc)
        self.log(f"{'train' if train else 'val'}/text_loss", t_loss.detach())
        return v_loss + self.hparams.text_weight * t_loss, acc


def fit_main(argv: list[str]) -> int:
    """``mmgen ar fit-unified``: ``mmgen ar fit`` with :class:`UnifiedModule`."""
    from .cli import _fit

    return _fit(argv, UnifiedModule)
