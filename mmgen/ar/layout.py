"""The group layout: one table per token that everything else reads.

The sequence is ``[condition prefix | frame 0 scale 0 | frame 0 scale 1 | ... | frame F-1 scale K-1]``.
A *group* is one prefix token or all ``h_k * w_k`` tokens of one scale of one latent frame,
visual tokens row-major inside a group.  For every token the layout stores

* ``group_id``  — index of its group (prefix tokens 0..P-1, then P + t*K + k),
* ``frame_id``  — latent frame t (-1 for the prefix),
* ``scale_id``  — scale k (-1 for the prefix),
* ``pos``       — rotary position (t, h, w), float32 ``[L, 3]``:
  prefix token i -> (i, i, i); visual token (h, w) at scale k of frame t -> (t+P, h+P, w+P)
  (VideoAR's multi-scale temporal RoPE: each scale in its own grid, scale identity from the
  learned scale embedding).  With ``pos_mode="finest_grid"`` the coarse scales' (h, w) are
  mapped centre-aligned onto the finest grid, ``(h + 0.5) * H / h_k - 0.5`` (Infinity/ERNIE style).

With ``text_len > 0`` (the unified model, :mod:`mmgen.ar.unified`) ``text_len`` text tokens follow
the video, one group each, seeing everything before them; uni-RoPE places text token j at
``s + j`` on all three axes, ``s = P + max(F, H, W)`` (just past every visual coordinate).

The attention mask, Random Frame Mask, RoPE and the KV cache all derive from these tensors.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from mmgen.nn import GroupMask

POS_MODES = ("own_grid", "finest_grid")


class GroupLayout:
    """Token table for ``prefix_len`` condition tokens and ``num_frames`` frames of ``scales``.

    scales: [(h_k, w_k)] coarse to fine (ints are square sizes).
    window: Random Frame Mask's sliding window w — a frame sees at most the w previous frames
    (None = all).  The window is structural (it also holds at inference); the random dropping
    of frames inside it is drawn per training step by :meth:`sample_frame_keep`.
    """

    def __init__(self, prefix_len: int, num_frames: int, scales: Sequence, pos_mode: str = "own_grid",
                 window: int | None = None, text_len: int = 0):
        if prefix_len < 1:
            raise ValueError(f"GroupLayout: prefix_len must be >= 1 (class token or text), got {prefix_len}")
        if num_frames < 1:
            raise ValueError(f"GroupLayout: num_frames must be >= 1, got {num_frames}")
        if pos_mode not in POS_MODES:
            raise ValueError(f"GroupLayout: pos_mode {pos_mode!r} not in {POS_MODES}")
        if window is not None and window < 1:
            raise ValueError(f"GroupLayout: window must be >= 1 or None, got {window}")
        self.prefix_len, self.num_frames, self.pos_mode, self.window = prefix_len, num_frames, pos_mode, window
        self.text_len = text_len
        self.scales = [(s, s) if isinstance(s, int) else (int(s[0]), int(s[1])) for s in scales]
        self.num_scales = len(self.scales)
        self.tokens_per_frame = sum(h * w for h, w in self.scales)
        self.num_visual = num_frames * self.tokens_per_frame
        self.length = prefix_len + self.num_visual + text_len
        self.num_groups = prefix_len + num_frames * self.num_scales + text_len
        self._build()
        self._mask: GroupMask | None = None

    def _build(self) -> None:
        P = self.prefix_len
        H, W = self.scales[-1]
        group, frame, scale, pos = [torch.arange(P)], [torch.full((P,), -1)], [torch.full((P,), -1)], []
        pos.append(torch.arange(P, dtype=torch.float32)[:, None].expand(P, 3))
        group_frame, group_scale = [-1] * P, [-1] * P
        for t in range(self.num_frames):
            for k, (h, w) in enumerate(self.scales):
                n = h * w
                group.append(torch.full((n,), P + t * self.num_scales + k))
                frame.append(torch.full((n,), t))
                scale.append(torch.full((n,), k))
                hh, ww = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                                        torch.arange(w, dtype=torch.float32), indexing="ij")
                if self.pos_mode == "finest_grid":
                    hh, ww = (hh + 0.5) * (H / h) - 0.5, (ww + 0.5) * (W / w) - 0.5
                pos.append(torch.stack([torch.full((n,), float(t)), hh.flatten(), ww.flatten()], -1) + P)
                group_frame.append(t)
                group_scale.append(k)
        if self.text_len:
            S, start = self.text_len, P + max(self.num_frames, H, W)
            group.append(P + self.num_frames * self.num_scales + torch.arange(S))
            frame.append(torch.full((S,), -1))
            scale.append(torch.full((S,), -1))
            pos.append((start + torch.arange(S, dtype=torch.float32))[:, None].expand(S, 3))
            group_frame += [-1] * S
            group_scale += [-1] * S
        self.group_id = torch.cat(group)
        self.frame_id = torch.cat(frame)
        self.scale_id = torch.cat(scale)
        self.pos = torch.cat(pos)
        self.group_frame = torch.tensor(group_frame)
        self.group_scale = torch.tensor(group_scale)
        sizes = torch.bincount(self.group_id, minlength=self.num_groups)
        self.group_start = torch.cumsum(sizes, 0) - sizes

    # ------------------------------------------------------------------ addressing
    def group_index(self, t: int, k: int) -> int:
        if not (0 <= t < self.num_frames and 0 <= k < self.num_scales):
            raise IndexError(f"group (frame {t}, scale {k}) outside layout of {self.num_frames} frames x "
                             f"{self.num_scales} scales")
        return self.prefix_len + t * self.num_scales + k

    def group_slice(self, t: int, k: int) -> slice:
        """Tokens of group (t, k) in the full sequence."""
        g = self.group_index(t, k)
        start = int(self.group_start[g])
        h, w = self.scales[k]
        return slice(start, start + h * w)

    def visual_slice(self, t: int, k: int) -> slice:
        """Tokens of group (t, k) in the visual-only sequence (the model's logits)."""
        s = self.group_slice(t, k)
        return slice(s.start - self.prefix_len, s.stop - self.prefix_len)

    def flatten_visual(self, per_scale: Sequence[torch.Tensor]) -> torch.Tensor:
        """list[K] of [B, t, h_k, w_k, *C] -> [B, L_visual, *C] in layout order (frame, scale, row, col)."""
        if len(per_scale) != self.num_scales:
            raise ValueError(f"expected {self.num_scales} per-scale tensors, got {len(per_scale)}")
        B, extra = per_scale[0].shape[0], per_scale[0].shape[4:]
        for k, (x, (h, w)) in enumerate(zip(per_scale, self.scales)):
            if tuple(x.shape[1:4]) != (self.num_frames, h, w):
                raise ValueError(f"scale {k}: expected [B, {self.num_frames}, {h}, {w}, ...], got {tuple(x.shape)}")
        per_frame = [x.reshape(B, self.num_frames, -1, *extra) for x in per_scale]
        return torch.cat(per_frame, dim=2).reshape(B, self.num_visual, *extra)

    def unflatten_visual(self, seq: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of :meth:`flatten_visual`: [B, L_visual, *C] -> list[K] of [B, t, h_k, w_k, *C]."""
        B, extra = seq.shape[0], seq.shape[2:]
        per_frame = seq.reshape(B, self.num_frames, self.tokens_per_frame, *extra)
        sizes = [h * w for h, w in self.scales]
        return [x.reshape(B, self.num_frames, h, w, *extra)
                for x, (h, w) in zip(per_frame.split(sizes, dim=2), self.scales)]

    # ------------------------------------------------------------------ masks
    def frame_visibility(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """bool [F, F] (or [B, F, F]): may query frame t see key frame s.  Causal, within the
        window, and (if ``keep`` [.., F, F] is given) kept by Random Frame Mask.  A frame always
        sees itself."""
        t = torch.arange(self.num_frames)
        vis = t[None, :] <= t[:, None]
        if self.window is not None:
            vis &= t[None, :] >= t[:, None] - self.window
        if keep is not None:
            vis = vis & (keep | torch.eye(self.num_frames, dtype=torch.bool))
        return vis

    def group_visibility(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """bool [G, G] (or [B, G, G]): group-causal, prefix always visible, frames per :meth:`frame_visibility`."""
        g = torch.arange(self.num_groups)
        causal = g[None, :] <= g[:, None]
        fq, fk = self.group_frame[:, None], self.group_frame[None, :]
        fvis = self.frame_visibility(keep)
        # prefix keys (frame -1) are always visible; prefix queries only see the prefix (causal).
        frames_ok = fvis[..., fq.clamp(min=0), fk.clamp(min=0)] | (fk < 0) | (fq < 0)
        return causal & frames_ok

    def attention_mask(self, keep: torch.Tensor | None = None) -> GroupMask:
        """GroupMask for the whole sequence; without ``keep`` it is built once and cached, so its
        dense form and Flex BlockMask are built once per layout (per device)."""
        if keep is not None:
            return GroupMask(self.group_id, self.group_id, self.group_visibility(keep))
        if self._mask is None:
            self._mask = GroupMask(self.group_id, self.group_id, self.group_visibility())
        return self._mask

    def group_mask(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Dense bool mask [L, L] (or [B, 1, L, L] with a per-sample ``keep``); True = may attend."""
        return self.attention_mask(keep).dense(self.group_id.device)

    def sample_frame_keep(self, batch_size: int, p_mask: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random Frame Mask draw: bool [B, F, F], each (query frame, past key frame) pair kept with
        probability 1 - p_mask, independently per sample.  Apply with ``attention_mask(keep)``."""
        u = torch.rand(batch_size, self.num_frames, self.num_frames, generator=generator)
        return u >= p_mask

    def allowed_pairs(self) -> int:
        """Number of (query, key) pairs the (deterministic) mask allows — for FLOP counting."""
        sizes = torch.bincount(self.group_id, minlength=self.num_groups)
        vis = self.group_visibility().long()
        return int(sizes @ vis @ sizes)
