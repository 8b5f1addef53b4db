"""Classifier-free guidance and temperature schedules for group-by-group decoding.

A *schedule* maps a decoding position — latent frame ``t`` of ``num_frames`` and scale
``k`` of ``num_scales`` — to one number. Guidance schedules give the CFG weight applied
to the bit logits of that group; temperature schedules give the sampling temperature.
Both are plain config (a dict, a YAML mapping or a short string such as
``"adaptive"`` / ``"linear:5:3"``), so changing how a model is sampled never needs a
code edit.

Guidance kinds (VideoAR section 7):

* ``constant``  — the same weight ``scale`` everywhere (``scale=1`` disables CFG).
* ``adaptive``  — VideoAR's temporal-spatial adaptive CFG (class-to-video on UCF): the
  first scale of each frame gets a weight that rises linearly across frames from
  ``first_start`` (1) to ``first_end`` (5); inside a frame the weight then rises linearly
  over the scales up to ``peak`` (10) at the finest scale.
* ``linear``    — VideoAR's text-to-video schedule: the weight falls linearly from
  ``start`` (5) to ``end`` (3) along the decoding order (time, then scale). The paper
  says only "along time and scale"; we use the flattened group index so both move it.

Combining conditional and unconditional logits (:func:`apply_cfg`) happens on logits,
``uncond + w * (cond - uncond)``; both halves come from ONE batched forward whose batch
is ``[cond rows; uncond rows]`` (see :func:`split_cfg_batch`).
"""
from __future__ import annotations

import math

from dataclasses import asdict, dataclass, fields

import torch

GUIDANCE_KINDS = ("constant", "adaptive", "linear")


def _lerp(a: float, b: float, frac: float) -> float:
    return a + (b - a) * frac


def _frac(i: int, n: int) -> float:
    """Position of ``i`` in ``range(n)`` mapped to [0, 1] (0 when there is only one)."""
    return i / (n - 1) if n > 1 else 0.0


def _check_position(t: int, k: int, num_frames: int, num_scales: int) -> None:
    if num_frames < 1 or num_scales < 1:
        raise ValueError(f"num_frames and num_scales must be >= 1, got {num_frames}, {num_scales}")
    if not (0 <= t < num_frames and 0 <= k < num_scales):
        raise ValueError(f"position (frame {t}, scale {k}) outside {num_frames} frames x {num_scales} scales")



def _check_weight(what: str, value, note: str = "(1 = no guidance, 0 = unconditional)") -> None:
    """Guidance weights and temperatures are finite numbers >= 0 (NaN would reach the samples)."""
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{what} must be a finite number >= 0 {note}, got {value}")

