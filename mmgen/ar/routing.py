"""`mmgen ar routing`: which experts each modality uses, layer by layer (ERNIE 5.0's routing picture).

The model reads held-out MovingShapes clips (encoded by its own tokenizer, cut to the model's
latent frames) with teacher forcing; every token's top-k choice is counted per sparse layer
and per modality: the text tokens (prompt words; padding left out) and the visual tokens of
each scale.  A generator is read in its one direction, text -> video ``[prompt | video]``; a
unified model (config ``text_vocab``) in both: generation sequences and caption sequences
``[null prompt | video | <caption> words <eos>]`` (text after the video).  The figure has one
row of panels per direction and one panel per modality: rows are layers, columns experts,
colour the share of that modality's tokens routed to the expert.  The overlap of two modalities
in a layer is the histogram intersection of their shares (1 = the same use of the pool, 0 =
disjoint experts).
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmgen.io import save_figure

from .corruption import CorruptionConfig, corrupted_history
from .text import PAD_ID as BYTE_PAD

GENERATE, CAPTION = "text -> video", "video -> text"


def _add(total: dict, counts: dict) -> None:
    for name, c in counts.items():
        total[name] = total.get(name, 0) + c


@torch.no_grad()
def collect_routing(model, tokenizer, num_clips: int = 16, batch_size: int = 8, seed: int = 1
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """{direction: {modality: Long [sparse layers, experts]}} summed over ``num_clips`` MovingShapes
    clips of ``seed`` (the training caches use seed 0).  Directions: GENERATE for every text model,
    CAPTION too for a unified one; modalities "text" (class models: "class") and "scale0", ..."""
    from mmgen.data import MovingShapes

    from .unified import text_sequences

    cfg, frames = model.config, model.config.num_frames
    data = MovingShapes(num_samples=num_clips, size=tokenizer.config.sample_size,
                        num_frames=tokenizer.config.num_frames, seed=seed)
    model.eval()
    total: dict[str, dict] = {GENERATE: {}}
    for start in range(0, num_clips, batch_size):
        items = [data[i] for i in range(start, min(num_clips, start + batch_size))]
        video = torch.stack([it["video"] for it in items]).to(model.device)
        latent = tokenizer.encode(video)[:, :, :frames]
        _, codes = corrupted_history(tokenizer.quantizer, latent, CorruptionConfig(enabled=False))
        inputs = tokenizer.quantizer.next_scale_inputs(codes)
        layout = model.layout(frames)
        if cfg.cond == "text":  # cut to the model's prefix (bytes or words)
            cond = [it["caption"] if model.words else it["caption"][:cfg.max_text_len] for it in items]
            tokens = model.condition_tokens(cond)
            masks = {"text": torch.cat([tokens.cpu() != (model.words.PAD_ID if model.words else BYTE_PAD),
                                        torch.zeros(len(items), layout.num_visual, dtype=torch.bool)], 1)}
        else:
            tokens = model.condition_tokens([it["label"] for it in items])
            masks = {"class": torch.arange(layout.length) < layout.prefix_len}
        model(tokens, inputs)
        _add(total[GENERATE], model.routing_counts({**masks, **model.scale_masks(layout)}))
        if model.words is not None:  # a unified model: also caption the same clips
            text, _ = text_sequences(model.words, [""] * len(items), [it["caption"] for it in items], cfg.text_len)
            model(model.null_condition(len(items)), inputs, text=text, latent=latent)
            long = model.layout(frames, cfg.text_len)
            words = torch.cat([torch.zeros(len(items), long.prefix_len + long.num_visual, dtype=torch.bool),
                               text != model.words.PAD_ID], 1)
            _add(total.setdefault(CAPTION, {}), model.routing_counts({**model.scale_masks(long),
                                                                      "text": words}))
    return total


def overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per layer, the histogram intersection of two modalities' expert shares ([layers, experts] counts)."""
    sa, sb = (c.float() / c.float().sum(1, keepdim=True).clamp_min(1) for c in (a, b))
    return torch.minimum(sa, sb).sum(1)


def text_visual_overlap(counts: dict[str, dict[str, torch.Tensor]]) -> dict[str, list[float]]:
    """{direction: per-layer overlap of text tokens with all visual tokens} (directions with text)."""
    out = {}
    for direction, groups in counts.items():
        visual = sum(c for name, c in groups.items() if name.startswith("scale"))
        if "text" in groups and isinstance(visual, torch.Tensor):
            out[direction] = [round(float(v), 3) for v in overlap(groups["text"], visual)]
    return out


def plot_routing(counts: dict[str, dict[str, torch.Tensor]], out: str | Path, title: str = "") -> Path:
    """Write the routing figure (PNG) atomically: one row of panels per direction, one panel per
    modality (:func:`collect_routing`'s result), one colour scale for all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(counts)
    cols = max(len(groups) for groups in counts.values())
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.9 * cols + 1.5, 2.3 * len(rows) + 0.9), squeeze=False,
                             sharey=True)
    fig.subplots_adjust(top=1 - 0.75 / fig.get_figheight(), bottom=0.5 / fig.get_figheight(), hspace=0.55)
    shares = {(r, n): c.float() / c.float().sum(1, keepdim=True).clamp_min(1) for r in rows for n, c in counts[r].items()}
    top = max(float(v.max()) for v in shares.values())
    for i, direction in enumerate(rows):
        for j in range(cols):
            ax = axes[i][j]
            names = list(counts[direction])
            if j >= len(names):
                ax.axis("off")
                continue
            share = shares[direction, names[j]]
            im = ax.imshow(share.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=top)
            layers, experts = share.shape
            ax.set_xticks(range(0, experts, max(1, experts // 8)))
            ax.set_yticks(range(layers))
            ax.set_title(f"{direction}: {names[j]}" if j == 0 else names[j], fontsize=8)
            ax.tick_params(labelsize=7)
            if i == len(rows) - 1:
                ax.set_xlabel("expert", fontsize=8)
        axes[i][0].set_ylabel("sparse layer", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="share of the modality's tokens")
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, out, dpi=90)
    return Path(out)


def routing_main(model_dir: str, out: str, num_clips: int = 16) -> tuple[Path, dict[str, list[float]]]:
    """Load a pipeline folder (transformer/ + tokenizer/), count and draw.  -> (figure path, per
    direction the text/visual overlap of each layer).  ValueError on a dense model."""
    from mmgen.tokenizer.model import VideoTokenizer

    from .model import VideoAR

    root = Path(model_dir)
    if not (root / "transformer" / "config.json").is_file() or not (root / "tokenizer" / "config.json").is_file():
        raise ValueError(f"--model {root}: expected a pipeline folder with transformer/ and tokenizer/ "
                         f"(as written by `mmgen ar export` + assemble, or mmgen/assets/default)")
    model = VideoAR.from_pretrained(str(root / "transformer"))
    if model.sparse_ffn is None:
        raise ValueError(f"the model in {root} has a dense FFN (config ffn={model.config.ffn!r}); routing needs "
                         f"ffn='moe', 'mohd' or 'moue'")
    tokenizer = VideoTokenizer.from_pretrained(str(root / "tokenizer")).eval()
    counts = collect_routing(model, tokenizer, num_clips)
    shared = text_visual_overlap(counts)
    note = "; ".join(f"{d}: {', '.join(f'{v:.2f}' for v in vs)}" for d, vs in shared.items())
    title = f"{root.name}: expert use per modality ({model.config.ffn})"
    return plot_routing(counts, out, title + (f"\ntext/visual overlap by layer: {note}" if note else "")), shared
