"""Inflate a 2D (image) autoencoder checkpoint into the causal 3D tokenizer.

Every 3D conv kernel ``[O, I, kt, kh, kw]`` receives the 2D kernel ``[O, I, kh, kw]`` in its
LAST temporal tap (the current frame, since padding is causal) and zeros in the earlier taps
(MAGVIT-v2), so the inflated model starts out as the 2D model applied frame by frame (with
strided temporal convs picking the latest frame of each window). Other tensors (norms, biases,
1x1 convs, the codebook) are copied as they are.

The 2D state dict uses the 3D model's parameter names; a 2D conv stored without the
``.conv`` level of :class:`~mmgen.tokenizer.layers.CausalConv3d` (``encoder.conv_in.weight``
instead of ``encoder.conv_in.conv.weight``) is found too. ``key_map`` can rename anything else.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _lookup(state_2d: dict[str, Tensor], name: str) -> Tensor | None:
    if name in state_2d:
        return state_2d[name]
    short = name.replace(".conv.weight", ".weight").replace(".conv.bias", ".bias")
    return state_2d.get(short)


def inflate_2d_state_dict(
    state_2d: dict[str, Tensor],
    model: nn.Module,
    key_map: Callable[[str], str] | None = None,
    strict: bool = True,
) -> dict[str, Tensor]:
    """Return a state dict for ``model`` (3D) built from ``state_2d``.

    Raises ``KeyError`` listing the 3D parameters with no 2D counterpart (when ``strict``) and
    ``ValueError`` naming any tensor whose shape cannot be inflated.
    """
    if key_map is not None:
        state_2d = {key_map(k): v for k, v in state_2d.items()}
    out: dict[str, Tensor] = {}
    missing: list[str] = []
    for name, target in model.state_dict().items():
        source = _lookup(state_2d, name)
        if source is None:
            missing.append(name)
            continue
        if source.shape == target.shape:
            out[name] = source.clone().to(target.dtype)
        elif target.dim() == 5 and source.dim() == 4 and source.shape == target.shape[:2] + target.shape[3:]:
            weight = torch.zeros_like(target)
            weight[:, :, -1] = source.to(target.dtype)
            out[name] = weight
        else:
            raise ValueError(f"{name}: cannot inflate a 2D tensor of shape {tuple(source.shape)} into {tuple(target.shape)}")
    if missing and strict:
        raise KeyError(f"2D checkpoint lacks {len(missing)} tensors of the 3D model, e.g. {missing[:8]}")
    return out


def inflate_into(model: nn.Module, state_2d: dict[str, Tensor], **kwargs) -> nn.Module:
    """Load the inflated ``state_2d`` into ``model`` in place and return it."""
    model.load_state_dict(inflate_2d_state_dict(state_2d, model, **kwargs), strict=kwargs.get("strict", True))
    return model
