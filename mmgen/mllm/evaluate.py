"""Accuracy per question type and split, and the Blink comparison table.

The table (``mmgen vqa eval --table`` or ``bench/blink_bench.py``) runs, in one process, on
each split: vanilla, Blink-interp, Blink (TokenSR), and the ablations random-region (TokenSR
on a uniformly random tile, same trigger) and no-drop (TokenSR, never dropping).  Accuracy is
exact match of the arg-max answer token.  Latency = wall time of the decoder pass
(image encoder + all layers + readout, batched) per split: for each batch the minimum over
``repeats`` runs, summed over batches (on a shared machine other jobs only ever add time, so
the minimum is the least noisy estimate of a variant's own cost), with the variants
interleaved in each repeat so that load drift hits them alike; the ratio is to vanilla in the
same run.  "expanded" = share of questions for which
Blink expanded a region in at least one layer.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace

import torch

from .blink import Blink, BlinkConfig, BlinkTrace
from .data import QTYPES, VQADataset
from .text import WORD_TO_ID, batch_encode


def load_split(split: str, n: int, seed: int, image_size: int, batch_size: int, max_text_len: int, device):
    """-> list of batches (images, ids, lengths, answer ids, qtypes)."""
    ds = VQADataset(n, split, seed, size=image_size)
    batches = []
    for s in range(0, n, batch_size):
        items = [ds[i] for i in range(s, min(n, s + batch_size))]
        ids, lengths = batch_encode([it["question"] for it in items], max_text_len)
        batches.append((torch.stack([it["image"] for it in items]).to(device), ids.to(device), lengths.to(device),
                        torch.tensor([WORD_TO_ID[it["answer"]] for it in items], device=device),
                        [it["qtype"] for it in items]))
    return batches


def _vanilla(model, images, ids, lengths):
    return model(images, ids, lengths)


def _runner(model, blink: Blink | None, trace: BlinkTrace | None = None):
    if blink is None:
        return lambda images, ids, lengths: _vanilla(model, images, ids, lengths)
    return lambda images, ids, lengths: blink.run(model, model.prepare(images, ids, lengths), trace)


@torch.no_grad()
def accuracy(run, batches) -> dict[str, float]:
    """{qtype: accuracy, ..., "all": accuracy}."""
    right, total = defaultdict(int), defaultdict(int)
    for images, ids, lengths, answers, qtypes in batches:
        ok = (run(images, ids, lengths).argmax(-1) == answers).tolist()
        for q, o in zip(qtypes, ok):
            right[q] += o
            total[q] += 1
            right["all"] += o
            total["all"] += 1
    return {q: right[q] / total[q] for q in total}


def evaluate_splits(model, splits, n, batch_size, seed, device) -> dict[str, dict[str, float]]:
    cfg = model.config
    return {s: accuracy(_runner(model, None), load_split(s, n, seed, cfg.image_size, batch_size, cfg.max_text_len,
                                                          device)) for s in splits}


def print_accuracy(results: dict[str, dict[str, float]], title: str = "vanilla") -> None:
    cols = [q for q in QTYPES if any(q in r for r in results.values())]
    print(f"| split | model | all | {' | '.join(cols)} |")
    print("|---|---|---|" + "---|" * len(cols))
    for split, r in results.items():
        print(f"| {split} | {title} | {r['all']:.3f} | " + " | ".join(f"{r.get(q, float('nan')):.3f}" for q in cols)
              + " |")


@torch.no_grad()
def _time(run, batches, device) -> list[float]:
    """Wall time of each batch."""
    out = []
    for images, ids, lengths, *_ in batches:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        run(images, ids, lengths)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


@torch.no_grad()
def score(model, blink: Blink | None, batches) -> tuple[dict[str, float], float | None]:
    """Accuracy (see :func:`accuracy`) and, for Blink, the share of questions that expanded."""
    hits = total = 0

    def run(images, ids, lengths):
        nonlocal hits, total
        if blink is None:
            return _vanilla(model, images, ids, lengths)
        trace = BlinkTrace()
        logits = blink.run(model, model.prepare(images, ids, lengths), trace)
        hits += int(torch.stack(trace.active).any(0).sum()) if trace.active else 0
        total += len(images)
        return logits

    acc = accuracy(run, batches)
    return acc, (hits / max(total, 1) if blink is not None else None)


def variants(base: BlinkConfig, bank) -> dict[str, Blink | None]:
    return {
        "vanilla": None,
        "Blink-interp": Blink(replace(base, mode="interp"), None),
        "Blink": Blink(replace(base, mode="tokensr"), bank),
        "random-region": Blink(replace(base, mode="tokensr", region_choice="random"), bank),
        "no-drop": Blink(replace(base, mode="tokensr", allow_drop=False), bank),
    }


def comparison(model, bank, base: BlinkConfig, splits, n, batch_size, seed, repeats, device) -> list[dict]:
    """Rows {split, variant, acc (dict), latency_s, ratio, expanded}."""
    cfg = model.config
    rows = []
    for split in splits:
        batches = load_split(split, n, seed, cfg.image_size, batch_size, cfg.max_text_len, device)
        vs = variants(base, bank)
        runs = {name: _runner(model, b) for name, b in vs.items()}
        for run in runs.values():  # warm-up (allocator, lazy init)
            _time(run, batches[:1], device)
        times = defaultdict(list)
        for _ in range(repeats):
            for name, run in runs.items():
                times[name].append(_time(run, batches, device))
        # per batch the fastest repeat, summed: a load spike on one batch spoils one sample only
        lat = {name: sum(min(ts) for ts in zip(*t)) for name, t in times.items()}
        for name, blink in vs.items():
            acc, expanded = score(model, blink, batches)
            rows.append({"split": split, "variant": name, "acc": acc, "latency_s": lat[name],
                         "ratio": lat[name] / lat["vanilla"], "expanded": expanded})
    return rows


def print_table(rows: list[dict]) -> None:
    print("| split | variant | acc | " + " | ".join(QTYPES) + " | latency (s) | x vanilla | expanded |")
    print("|---|---|---|" + "---|" * len(QTYPES) + "---|---|---|")
    for r in rows:
        a = r["acc"]
        exp = "-" if r["expanded"] is None else f"{r['expanded']:.0%}"
        print(f"| {r['split']} | {r['variant']} | {a['all']:.3f} | "
              + " | ".join(f"{a.get(q, float('nan')):.3f}" for q in QTYPES)
              + f" | {r['latency_s']:.3f} | {r['ratio']:.2f} | {exp} |")


def run_table(model, bank, args, device) -> list[dict]:
    from .cli import blink_config

    base = blink_config(args, "tokensr", bank)
    print(f"Blink config: {base}")
    print(f"device: {device}, {args.samples} questions per split, batch {args.batch_size}, "
          f"latency = sum over batches of the min of {args.repeats} timed repeats\n")
    rows = comparison(model, bank, base, args.split, args.samples, args.batch_size, args.seed, args.repeats, device)
    print_table(rows)
    return rows
