"""Blink: saliency-guided scanning with dynamic visual token resolution, in one forward pass.

For each decoder layer ``l`` in the configured middle range [start, end), before the layer runs:

1. **Saliency.**  Query = the last question token's hidden state through layer l's input
   norm and ``q_proj``; keys = the visual tokens through the same norm and ``k_proj``;
   RoPE applied to both by default (``saliency_rope``) so the scores are the ones the layer
   actually attends with.  Per head: softmax over the *visual* keys of q.k/sqrt(D); heads are
   combined by their **mean** (the paper does not say; mean keeps every head's vote).
   The result is a distribution over the visual tokens.
2. **Regions.**  The visual grid is tiled into non-overlapping ``region x region`` cells and
   the saliency summed per tile.  The concentration ratio rho = top tile / sum of tiles.
3. **Hysteresis.**  Not expanded and rho > tau_exp -> expand the top tile; expanded and
   rho < tau_drop -> drop the appended tokens (the original sequence is restored);
   otherwise keep.  At most one region is expanded at a time, so at most one per layer.
4. **Expansion.**  The tile's hidden states [B, C, p, p] go through that layer's TokenSR
   (or bilinear interpolation: Blink-interp) to (factor*p)^2 tokens, APPENDED after the visual
   tokens ([visual; SR; question]) at sub-grid positions inside the tile (see
   :mod:`mmgen.mllm.model`).  Appended tokens then flow through the following layers like
   any other token until dropped.

Ablations: ``region_choice="random"`` expands a uniformly random tile (same trigger);
``allow_drop=False`` never drops.  With ``tau_exp = inf`` nothing is ever expanded and the
output is bit-identical to the vanilla forward pass (the state is never edited).
Decisions are per sample; a batch whose samples disagree is split into sub-batches (with and
without appended tokens, ``split_batches``) so no sample pays for slots it cannot see.

Blink only decides and edits; the decoder is reached through :class:`BlinkDecoder`.  Our
:class:`~mmgen.mllm.model.TinyLlava` implements it directly; :class:`mmgen.mllm.hf.LlavaDecoder`
implements it for a Hugging Face ``LlavaForConditionalGeneration`` by driving its language model's
decoder layers itself (the fused attention kernel stays on), and :class:`mmgen.mllm.hf.Qwen2VLDecoder` for
``Qwen2VLForConditionalGeneration`` (the same loop with M-RoPE 3-D positions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import nn

from .tokensr import TokenSRBank, interpolate_region


class BlinkDecoder(Protocol):
    """What Blink needs from a decoder (states are opaque except ``h`` [B, L, C], ``grid``, ``n_extra``,
    ``visual_h`` / ``extra_h`` (the visual and appended blocks of ``h``) and ``extra_pos`` (the
    appended block's positions in the decoder's own convention, as ``region_positions`` gives them))."""

    num_layers: int

    def run_layer(self, i: int, state: Any) -> Any: ...

    def query_keys(self, i: int, state: Any, with_rope: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """-> q [B, H, D] of the last question token, k [B, H, Nv, D] of the visual tokens."""

    def set_extra(self, state: Any, extra: torch.Tensor | None, extra_pos: torch.Tensor | None,
                  extra_active: torch.Tensor | None = None) -> Any: ...

    def region_positions(self, r0: torch.Tensor, c0: torch.Tensor, size: int, factor: int) -> torch.Tensor: ...

    def position_embedding(self, pos: torch.Tensor) -> torch.Tensor | float:
        """The additive absolute-position content of tokens at ``pos`` (0 for a RoPE-only decoder)."""

    def readout(self, state: Any) -> torch.Tensor: ...

    def select(self, state: Any, index: torch.Tensor) -> Any:
        """The state of the samples ``index`` (Long [b]) of the batch."""

    def merge(self, states: list[Any]) -> Any:
        """One batch from states with the same layout (e.g. all with the same appended block)."""


@dataclass
class BlinkConfig:
    """layers: [start, end) of the decoder layers Blink scans (the middle two of the default
    4-layer model, as layers 12-18 are for LLaVA-1.5-7B's 32); region: tile side p in tokens;
    factor: upsampling per side; tau_exp / tau_drop: hysteresis thresholds on rho.
    Defaults chosen for the packaged model and its TokenSR, which was trained for them (region 1),
    on a fine-grained development stream (seed 1, 1000 questions, vanilla 0.508; the reported
    tables use seed 0), Blink's answers vs vanilla's with the sign test: region 1 (one token -> 4 SR
    tokens instead of a 2x2 region's 16, whose cost through three of the four layers kept Blink at
    1.16-1.34x vanilla's wall time) with tau_exp = tau_drop = 0.1 expands 98% of the questions and
    drops 2% at layer 2, +37/-9 (p = 4e-5), the lowest p of the dynamic settings tried (0.1/0.1 to
    0.99/0.9: +37/-9 down to +5/-3 as expansion falls from 98% to 59%), picked before the test
    stream was run.  Expanding always (0/0) gave +41/-9: as with region 2 (0/0 +44/-23, no
    dynamic setting below p = 0.067), expanding fewer questions or dropping never added to the
    gain, so the trigger is set low.  TokenSR is not per token (3x3 convolutions over the region):
    the region-2 TokenSR on 1-token regions equals interpolation (0.49 at 94% expansion), so a
    region needs a TokenSR trained at that size (``mmgen vqa fit-tokensr --region``).  The Hugging
    Face decoders take the same thresholds (untuned for them) and their own region (``cli.HF_REGION``).
    mode: "tokensr" | "interp"; region_choice: "saliency" | "random"; allow_drop: False = the no-drop ablation;
    saliency_rope: apply RoPE to q and k before scoring; seed: for region_choice="random";
    split_batches: when some samples of a batch expand or drop at a layer and others do not, run
    them on as sub-batches built from their own samples (at most two: with and without appended
    tokens) instead of one batch with invisible slots for the samples without appended tokens
    (the same answers, less compute: only the expanding samples go through TokenSR; False = the
    single-batch reference path)."""

    layers: tuple[int, int] = (1, 3)
    region: int = 1
    factor: int = 2
    tau_exp: float = 0.1
    tau_drop: float = 0.1
    mode: str = "tokensr"
    region_choice: str = "saliency"
    allow_drop: bool = True
    saliency_rope: bool = True
    seed: int = 0
    split_batches: bool = True

    def __post_init__(self):
        if self.mode not in ("tokensr", "interp"):
            raise ValueError(f"BlinkConfig.mode must be 'tokensr' or 'interp', got {self.mode!r}")
        if self.region_choice not in ("saliency", "random"):
            raise ValueError(f"BlinkConfig.region_choice must be 'saliency' or 'random', got {self.region_choice!r}")
        if self.tau_drop > self.tau_exp:
            raise ValueError(f"tau_drop ({self.tau_drop}) must not exceed tau_exp ({self.tau_exp})")
        if self.region < 1 or self.factor < 1:
            raise ValueError("region and factor must be >= 1")


# --------------------------------------------------------------------------- pure pieces
def saliency(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q [B, H, D], k [B, H, N, D] -> [B, N]: per-head softmax over the N keys, mean over heads."""
    scores = torch.einsum("bhd,bhnd->bhn", q.float(), k.float()) / math.sqrt(q.shape[-1])
    return scores.softmax(-1).mean(1)


def region_scores(sal: torch.Tensor, grid: tuple[int, int], region: int) -> torch.Tensor:
    """Sum saliency [B, gh*gw] over region x region tiles -> [B, (gh/p)*(gw/p)] (row-major tiles)."""
    gh, gw = grid
    if gh % region or gw % region:
        raise ValueError(f"grid {gh}x{gw} is not divisible into {region}x{region} regions")
    B = sal.shape[0]
    tiles = sal.reshape(B, gh // region, region, gw // region, region)
    return tiles.sum((2, 4)).reshape(B, -1)


def concentration(regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (rho [B] = top tile / total, index of the top tile [B])."""
    top, idx = regions.max(-1)
    return top / regions.sum(-1).clamp_min(1e-12), idx


def hysteresis(active: torch.Tensor, rho: torch.Tensor, tau_exp: float, tau_drop: float,
               allow_drop: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer of the expand/drop state machine. -> (active', expand_now, drop_now), all bool [B]."""
    expand = ~active & (rho > tau_exp)
    drop = active & (rho < tau_drop) if allow_drop else torch.zeros_like(active)
    return (active | expand) & ~drop, expand, drop


def gather_region(vis: torch.Tensor, grid: tuple[int, int], region: int, tile: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """vis [B, gh*gw, C], tile index [B] -> (tokens [B, C, p, p], r0 [B], c0 [B]) (top-left cell)."""
    gh, gw = grid
    B, _, C = vis.shape
    per_row = gw // region
    r0, c0 = (tile // per_row) * region, (tile % per_row) * region
    g = vis.reshape(B, gh, gw, C)
    ar = torch.arange(region, device=vis.device)
    rows = (r0[:, None] + ar)[:, :, None].expand(B, region, region)
    cols = (c0[:, None] + ar)[:, None, :].expand(B, region, region)
    out = g[torch.arange(B, device=vis.device)[:, None, None], rows, cols]  # [B, p, p, C]
    return out.permute(0, 3, 1, 2), r0, c0


def super_resolve(decoder, upsample, region: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor,
                  factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A region's tokens [B, C, p, p] (top-left cells r0, c0) -> appended tokens [B, (f p)^2, C] and
    their positions [B, (f p)^2, 3].  ``upsample`` ([B, C, p, p] -> [B, C, fp, fp]) sees the tokens'
    content only: each cell's absolute position embedding is subtracted before and the sub-cells'
    embeddings added after, so the new tokens carry exactly the positions a zoomed view's tokens
    get instead of whatever a translation-invariant convolution makes of its cells' embeddings
    (for a RoPE-only decoder both terms are 0 and this is plain upsampling)."""
    p = region.shape[-1]
    cells = decoder.region_positions(r0, c0, p, 1)
    subs = decoder.region_positions(r0, c0, p, factor)
    content = region - tokens_to_grid(decoder.position_embedding(cells), p)
    return upsample(content).flatten(2).transpose(1, 2) + decoder.position_embedding(subs), subs


def tokens_to_grid(tokens: torch.Tensor | float, p: int) -> torch.Tensor | float:
    """[B, p*p, C] (row-major) -> [B, C, p, p]; a scalar stays as it is."""
    if not torch.is_tensor(tokens):
        return tokens
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, p, p)


@dataclass
class BlinkTrace:
    """Per scanned layer: saliency [B, Nv], rho [B], top tile [B], and whether the sample had
    appended tokens while the layer ran; ``expanded_tiles`` [B] = last expanded tile (-1 none)."""

    layers: list[int] = field(default_factory=list)
    saliency: list[torch.Tensor] = field(default_factory=list)
    rho: list[torch.Tensor] = field(default_factory=list)
    top: list[torch.Tensor] = field(default_factory=list)
    active: list[torch.Tensor] = field(default_factory=list)
    tiles: list[torch.Tensor] = field(default_factory=list)


@dataclass
class _Group:
    """A sub-batch Blink runs together: ``index`` [b] = its samples' rows in the full batch."""

    index: torch.Tensor
    state: Any
    active: torch.Tensor
    tiles: torch.Tensor


def _record(trace: BlinkTrace, layer: int, B: int, scans) -> None:
    """Add one scanned layer to the trace, the groups' values scattered back to batch order.
    scans: per group (parts, index, saliency, rho, top, active', tiles')."""
    def scatter(k: int) -> torch.Tensor:
        values = [scan[k] for scan in scans]
        full = values[0].new_empty((B, *values[0].shape[1:]))
        for scan, v in zip(scans, values):
            full[scan[1]] = v
        return full

    trace.layers.append(layer)
    for k, values in enumerate((trace.saliency, trace.rho, trace.top, trace.active, trace.tiles), start=2):
        values.append(scatter(k))


# --------------------------------------------------------------------------- the runner
class Blink(nn.Module):
    """Runs a :class:`BlinkDecoder` layer by layer with saliency-guided expansion.
    ``tokensr`` (a :class:`TokenSRBank`) is required for mode="tokensr"."""

    def __init__(self, config: BlinkConfig | None = None, tokensr: TokenSRBank | None = None):
        super().__init__()
        self.config = config or BlinkConfig()
        if self.config.mode == "tokensr":
            if tokensr is None:
                raise ValueError("Blink mode 'tokensr' needs trained TokenSR weights "
                                 "(`mmgen vqa fit-tokensr`), or use mode='interp'")
            missing = [i for i in range(*self.config.layers) if i not in tokensr]
            if missing:
                raise ValueError(f"TokenSR weights have no module for Blink layers {missing}")
            trained = tokensr.config.region
            if trained is not None and trained != self.config.region:
                raise ValueError(f"TokenSR weights were trained for region {trained} but BlinkConfig.region is "
                                 f"{self.config.region}: use region {trained}, or train a TokenSR for it "
                                 f"(`mmgen vqa fit-tokensr --region {self.config.region}`)")
            if tokensr.config.factor != self.config.factor:
                raise ValueError(f"TokenSR weights upsample by factor {tokensr.config.factor} but "
                                 f"BlinkConfig.factor is {self.config.factor}")
        self.tokensr = tokensr

    def upsample(self, layer: int, region: torch.Tensor) -> torch.Tensor:
        if self.config.mode == "interp":
            return interpolate_region(region, self.config.factor)
        return self.tokensr[layer](region)

    @torch.no_grad()
    def run(self, decoder: BlinkDecoder, state: Any, trace: BlinkTrace | None = None) -> torch.Tensor:
        """Forward pass from a prepared state (see TinyLlava.prepare) -> readout logits."""
        cfg = self.config
        B, device = state.h.shape[0], state.h.device
        start, end = cfg.layers
        random_tiles = None
        if cfg.region_choice == "random":  # drawn up front: the draws do not depend on how the batch splits
            n_tiles = (state.grid[0] // cfg.region) * (state.grid[1] // cfg.region)
            gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
            random_tiles = torch.randint(n_tiles, (max(end - start, 0), B), generator=gen).to(device)
        groups = [_Group(torch.arange(B, device=device), state, torch.zeros(B, dtype=torch.bool, device=device),
                         torch.full((B,), -1, dtype=torch.long, device=device))]
        for i in range(decoder.num_layers):
            if start <= i < end:
                if trace is None:  # nothing to record: a scan that cannot change any state is skipped
                    todo = [g for g in groups if not self._settled(g)]
                    settled = [g for g in groups if self._settled(g)]
                else:
                    todo, settled = groups, []
                scans = [self._scan(decoder, i, g, None if random_tiles is None else random_tiles[i - start, g.index])
                         for g in todo]
                if trace is not None:
                    _record(trace, i, B, scans)
                groups = [part for parts, *_ in scans for part in parts] + settled
                if cfg.split_batches and len(groups) > 2:
                    groups = self._merge(decoder, groups)
            groups = [replace(g, state=decoder.run_layer(i, g.state)) for g in groups]
        if len(groups) == 1:
            return decoder.readout(groups[0].state)
        outs = [decoder.readout(g.state) for g in groups]
        logits = outs[0].new_empty(B, outs[0].shape[-1])
        for g, out in zip(groups, outs):
            logits[g.index] = out
        return logits

    def _settled(self, g: "_Group") -> bool:
        """No rho can change this group's state: all expanded and no rho is below tau_drop (rho >= 0),
        or none expanded and no rho exceeds tau_exp (rho <= 1)."""
        cfg = self.config
        if bool(g.active.all()):
            return not cfg.allow_drop or cfg.tau_drop <= 0.0
        return not bool(g.active.any()) and cfg.tau_exp >= 1.0

    def _scan(self, decoder, i, g: "_Group", random_top: torch.Tensor | None):
        """Saliency, hysteresis and the edit for one group
        -> (groups that run on, the group's index, saliency, rho, top, active', tiles')."""
        cfg = self.config
        q, k = decoder.query_keys(i, g.state, with_rope=cfg.saliency_rope)
        sal = saliency(q, k)
        rho, top = concentration(region_scores(sal, g.state.grid, cfg.region))
        if random_top is not None:
            top = random_top
        new_active, expand, drop = hysteresis(g.active, rho, cfg.tau_exp, cfg.tau_drop, cfg.allow_drop)
        tiles = torch.where(expand, top, torch.where(new_active, g.tiles, torch.full_like(g.tiles, -1)))
        if not (bool(expand.any()) or bool(drop.any())):
            parts = [_Group(g.index, g.state, new_active, tiles)]
        elif cfg.split_batches:
            parts = self._regroup(decoder, i, g, new_active, expand, drop, top, tiles)
        else:
            parts = [_Group(g.index, self._edit(decoder, i, g.state, new_active, expand, top), new_active, tiles)]
        return parts, g.index, sal, rho, top, new_active, tiles

    def _regroup(self, decoder, i, g: "_Group", new_active, expand, drop, top, tiles) -> list["_Group"]:
        """The edit with ``split_batches``: samples expanding now, dropping now and unchanged run on
        as separate sub-batches, each built from its own samples only, so nobody carries (or
        computes) invisible slots and only the expanding samples go through TokenSR."""
        cfg = self.config
        parts = []
        for which, edit in ((~(expand | drop), None), (expand, "expand"), (drop, "drop")):
            idx = which.nonzero()[:, 0]
            if len(idx) == 0:
                continue
            state = g.state if len(idx) == len(which) else decoder.select(g.state, idx)
            if edit == "expand":
                region, r0, c0 = gather_region(state.visual_h, state.grid, cfg.region, top[idx])
                sr, pos = super_resolve(decoder, lambda x: self.upsample(i, x), region, r0, c0, cfg.factor)
                state = decoder.set_extra(state, sr, pos)
            elif edit == "drop":
                state = decoder.set_extra(state, None, None)
            parts.append(_Group(g.index[idx], state, new_active[idx], tiles[idx]))
        return parts

    @staticmethod
    def _merge(decoder, groups: list["_Group"]) -> list["_Group"]:
        """Sub-batches with the same layout run on as one (samples that expanded at this layer join
        those expanded earlier; those that dropped join those never expanded): a few samples as a
        batch of their own would cost nearly as much dispatch as the whole batch."""
        by_layout: dict[tuple[int, int], list[_Group]] = {}
        for g in groups:
            by_layout.setdefault((g.state.n_extra, g.state.h.shape[1]), []).append(g)
        return [gs[0] if len(gs) == 1 else
                _Group(torch.cat([g.index for g in gs]), decoder.merge([g.state for g in gs]),
                       torch.cat([g.active for g in gs]), torch.cat([g.tiles for g in gs]))
                for gs in by_layout.values()]

    def _edit(self, decoder, i, state, new_active, expand, top):
        """The single-batch reference edit: append fresh SR tokens for samples expanding now; keep
        the (evolved) appended tokens of samples still expanded; remove the block when no sample
        needs it (samples without appended tokens keep invisible slots)."""
        cfg = self.config
        if not bool(new_active.any()):
            return decoder.set_extra(state, None, None)
        region, r0, c0 = gather_region(state.visual_h, state.grid, cfg.region, top)
        sr, pos = super_resolve(decoder, lambda x: self.upsample(i, x), region, r0, c0, cfg.factor)
        if state.n_extra:  # samples that stay expanded keep their current appended tokens
            keep = (~expand)[:, None, None]
            sr = torch.where(keep, state.extra_h, sr.to(state.h.dtype))
            old_pos = state.extra_pos
            pos = torch.where(keep.reshape(-1, *[1] * (old_pos.ndim - 1)), old_pos, pos)
        return decoder.set_extra(state, sr, pos, new_active)
