"""`mmgen ar routing`: which experts each modality uses, layer by layer (ERNIE 5.0's routing picture).

The model reads MovingShapes clips (encoded by its own tokenizer) with teacher forcing; every
token's top-k choice is counted per modality (the text prefix, and the visual tokens of each
scale) and per sparse layer.  The figure has one panel per modality: rows are layers, columns
experts, colour the share of that modality's tokens routed to the expert.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmgen.io import save_figure

from .corruption import CorruptionConfig, corrupted_history


@torch.no_grad()
def collect_routing(model, tokenizer, num_clips: int = 16, batch_size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Expert counts {modality: Long [sparse layers, experts]} summed over ``num_clips`` MovingShapes clips."""
    from mmgen.data import MovingShapes

    cfg = tokenizer.config
    data = MovingShapes(num_samples=num_clips, size=cfg.sample_size, num_frames=cfg.num_frames, seed=seed)
    model.eval()
    total: dict[str, torch.Tensor] = {}
    for start in range(0, num_clips, batch_size):
        items = [data[i] for i in range(start, min(num_clips, start + batch_size))]
        video = torch.stack([it["video"] for it in items]).to(model.device)
        _, codes = corrupted_history(tokenizer.quantizer, tokenizer.encode(video), CorruptionConfig(enabled=False))
        inputs = tokenizer.quantizer.next_scale_inputs(codes)
        if model.config.cond == "text":  # routing needs tokens, not whole sentences: cut to the model's prefix
            cond = [it["caption"][:model.config.max_text_len] for it in items]
        else:
            cond = [it["label"] for it in items]
        model(cond, inputs)
        for name, counts in model.routing_counts().items():
            total[name] = total.get(name, 0) + counts
    return total


def plot_routing(counts: dict[str, torch.Tensor], out: str | Path, title: str = "") -> Path:
    """Write the routing figure (PNG) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(counts)
    fig, axes = plt.subplots(1, len(names), figsize=(2.4 * len(names) + 1.5, 3.4), squeeze=False, sharey=True)
    fig.subplots_adjust(top=0.8, bottom=0.18)  # room for the title above and the axis labels below
    shares = {name: c.float() / c.float().sum(1, keepdim=True).clamp_min(1) for name, c in counts.items()}
    top = max(float(v.max()) for v in shares.values())  # one colour scale for every panel
    for ax, name in zip(axes[0], names):
        share = shares[name]
        im = ax.imshow(share.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=top)
        layers, experts = share.shape
        ax.set_xticks(range(0, experts, max(1, experts // 8)))
        ax.set_yticks(range(layers))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("expert")
    axes[0][0].set_ylabel("sparse layer")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="share of tokens")
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, out, dpi=120)
    return Path(out)


def routing_main(model_dir: str, out: str, num_clips: int = 16) -> Path:
    """Load a pipeline folder (transformer/ + tokenizer/), count and draw.  ValueError on a dense model."""
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
    return plot_routing(counts, out, title=f"{root.name}: expert use per modality ({model.config.ffn})")
