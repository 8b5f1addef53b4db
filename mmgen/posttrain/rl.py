"""GRPO-style reinforcement learning of the video generator with verifiable rewards, and
CD-RLHF's curiosity bonus.

Per step: for each of ``prompts_per_step`` prompts the pipeline samples a group of
``group_size`` videos (no CFG, temperature ``temperature``: the policy's own distribution);
each video's reward is its analytic MovingShapes score (:mod:`mmgen.posttrain.rewards`); a
video's advantage is its reward minus the group mean over the group's standard deviation.

Log-probabilities come from the teacher-forced :meth:`VideoAR.forward` over the sampled codes:
a bit's log-probability is ``logsigmoid(bit * logit / temperature)``, a token's the sum of its
bits', and each scale's tokens are weighted by ``1 / (h_k * w_k)`` (per-scale normalisation by
grid size, so the 1x1 scale weighs as much as the 8x8 one). The loss per video is

    - sum_tokens w_tok * sum_bits A_bit * logp_bit  +  kl_coef * sum_tokens w_tok * KL_tok

with the k3 estimator of the KL to the frozen reference model, normalised by the number of
latent frames. Plain GRPO: ``A_bit = A`` (the video's advantage). With curiosity (CD-RLHF):
an intrinsic-curiosity module predicts the reference model's next hidden state from its
current one and the sampled token; its error, whitened over the batch keeping its mean and
scaled by ``eta``, is added to ``A_bit`` only for bits where the sample differs from the
greedy bit (the policy's top-1): a per-bit reward, as CD-RLHF's is per token, never summed into
the video's reward (:func:`bit_advantages`).

"Next state" for a bitwise next-scale model: the reference model's final hidden state at the
same (centre-mapped) place in the next group (the next scale of the frame, or the next
frame's first scale); the last group has none and gets no intrinsic reward.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .rewards import decode_videos, parse_prompts, pixel_diversity, reward

# Fields of the generator config that may differ between policy and reference (besides the private
# "_..." bookkeeping keys a loader adds: source folder, library version).
_NON_ARCH = {"attn_backend", "grad_checkpointing"}


@dataclass
class RLConfig:
    steps: int = 20
    prompts_per_step: int = 2
    group_size: int = 4
    lr: float = 5e-5
    warmup_steps: int = 0  # linear lr warm-up: step i uses lr * min(1, (i + 1) / warmup_steps)
    kl_coef: float = 0.05  # CD-RLHF's KL coefficient
    temperature: float = 1.0  # rollout temperature (log-probs use the same)
    num_frames: int = 17
    curiosity: bool = False
    eta: float = 0.06  # intrinsic reward scale (CD-RLHF)
    icm_lr: float = 1e-5  # the ICM's own Adam (CD-RLHF)
    # whitening of the intrinsic reward keeps its mean (the paper / issue); False: zero mean, as the
    # authors' code does in effect (its whiten is called with the default that drops the mean)
    keep_mean: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"GRPO needs a group of >= 2 samples per prompt, got {self.group_size}")
        if self.steps < 1 or self.prompts_per_step < 1:
            raise ValueError("steps and prompts_per_step must be >= 1")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.temperature <= 0:
            raise ValueError(f"rollout temperature must be > 0, got {self.temperature}")


def check_same_architecture(policy, reference) -> None:
    a = {k: v for k, v in dict(policy.config).items() if k not in _NON_ARCH and not k.startswith("_")}
    b = {k: v for k, v in dict(reference.config).items() if k not in _NON_ARCH and not k.startswith("_")}
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff or type(policy) is not type(reference):
        k = diff[0] if diff else "class"
        raise ValueError(f"the reference model differs from the policy's architecture ({k}: policy "
                         f"{a.get(k, type(policy).__name__)!r}, reference {b.get(k, type(reference).__name__)!r}); "
                         f"pass the model the policy was trained from as --ref")


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_hidden), nn.ReLU(),
                         nn.Linear(d_hidden, d_out))


class CuriosityModule(nn.Module):
    """ICM without an inverse model: encoder phi (h -> 2h -> 2h -> h) and forward model
    f(phi(s), a) -> phi(s'); the per-token error 0.5 * ||phi(s') - f|| (L2 norm, as in CD-RLHF's
    code) is both its loss and the intrinsic reward."""

    def __init__(self, hidden: int, action: int):
        super().__init__()
        self.phi = _mlp(hidden, 2 * hidden, hidden)
        self.forward_model = _mlp(hidden + action, 2 * hidden, hidden)

    def forward(self, s: torch.Tensor, a: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
        pred = self.forward_model(torch.cat([self.phi(s), a], dim=-1))
        return 0.5 * (self.phi(s_next) - pred).norm(dim=-1)


def next_state_index(layout) -> torch.Tensor:
    """For every visual token, the visual index of the same place in the next group (-1: none)."""
    scales, K = layout.scales, layout.num_scales
    frames = (layout.length - layout.prefix_len) // layout.tokens_per_frame
    idx = torch.full((layout.length - layout.prefix_len,), -1, dtype=torch.long)
    for t in range(frames):
        for k in range(K):
            nt, nk = (t, k + 1) if k + 1 < K else (t + 1, 0)
            if nt >= frames:
                continue
            (h, w), (h2, w2) = scales[k], scales[nk]
            rows = ((torch.arange(h) + 0.5) * h2 / h).long()
            cols = ((torch.arange(w) + 0.5) * w2 / w).long()
            target = layout.visual_slice(nt, nk).start + (rows[:, None] * w2 + cols[None, :]).reshape(-1)
            idx[layout.visual_slice(t, k)] = target
    return idx


def token_weights(layout) -> torch.Tensor:
    """1 / (h_k * w_k) per visual token (per-scale normalisation by grid size)."""
    sizes = torch.tensor([h * w for h, w in layout.scales], dtype=torch.float32)
    return 1.0 / sizes[layout.scale_id[layout.prefix_len:]]


class _LastHidden:
    """Captures the final (normed) hidden states of a VideoAR forward via a hook on ``model.norm``."""

    def __init__(self, model):
        self.value = None
        self.handle = model.norm.register_forward_hook(self._hook)

    def _hook(self, mod, args, out):
        self.value = out

    def close(self):
        self.handle.remove()


def bit_advantages(adv: torch.Tensor, r_int: torch.Tensor | None, not_greedy: torch.Tensor,
                   eta: float) -> torch.Tensor:
    """Per-bit advantage [B, L, d]: the video's group-normalised advantage ``adv`` [B] on every bit,
    plus ``eta`` x the token's intrinsic reward ``r_int`` [B, L] on the bits that differ from the
    greedy bit. The intrinsic reward stays per bit, as CD-RLHF's per-token reward does: summed
    into the video's reward before the group normalisation it would mostly cancel out."""
    out = adv[:, None, None].expand(not_greedy.shape)
    if r_int is None:
        return out
    return out + eta * r_int[..., None] * not_greedy


