"""Accuracy per question type and split, and the Blink comparison table.

The table (``mmgen vqa eval --table`` or ``bench/blink_bench.py``) runs, in one process, on
each split: vanilla, Blink-interp, Blink (TokenSR), and the ablations random-region (TokenSR
on a uniformly random tile, same trigger) and no-drop (TokenSR, never dropping), and the
training-free ViCrop-style baseline (:class:`ViCrop`: crop the top-saliency region of the source
image, append its tokens, run the question again; its latency includes the second pass).  Accuracy is
exact match of the arg-max answer token.  Latency = wall time of the decoder pass
(image encoder + all layers + readout, batched) per split: for each batch the minimum over
``repeats`` runs, summed over batches (on a shared machine other jobs only ever add time, so
the minimum is the least noisy estimate of a variant's own cost), with all variants run back
to back on each batch so that load drift hits them alike; the ratio is to vanilla in the
same run.  "FLOPs x vanilla" is the ratio of counted floating-point work (matmuls,
convolutions, attention; :func:`flops`): it does not depend on the machine or its load, which
on a shared CPU moves the wall-time ratio of one and the same variant by +-0.05 between runs,
and it shows how much of Blink's wall-time overhead is dispatch of small tensors, not work.
"expanded" = share of questions for which Blink expanded a region in at least one layer.
"fixed/broken vs vanilla" counts the questions a variant gets right that vanilla gets wrong
and the reverse: on a few hundred questions an accuracy difference of one or two points is
only meaningful if those counts are lopsided; "p" is the two-sided exact sign test on them
(:func:`sign_test`: the chance of counts at least this lopsided if fixing and breaking were
equally likely).
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, replace

import torch

from .blink import Blink, BlinkConfig, BlinkTrace, concentration, region_scores, saliency
from .data import QTYPES, VQADataset
from .model import zoom_view
from .text import WORD_TO_ID, batch_encode


def load_split(split: str, n: int, seed: int, image_size: int, batch_size: int, max_text_len: int, device):
    """-> list of batches (images, ids, lengths, answer ids, qtypes, hires source images uint8 [B, Hh, Wh, 3])."""
    ds = VQADataset(n, split, seed, size=image_size)
    batches = []
    for s in range(0, n, batch_size):
        items = [ds[i] for i in range(s, min(n, s + batch_size))]
        ids, lengths = batch_encode([it["question"] for it in items], max_text_len)
        batches.append((torch.stack([it["image"] for it in items]).to(device), ids.to(device), lengths.to(device),
                        torch.tensor([WORD_TO_ID[it["answer"]] for it in items], device=device),
                        [it["qtype"] for it in items], torch.stack([it["hires"] for it in items])))
    return batches


def sign_test(fixed: int, broken: int) -> float:
    """Two-sided exact sign test: P(a split of fixed + broken fair coin flips at least as lopsided)."""
    n = fixed + broken
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(fixed, broken) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass
class ViCrop:
    """The training-free ViCrop-style baseline (attention-guided crop, re-run): the saliency of layer
    ``layer`` (Blink's scan) picks the top region, the model sees the region's zoomed crop of the
    source image (its own visual tokens of it, at the region's sub-cell positions) appended at the
    input, and the whole question runs again."""

    layer: int
    region: int
    factor: int

    @torch.no_grad()
    def run(self, model, images, ids, lengths, hires) -> torch.Tensor:
        state = model.prepare(images, ids, lengths)
        for i in range(self.layer):
            state = model.run_layer(i, state)
        q, k = model.query_keys(self.layer, state)
        _, top = concentration(region_scores(saliency(q, k), state.grid, self.region))
        per_row = state.grid[1] // self.region
        r0, c0 = (top // per_row) * self.region, (top % per_row) * self.region
        zoom = zoom_view(model, hires, r0, c0, self.region, self.factor)
        return model(images, ids, lengths, extra=zoom, extra_pos=model.region_positions(r0, c0, self.region,
                                                                                          self.factor))


def _runner(model, variant: Blink | ViCrop | None, trace: BlinkTrace | None = None):
    """A variant as a function of one batch -> logits."""
    if variant is None:
        return lambda batch: model(*batch[:3])
    if isinstance(variant, ViCrop):
        return lambda batch: variant.run(model, *batch[:3], batch[5])
    return lambda batch: variant.run(model, model.prepare(*batch[:3]), trace)


@torch.no_grad()
def accuracy(run, batches, correct: list[bool] | None = None) -> dict[str, float]:
    """{qtype: accuracy, ..., "all": accuracy}; per-question right/wrong appended to ``correct``."""
    right, total = defaultdict(int), defaultdict(int)
    for batch in batches:
        answers, qtypes = batch[3], batch[4]
        ok = (run(batch).argmax(-1) == answers).tolist()
        if correct is not None:
            correct.extend(ok)
        for q, o in zip(qtypes, ok):
            right[q] += o
            total[q] += 1
            right["all"] += o
            total["all"] += 1
    return {q: right[q] / total[q] for q in total}


def evaluate_split(model, split, n, batch_size, seed, device) -> dict[str, float]:
    cfg = model.config
    return accuracy(_runner(model, None), load_split(split, n, seed, cfg.image_size, batch_size, cfg.max_text_len,
                                                     device))


def print_accuracy(results: dict[str, dict[str, float]], title: str = "vanilla") -> None:
    cols = [q for q in QTYPES if any(q in r for r in results.values())]
    print(f"| split | model | all | {' | '.join(cols)} |")
    print("|---|---|---|" + "---|" * len(cols))
    for split, r in results.items():
        print(f"| {split} | {title} | {r['all']:.3f} | " + " | ".join(f"{r.get(q, float('nan')):.3f}" for q in cols)
              + " |")


@torch.no_grad()
def _time(run, batch, device, cpu: bool = False) -> float | tuple[float, float]:
    """Wall time of one batch; with ``cpu`` (wall, CPU time of this thread): on a shared CPU the
    thread's own CPU time leaves out the time other jobs held the core, so its ratios move less
    with the machine's load than wall time's (one thread only: OMP_NUM_THREADS=1)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.thread_time()
    run(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    return (wall, time.thread_time() - c) if cpu else wall


@torch.no_grad()
def flops(run, batches) -> int:
    """Floating-point operations of matmuls, convolutions and attention over all batches
    (torch.utils.flop_counter; elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        for batch in batches:
            run(batch)
    return counter.get_total_flops()


@torch.no_grad()
def score(model, variant: Blink | ViCrop | None, batches) -> tuple[dict[str, float], float | None, torch.Tensor]:
    """Accuracy (see :func:`accuracy`), for Blink the share of questions that expanded, and the
    per-question correctness (bool [N])."""
    hits = total = 0

    def run(batch):
        nonlocal hits, total
        if not isinstance(variant, Blink):
            return _runner(model, variant)(batch)
        trace = BlinkTrace()
        logits = _runner(model, variant, trace)(batch)
        hits += int(torch.stack(trace.active).any(0).sum()) if trace.active else 0
        total += len(batch[0])
        return logits

    correct: list[bool] = []
    acc = accuracy(run, batches, correct)
    return acc, (hits / max(total, 1) if isinstance(variant, Blink) else None), torch.tensor(correct)


def variants(base: BlinkConfig, bank) -> dict[str, Blink | ViCrop | None]:
    return {
        "vanilla": None,
        "Blink-interp": Blink(replace(base, mode="interp"), None),
        "Blink": Blink(replace(base, mode="tokensr"), bank),
        "random-region": Blink(replace(base, mode="tokensr", region_choice="random"), bank),
        "no-drop": Blink(replace(base, mode="tokensr", allow_drop=False), bank),
        "ViCrop": ViCrop(base.layers[0], base.region, base.factor),
    }


def comparison(model, bank, base: BlinkConfig, split, n, batch_size, seed, repeats, device,
               tick=lambda: None) -> list[dict]:
    """Rows {split, variant, acc (dict), latency_s, ratio, flops_ratio, expanded, fixed, broken} of one split;
    fixed / broken = questions this variant answers right / wrong that vanilla answers wrong / right.
    ``tick()`` is called once per variant and batch of each pass (see :func:`comparison_steps`)."""
    cfg = model.config
    rows = []
    batches = load_split(split, n, seed, cfg.image_size, batch_size, cfg.max_text_len, device)
    vs = variants(base, bank)
    runs = {name: _runner(model, b) for name, b in vs.items()}
    for run in runs.values():  # warm-up (allocator, lazy init)
        _time(run, batches[0], device)
        tick()
    times = {name: [[] for _ in batches] for name in runs}  # [variant][batch] -> one time per repeat
    for _ in range(repeats):
        for b, batch in enumerate(batches):  # every variant on the same batch back to back
            for name, run in runs.items():
                times[name][b].append(_time(run, batch, device))
                tick()
    # per batch the fastest repeat, summed: a load spike on one batch spoils one sample only
    lat = {name: sum(min(ts) for ts in t) for name, t in times.items()}
    ops = {}
    for name, run in runs.items():
        ops[name] = flops(run, batches)
        tick()
    ref = None
    for name, blink in vs.items():
        acc, expanded, correct = score(model, blink, batches)
        tick()
        ref = correct if ref is None else ref  # vanilla comes first
        rows.append({"split": split, "variant": name, "acc": acc, "latency_s": lat[name],
                     "ratio": lat[name] / lat["vanilla"], "flops_ratio": ops[name] / ops["vanilla"],
                     "expanded": expanded,
                     "fixed": int((correct & ~ref).sum()), "broken": int((ref & ~correct).sum())})
    return rows


def comparison_steps(n: int, batch_size: int, repeats: int, n_variants: int = 6) -> int:
    """How many ticks :func:`comparison` makes for one split."""
    return n_variants * (3 + repeats * math.ceil(n / batch_size))  # warm-up, timings, FLOPs, accuracy


def print_table(rows: list[dict]) -> None:
    print("| split | variant | acc | " + " | ".join(QTYPES)
          + " | fixed/broken vs vanilla | p | latency (s) | x vanilla | FLOPs x vanilla | expanded |")
    print("|---|---|---|" + "---|" * len(QTYPES) + "---|---|---|---|---|---|")
    for r in rows:
        a = r["acc"]
        exp = "-" if r["expanded"] is None else f"{r['expanded']:.0%}"
        print(f"| {r['split']} | {r['variant']} | {a['all']:.3f} | "
              + " | ".join(f"{a.get(q, float('nan')):.3f}" for q in QTYPES)
              + f" | +{r['fixed']}/-{r['broken']} | {sign_test(r['fixed'], r['broken']):.2g} | {r['latency_s']:.3f} | {r['ratio']:.2f}"
              + f" | {r['flops_ratio']:.3f} | {exp} |")


def describe_table(base: BlinkConfig, n: int, batch_size: int, repeats: int, device) -> str:
    return (f"Blink config: {base}\ndevice: {device}, {n} questions per split, batch {batch_size}, "
            f"latency = sum over batches of the min of {repeats} timed repeats\n")