@dataclass(frozen=True)
class GuidanceSchedule:
    """CFG weight per (frame, scale). Unused fields of a kind are ignored.

    Args:
        kind: ``"constant"`` | ``"adaptive"`` | ``"linear"``.
        scale: weight of ``constant``.
        first_start, first_end, peak: ``adaptive`` — first-scale weight of the first and
            the last frame, and the weight reached at the finest scale of every frame.
        start, end: ``linear`` — weight of the first and the last group.
    """

    kind: str = "constant"
    scale: float = 1.0
    first_start: float = 1.0
    first_end: float = 5.0
    peak: float = 10.0
    start: float = 5.0
    end: float = 3.0

    def __post_init__(self) -> None:
        if self.kind not in GUIDANCE_KINDS:
            raise ValueError(f"unknown guidance kind {self.kind!r}; expected one of {GUIDANCE_KINDS}")
        for name in ("scale", "first_start", "first_end", "peak", "start", "end"):
            _check_weight(f"guidance {name}", getattr(self, name))

    def __call__(self, t: int, k: int, num_frames: int, num_scales: int) -> float:
        _check_position(t, k, num_frames, num_scales)
        if self.kind == "constant":
            return float(self.scale)
        if self.kind == "adaptive":
            first = _lerp(self.first_start, self.first_end, _frac(t, num_frames))
            return _lerp(first, self.peak, _frac(k, num_scales))
        return _lerp(self.start, self.end, _frac(t * num_scales + k, num_frames * num_scales))

    def is_disabled(self) -> bool:
        """True when every group has weight 1, i.e. the unconditional rows can be skipped."""
        if self.kind == "constant":
            return self.scale == 1.0
        if self.kind == "adaptive":
            return self.first_start == self.first_end == self.peak == 1.0
        return self.start == self.end == 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def parse(cls, spec: "GuidanceSchedule | dict | str | float | int | None") -> "GuidanceSchedule":
        """Build from a schedule, a config dict, a number (constant) or a short string.

        Strings: ``"3"`` / ``"constant:3"``, ``"adaptive"`` / ``"adaptive:1:5:10"``
        (first_start:first_end:peak), ``"linear"`` / ``"linear:5:3"`` (start:end).
        """
        if spec is None:
            return cls()
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, bool):
            raise TypeError("guidance must be a number, a string, a dict or a GuidanceSchedule, not a bool")
        if isinstance(spec, (int, float)):
            return cls(kind="constant", scale=float(spec))
        if isinstance(spec, dict):
            return _from_dict(cls, spec, "guidance")
        if isinstance(spec, str):
            head, *args = spec.strip().split(":")
            if not args and head not in GUIDANCE_KINDS:
                try:
                    scale = float(head)
                except ValueError:
                    raise ValueError(f"unknown guidance kind {head!r}; expected a number or one of "
                                     f"{GUIDANCE_KINDS}") from None
                return cls(kind="constant", scale=scale)
            names = {"constant": ("scale",), "adaptive": ("first_start", "first_end", "peak"),
                     "linear": ("start", "end")}.get(head)
            if names is None:
                raise ValueError(f"unknown guidance kind {head!r} in {spec!r}; expected one of {GUIDANCE_KINDS}")
            try:
                values = [float(a) for a in args]
            except ValueError:
                raise ValueError(f"cannot parse guidance {spec!r}: numbers expected after the kind") from None
            if len(values) not in (0, len(names)):
                raise ValueError(f"guidance {spec!r}: {head} takes {len(names)} numbers ({':'.join(names)})")
            return cls(kind=head, **dict(zip(names, values)))
        raise TypeError(f"cannot build a guidance schedule from {type(spec).__name__}")


@dataclass(frozen=True)
class TemperatureSchedule:
    """Sampling temperature per scale: ``coarse`` at the first scale, ``fine`` at the
    last, linear in between (the same for every frame). Coarse scales decide layout and
    colour, fine scales texture, so they are often sampled at different temperatures."""

    coarse: float = 1.0
    fine: float = 1.0

    def __post_init__(self) -> None:
        _check_weight("temperature coarse", self.coarse, "(0 = greedy)")
        _check_weight("temperature fine", self.fine, "(0 = greedy)")

    def __call__(self, t: int, k: int, num_frames: int, num_scales: int) -> float:
        _check_position(t, k, num_frames, num_scales)
        return _lerp(self.coarse, self.fine, _frac(k, num_scales))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def parse(cls, spec: "TemperatureSchedule | dict | str | float | int | None") -> "TemperatureSchedule":
        """Build from a schedule, a dict, one number (both ends) or ``"coarse:fine"``."""
        if spec is None:
            return cls()
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, bool):
            raise TypeError("temperature must be a number, a string or a dict, not a bool")
        if isinstance(spec, (int, float)):
            return cls(float(spec), float(spec))
        if isinstance(spec, dict):
            return _from_dict(cls, spec, "temperature")
        if isinstance(spec, str):
            try:
                values = [float(v) for v in spec.split(":")]
            except ValueError:
                raise ValueError(f"cannot parse temperature {spec!r}; use a number or 'coarse:fine'") from None
            if len(values) == 1:
                return cls(values[0], values[0])
            if len(values) == 2:
                return cls(*values)
            raise ValueError(f"cannot parse temperature {spec!r}; use a number or 'coarse:fine'")
        raise TypeError(f"cannot build a temperature schedule from {type(spec).__name__}")


def _from_dict(cls, spec: dict, what: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; known: {sorted(known)}")
    return cls(**spec)


def split_cfg_batch(logits: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the logits of a ``[cond; uncond]`` batch of ``2 * batch_size`` rows."""
    if logits.shape[0] != 2 * batch_size:
        raise ValueError(f"expected {2 * batch_size} rows (cond + uncond), got {logits.shape[0]}")
    return logits[:batch_size], logits[batch_size:]


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor, weight: float) -> torch.Tensor:
    """Classifier-free guidance on logits: ``uncond + weight * (cond - uncond)``.

    Computed in float32 so a bf16 forward does not lose the (small) difference."""
    cond, uncond = cond.float(), uncond.float()
    if weight == 1.0:
        return cond
    return uncond + weight * (cond - uncond)
