"""Blink on LLaVA-1.5 or Qwen2-VL (a local Hugging Face folder; the family is read from its config.json):
vanilla / Blink-interp / Blink / ViCrop on yes-no questions from local files (POPE or MME layout), for a
GPU.  Nothing is downloaded.

    # 1. (once) TokenSR for the Blink layers, trained against the model's own zoomed-crop hidden states,
    #    on questions that are NOT the evaluation ones (e.g. a POPE file of another COCO split):
    python bench/blink_llava.py --model llava-1.5-7b-hf --pope train.jsonl --image-root coco/train2014 \\
        --fit-tokensr tokensr_llava --steps 2000
    # 2. the table (Blink rows only with --tokensr):
    python bench/blink_llava.py --model llava-1.5-7b-hf --pope coco_pope_random.jsonl --image-root coco/val2014 \\
        --tokensr tokensr_llava [--limit 500] [--tau-exp 0.3 --tau-drop 0.2] [--blink-layers 12 18] [--region 4]
    python bench/blink_llava.py --model llava-1.5-7b-hf --mme MME_Benchmark_release_version [--tokensr ...]
    # Qwen2-VL: the same commands with its folder; images are resized to --image-side (default 448 px:
    # 16 x 16 merged tokens for Qwen2-VL-7B, --region 4 tiles them into 16 regions):
    python bench/blink_llava.py --model Qwen2-VL-7B-Instruct --pope coco_pope_random.jsonl --image-root coco/val2014 \\
        --tokensr tokensr_qwen2vl [--image-side 448]

Files: ``--pope`` is POPE's jsonl (one {"image", "text", "label"} per line; "question"/"answer" work
too), images under ``--image-root``.  ``--mme`` is MME's release folder: one folder per category
holding image files and, next to them or in ``questions_answers_YN/``, one ``<image stem>.txt`` per
image with "question<TAB>Yes|No" lines.  Questions whose image is missing or unreadable are skipped
and named; the rest are scored.

Answers are read in one forward pass: the logit of "Yes" against "No" (both spellings the
tokenizer has) at the answer position, with the short-answer instruction after the question in the
family's own prompt (LLaVA-1.5's conversation template, Qwen2-VL's chat template).  Columns: accuracy (POPE:
also F1 and the share of "yes"; MME: perception-style score = 100 x (accuracy + accuracy+) summed
over categories, accuracy+ = both questions of an image right), questions fixed / broken vs
vanilla with the sign test, wall time per question and its ratio to vanilla (all variants on each
batch back to back, CUDA-synchronised), share of questions Blink expanded.  Before the table, the
rho quantiles per scanned layer are printed: tau_exp / tau_drop are untuned for these models (the
paper does not give them); pick them from these quantiles.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from mmgen.cli_utils import UserError, run_batch
from mmgen.io.destination import check_model_destination
from mmgen.mllm.blink import Blink, BlinkConfig, BlinkTrace
from mmgen.mllm.cli import HF_REGION, _device, load_tokensr, save_atomic
from mmgen.mllm.evaluate import sign_test
from mmgen.mllm.hf import QWEN2VL_SIDE, default_layers, load_hf, tokensr_loss, vicrop
from mmgen.mllm.image import load_image

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."  # appended to every question


def pope_items(path: Path, root: Path) -> list[dict]:
    items = []
    for line in path.read_text().splitlines():
        if line.strip():
            q = json.loads(line)
            items.append({"image": root / q["image"], "question": q.get("text", q.get("question")),
                          "answer": q.get("label", q.get("answer", "")).strip().lower(), "category": "pope"})
    return items


def mme_items(root: Path) -> list[dict]:
    items = []
    for cat in sorted(p for p in root.iterdir() if p.is_dir()):
        for txt in sorted(cat.rglob("*.txt")):
            images = [p for p in txt.parent.parent.rglob(txt.stem + ".*") if p.suffix.lower() in (".jpg", ".png", ".jpeg")]
            for line in txt.read_text().splitlines():
                if "\t" in line:
                    question, answer = line.rsplit("\t", 1)
                    items.append({"image": images[0] if images else cat / f"{txt.stem}.jpg", "question": question,
                                  "answer": answer.strip().lower(), "category": cat.name, "key": str(txt)})
    return items


def yes_no_ids(tokenizer) -> tuple[list[int], list[int]]:
    def ids(words):
        out = {tokenizer.encode(w, add_special_tokens=False)[0] for w in words}
        return sorted(out)
    return ids(["Yes", "yes", " Yes"]), ids(["No", "no", " No"])


def batches(decoder, processor, items: list[dict], batch_size: int, device):
    """Encoded batches of the readable items (unreadable images are skipped and named)."""
    loaded = run_batch(items, lambda it: (it, load_image(it["image"])[0]), command="blink_llava",
                       label=lambda it: it["image"], what="question")
    good = loaded.done
    for s in range(0, len(good), batch_size):
        chunk = good[s:s + batch_size]
        ids, mask, pixels = decoder.encode(processor, [im for _, im in chunk],
                                           [it["question"] + SHORT_ANSWER for it, _ in chunk], device)
        yield [it for it, _ in chunk], (ids, mask, pixels.to(decoder.dtype))


def runners(decoder, base: BlinkConfig, bank) -> dict:
    def blink(cfg):
        b = Blink(cfg, bank if cfg.mode == "tokensr" else None)
        return lambda ids, mask, px, trace=None: decoder.run(decoder.prepare(ids, px, mask), b, trace)

    out = {"vanilla": lambda ids, mask, px, trace=None: decoder.run(decoder.prepare(ids, px, mask)),
           "Blink-interp": blink(replace(base, mode="interp"))}
    if bank is not None:
        out["Blink"] = blink(base)
    out["ViCrop"] = lambda ids, mask, px, trace=None: vicrop(decoder, ids, px, base.layers[0], base.region,
                                                              base.factor, mask)
    return out


def timed(fn, device) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


@torch.no_grad()
def evaluate(decoder, processor, items, base: BlinkConfig, bank, batch_size: int, device) -> None:
    yes, no = yes_no_ids(processor.tokenizer)
    runs = runners(decoder, base, bank)
    pred = {name: [] for name in runs}
    secs = {name: 0.0 for name in runs}
    expanded = {name: 0 for name in runs}
    rhos: dict[int, list[torch.Tensor]] = {}
    kept = []
    for chunk, (ids, mask, px) in batches(decoder, processor, items, batch_size, device):
        if not kept:  # warm-up (kernels, allocator) outside the timings
            for run in runs.values():
                run(ids, mask, px)
        kept += chunk
        for name, run in runs.items():
            trace = BlinkTrace() if name.startswith("Blink") else None
            logits, dt = timed(lambda: run(ids, mask, px, trace), device)
            secs[name] += dt
            pred[name] += (logits[:, yes].max(-1).values > logits[:, no].max(-1).values).tolist()
            if trace is not None and trace.active:
                expanded[name] += int(torch.stack(trace.active).any(0).sum())
                if name == "Blink-interp":
                    for layer, rho in zip(trace.layers, trace.rho):
                        rhos.setdefault(layer, []).append(rho.float().cpu())
    if not kept:
        print("blink_llava: error: no question could be read (see the skipped lines above)", file=sys.stderr)
        sys.exit(2)
    qs = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    for layer, r in rhos.items():
        print(f"layer {layer}: rho quantiles 10/25/50/75/90% = "
              f"{[round(v, 3) for v in torch.quantile(torch.cat(r), qs).tolist()]}")
    truth = torch.tensor([it["answer"] == "yes" for it in kept])
    ref = torch.tensor(pred["vanilla"]) == truth
    mme = any(it["category"] != "pope" for it in kept)
    print(f"\n{len(kept)} questions; Blink: {base}\n")
    print("| variant | acc | " + ("MME score" if mme else "F1 | yes share") + " | fixed/broken vs vanilla | p "
          "| s / question | x vanilla | expanded |")
    print("|---|---|---|" + ("" if mme else "---|") + "---|---|---|---|---|")
    for name in runs:
        p = torch.tensor(pred[name])
        ok = p == truth
        fixed, broken = int((ok & ~ref).sum()), int((ref & ~ok).sum())
        if mme:
            quality = f"{mme_score(kept, ok):.1f}"
        else:
            tp, fp, fn = int((p & truth).sum()), int((p & ~truth).sum()), int((~p & truth).sum())
            quality = f"{2 * tp / max(2 * tp + fp + fn, 1):.4f} | {p.float().mean():.3f}"
        exp = f"{expanded[name] / len(kept):.0%}" if name.startswith("Blink") else "-"
        print(f"| {name} | {ok.float().mean():.4f} | {quality} | +{fixed}/-{broken} | {sign_test(fixed, broken):.2g} "
              f"| {secs[name] / len(kept):.4f} | {secs[name] / secs['vanilla']:.2f} | {exp} |")


def mme_score(items, ok: torch.Tensor) -> float:
    """MME's score: per category 100 x (accuracy + accuracy+), summed."""
    per_cat: dict[str, list[bool]] = {}
    per_img: dict[tuple[str, str], list[bool]] = {}
    for it, o in zip(items, ok.tolist()):
        per_cat.setdefault(it["category"], []).append(o)
        per_img.setdefault((it["category"], it["key"]), []).append(o)
    total = 0.0
    for cat, oks in per_cat.items():
        imgs = [all(v) for (c, _), v in per_img.items() if c == cat]
        total += 100 * (sum(oks) / len(oks) + sum(imgs) / len(imgs))
    return total


