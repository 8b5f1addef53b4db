"""Blink comparison table: vanilla / Blink-interp / Blink / random-region / no-drop, accuracy per
question type and latency ratio to vanilla, on the normal (val) and held-out fine-grained splits.

    python bench/blink_bench.py [--model DIR] [--tokensr DIR] [--samples 600] [--repeats 3] [--device cpu]
        same as ``mmgen vqa eval --table ...``; without --model the packaged model and TokenSR are used
    python bench/blink_bench.py --tune [--model DIR] [--samples 300]
        how tau_exp / tau_drop were chosen: rho quantiles per scanned layer and Blink accuracy for a
        few thresholds on a validation stream with seed 1 (the table uses seed 0; the fine-grained
        split is never used for tuning)
"""
import sys

import torch

from mmgen.mllm.cli import _parser_sub, _device, blink_config, load_model, load_tokensr, main


def tune(argv: list[str]) -> int:
    from dataclasses import replace

    from mmgen.mllm.blink import Blink, BlinkTrace
    from mmgen.mllm.evaluate import load_split, score

    args = _parser_sub("eval").parse_args(argv)
    device = _device(args.device)
    model = load_model(args.model, device)
    bank = load_tokensr(args.tokensr, args.model, device)
    base = blink_config(args, "tokensr", bank)
    cfg = model.config
    batches = load_split("val", args.samples, 1, cfg.image_size, args.batch_size, cfg.max_text_len, device)
    rhos = {}
    with torch.no_grad():
        for images, ids, lengths, *_ in batches:
            trace = BlinkTrace()
            Blink(replace(base, tau_exp=float("inf"), tau_drop=0.0), bank).run(model, model.prepare(images, ids, lengths), trace)
            for layer, rho in zip(trace.layers, trace.rho):
                rhos.setdefault(layer, []).append(rho)
    qs = torch.tensor([0.25, 0.5, 0.75, 0.9])
    for layer, r in rhos.items():
        print(f"layer {layer}: rho quantiles 25/50/75/90% = {[round(v, 3) for v in torch.quantile(torch.cat(r), qs).tolist()]}")
    first = torch.cat(rhos[min(rhos)])
    print(f"vanilla acc: {score(model, None, batches)[0]['all']:.3f}")
    for q in (0.5, 0.75, 0.9):
        tau_exp = float(torch.quantile(first, q))
        for drop_frac in (0.8, 0.0):
            c = replace(base, tau_exp=tau_exp, tau_drop=tau_exp * drop_frac)
            for mode in ("interp", "tokensr"):
                acc, expanded = score(model, Blink(replace(c, mode=mode), bank), batches)
                print(f"tau_exp={tau_exp:.3f} tau_drop={c.tau_drop:.3f} {mode:8s} acc {acc['all']:.3f} expanded {expanded:.0%}")
    return 0


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--tune" in argv:
        argv.remove("--tune")
        sys.exit(tune(argv))
    sys.exit(main(["eval", "--table", *argv]))
