"""Picture of Blink's per-layer saliency and chosen regions (`mmgen vqa --show-saliency`)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def save_saliency(path: str | Path, image: np.ndarray, trace, grid: tuple[int, int], region: int,
                  title: str = "") -> None:
    """One panel per scanned layer: saliency over the image, the top tile (dashed) and the
    expanded tile (solid) with rho and the state in the title.  Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not trace.layers:
        raise ValueError("no Blink layers were scanned; nothing to show")
    gh, gw = grid
    S = image.shape[0]
    cell = S / gh
    n = len(trace.layers)
    fig, axes = plt.subplots(1, n + 1, figsize=(2.6 * (n + 1), 3.4))
    axes[0].imshow(image)
    axes[0].set_title("input")
    per_row = gw // region
    for ax, layer, sal, rho, top, active, tile in zip(axes[1:], trace.layers, trace.saliency, trace.rho,
                                                      trace.top, trace.active, trace.tiles):
        ax.imshow(image)
        ax.imshow(sal[0].reshape(gh, gw).float().cpu().numpy(), cmap="inferno", alpha=0.6,
                  extent=(0, S, S, 0), interpolation="nearest")
        t = int(top[0])
        ax.add_patch(Rectangle(((t % per_row) * region * cell, (t // per_row) * region * cell),
                               region * cell, region * cell, fill=False, ec="cyan", ls="--", lw=1.5))
        if bool(active[0]):
            e = int(tile[0])
            ax.add_patch(Rectangle(((e % per_row) * region * cell, (e // per_row) * region * cell),
                                   region * cell, region * cell, fill=False, ec="lime", lw=2.5))
        ax.set_title(f"layer {layer}  rho={float(rho[0]):.2f}\n{'expanded' if bool(active[0]) else 'not expanded'}",
                     fontsize=9)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix or ".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