def fit_tokensr(decoder, processor, items, base: BlinkConfig, out: str, steps: int, lr: float, hidden: int,
                batch_size: int, device) -> None:
    """TokenSR per Blink layer against the frozen model's hidden states of the zoomed top-saliency tile."""
    from mmgen.mllm.tokensr import TokenSRBank

    layers = tuple(range(*base.layers))
    bank = TokenSRBank(layers=layers, dim=decoder.text_config.hidden_size, hidden=hidden, factor=base.factor,
                      region=base.region).to(device)
    opt = torch.optim.AdamW(bank.parameters(), lr=lr)
    step = 0
    while step < steps:
        for _, (ids, mask, px) in batches(decoder, processor, items, batch_size, device):
            loss = sum(tokensr_loss(decoder, bank, layer, ids, px, base.region, base.factor, mask) for layer in layers)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0 or step == 1:
                print(f"step {step}/{steps}: TokenSR loss {float(loss.detach()):.5f}", flush=True)
            if step >= steps:
                break
    save_atomic(bank.cpu(), out)
    print(f"saved TokenSR to {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="local Hugging Face LLaVA or Qwen2-VL folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pope", type=Path, help="POPE jsonl")
    src.add_argument("--mme", type=Path, help="MME release folder")
    p.add_argument("--image-root", type=Path, default=Path("."), help="folder the POPE image names are relative to")
    p.add_argument("--limit", type=int, default=None, help="first N questions only")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tokensr", default=None, help="TokenSR folder (adds the Blink row)")
    p.add_argument("--blink-layers", type=int, nargs=2, default=None, help="default: the paper's 12-18 of 32, scaled")
    p.add_argument("--region", type=int, default=HF_REGION)
    p.add_argument("--tau-exp", type=float, default=BlinkConfig().tau_exp)
    p.add_argument("--tau-drop", type=float, default=BlinkConfig().tau_drop)
    p.add_argument("--fit-tokensr", default=None, metavar="OUT", help="train TokenSR on these questions instead")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=64, help="TokenSR convolution width")
    p.add_argument("--image-side", type=int, default=QWEN2VL_SIDE,
                   help="Qwen2-VL: images are resized to this square size in pixels (Blink tiles one token grid)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = _device(args.device)
    try:
        if args.fit_tokensr:  # a folder it may not write is named before the training, not after it
            check_model_destination(args.fit_tokensr)
        decoder, processor = load_hf(args.model, device, image_side=args.image_side)
        items = pope_items(args.pope, args.image_root) if args.pope else mme_items(args.mme)
    except (ValueError, OSError, UserError) as e:
        print(f"blink_llava: error: {e}", file=sys.stderr)
        return 2
    items = items[:args.limit]
    layers = tuple(args.blink_layers) if args.blink_layers else default_layers(decoder.num_layers)
    base = BlinkConfig(layers=layers, region=args.region, tau_exp=args.tau_exp, tau_drop=args.tau_drop)
    if args.fit_tokensr:
        fit_tokensr(decoder, processor, items, base, args.fit_tokensr, args.steps, args.lr, args.hidden,
                    args.batch_size, device)
        return 0
    bank = load_tokensr(args.tokensr, None, device) if args.tokensr else None
    evaluate(decoder, processor, items, base, bank, args.batch_size, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