def whiten(x: torch.Tensor, mask: torch.Tensor, keep_mean: bool = True) -> torch.Tensor:
    """Unit variance over the ``mask``ed entries; their mean is kept or moved to 0."""
    vals = x[mask]
    if vals.numel() < 2:
        return x
    mean, std = vals.mean(), vals.std()
    return (x - mean) / (std + 1e-8) + (mean if keep_mean else 0.0)


class GRPOTrainer:
    """Policy = the pipeline's transformer (trained in place); reference = a frozen copy (or ``reference``)."""

    def __init__(self, pipe, prompts: Sequence[str], cfg: RLConfig, reference=None,
                 log: Callable[[str], None] = print):
        self.pipe, self.cfg, self.log = pipe, cfg, log
        self.prompts = list(prompts)
        if not self.prompts:
            raise ValueError("no prompts to train on")
        self.expected = parse_prompts(self.prompts)
        self.policy = pipe.transformer.requires_grad_(True)  # e.g. a merged LoRA model arrives frozen
        self.ref = reference if reference is not None else copy.deepcopy(self.policy)
        check_same_architecture(self.policy, self.ref)
        self.ref.requires_grad_(False).eval()
        self.q = pipe.tokenizer.quantizer
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
        # Adam's first updates move every weight by about the full lr whatever the gradient's size
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda i: min(1.0, (i + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
        width = self.policy.config.width
        self.icm = CuriosityModule(width, width).to(self.policy.device) if cfg.curiosity else None
        self.icm_opt = torch.optim.Adam(self.icm.parameters(), lr=cfg.icm_lr) if self.icm is not None else None
        self.rng = np.random.default_rng(cfg.seed)

    def _rollout(self, prompts: list[str], seeds: list[int]) -> list[torch.Tensor]:
        # the policy's own distribution: no CFG, no nucleus cut (the log-probs assume the full one)
        return self.pipe(prompts, num_frames=self.cfg.num_frames, guidance=1.0, top_p=1.0,
                         temperature={"coarse": self.cfg.temperature, "fine": self.cfg.temperature},
                         seed=seeds, output_type="latent", progress=False).frames

    def step(self, step: int) -> dict:
        c, policy = self.cfg, self.policy
        chosen = self.rng.choice(len(self.prompts), size=min(c.prompts_per_step, len(self.prompts)), replace=False)
        prompts = [self.prompts[i] for i in chosen for _ in range(c.group_size)]
        seeds = [c.seed * 1_000_003 + step * 10_007 + j for j in range(len(prompts))]
        policy.eval()
        codes = self._rollout(prompts, seeds)
        videos = decode_videos(self.pipe.tokenizer, codes)
        rewards = torch.tensor([reward(v, self.expected[i])[0]
                                for v, i in zip(videos, np.repeat(chosen, c.group_size))])
        groups = rewards.view(-1, c.group_size)
        spread = groups.std(1, keepdim=True)
        adv = ((groups - groups.mean(1, keepdim=True)) / (spread + 1e-4)).view(-1)

        tokens = policy.condition_tokens(prompts)
        inputs = self.q.next_scale_inputs(codes)
        layout = policy.layout(codes[0].shape[1])
        bits = layout.flatten_visual(codes).to(policy.device)  # [B, L, d] in {-1, +1}
        w_tok = token_weights(layout).to(policy.device)
        frames = codes[0].shape[1]

        policy.train()
        logits = policy(tokens, inputs) / c.temperature
        logp = F.logsigmoid(bits * logits)  # [B, L, d]
        hidden = _LastHidden(self.ref) if self.icm is not None else None
        with torch.no_grad():
            ref_logp = F.logsigmoid(bits * self.ref(tokens, inputs) / c.temperature)
        log_ratio = ref_logp - logp
        kl_tok = (log_ratio.exp() - log_ratio - 1).sum(-1)  # k3 per bit, summed over the token's bits

        not_greedy = (logits.detach() >= 0) != (bits > 0)
        r_int, stats = None, {}
        if self.icm is not None:
            states = hidden.value.detach()
            hidden.close()
            nxt = next_state_index(layout).to(policy.device)
            valid = (nxt >= 0)[None].expand(len(prompts), -1)
            action = policy.in_proj(bits.to(policy.in_proj.weight.dtype)).detach()
            err = self.icm(states, action, states[:, nxt.clamp(min=0)])  # [B, L]
            icm_loss = (err * valid).sum() / valid.sum()
            self.icm_opt.zero_grad(set_to_none=True)
            icm_loss.backward()
            self.icm_opt.step()
            r_int = whiten(err.detach(), valid, c.keep_mean) * valid
            # the bonus's net push towards the non-greedy bits (its noise averages out)
            push = (r_int[..., None] * not_greedy).sum() / not_greedy.sum().clamp(min=1)
            stats.update(icm_loss=icm_loss.item(), intrinsic=err.detach()[valid].mean().item(),
                         intrinsic_push=c.eta * push.item())
        bit_adv = bit_advantages(adv.to(policy.device), r_int, not_greedy, c.eta)
        pg = -((bit_adv * logp).sum(-1) * w_tok).sum(-1) / frames
        kl = (kl_tok * w_tok).sum(-1) / frames
        loss = (pg + c.kl_coef * kl).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        policy.eval()
        div = float(np.mean([pixel_diversity(videos[g * c.group_size:(g + 1) * c.group_size])
                             for g in range(len(chosen))]))
        # a group whose rewards are all equal has zero advantage: no policy-gradient signal from it
        return {"step": step, "reward": float(rewards.mean()), "kl": kl.mean().item(), "loss": loss.item(),
                "diversity": div, "flat_groups": float((spread == 0).float().mean()),
                "group_std": float(spread.mean()), "not_greedy": float(not_greedy.float().mean()), **stats}

    def run(self) -> list[dict]:
        torch.manual_seed(self.cfg.seed)
        history, t0 = [], time.time()
        for step in range(self.cfg.steps):
            h = self.step(step)
            history.append(h)
            self.log(f"step {step + 1}/{self.cfg.steps} reward {h['reward']:.3f} kl {h['kl']:.4f} "
                     f"flat groups {h['flat_groups']:.2f} "
                     f"diversity {h['diversity']:.4f} ({time.time() - t0:.0f} s)")
        return history
