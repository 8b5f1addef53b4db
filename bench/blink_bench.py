"""Blink comparison table: vanilla / Blink-interp / Blink / random-region / no-drop, accuracy per
question type and latency ratio to vanilla, on the normal (val) and held-out fine-grained splits.

    python bench/blink_bench.py [--model DIR] [--tokensr DIR] [--samples 600] [--repeats 3] [--device cpu]
        same as ``mmgen vqa eval --table ...``; without --model the packaged model and TokenSR are used
    python bench/blink_bench.py --tune [--model DIR] [--samples 300] [--split finegrained]
        how tau_exp / tau_drop were chosen: rho quantiles per scanned layer and Blink accuracy for a
        few thresholds on the first --split (default val) drawn with seed 1 — a development stream:
        the table uses seed 0, so its questions are never used for tuning
    python bench/blink_bench.py --settings 0,0 0.68,0.68 0.54,0.51 [--split finegrained] [--samples 1000]
        one row per tau_exp,tau_drop setting of Blink (TokenSR): accuracy, fixed/broken vs vanilla with
        the sign test, wall time and its ratio to vanilla (all settings on each batch back to back, the
        min of --repeats per batch, summed), the same ratio of the thread's CPU time (single-threaded runs:
        less sensitive to other jobs on the machine), share of questions expanded and dropped (the
        dynamic trigger)
    python bench/blink_bench.py --diagnose [--split finegrained] [--samples 600] [--seed 0]
        where Blink's gain is lost: (1) does the top saliency tile hold the asked-about object, per
        scanned layer and question type; (2) how often Blink expands / drops; (3) accuracy with the
        asked-about object's tile (oracle) expanded at each Blink layer with the true zoom tokens
        (the model's hidden states of the zoomed crop), TokenSR's and interpolation's tokens; and
        (4) the ceiling of any TokenSR: the true zoomed crop of the tile Blink picks, appended
        whenever Blink would expand
"""
import sys

import torch

from mmgen.mllm.cli import _parser_sub, _device, blink_config, load_model, load_tokensr, main


def _setup(args, seed: int):
    """(device, model, TokenSR bank, base BlinkConfig, question batches) of an `eval`-style argument set."""
    from mmgen.mllm.evaluate import load_split

    device = _device(args.device)
    model = load_model(args.model, device)
    bank = load_tokensr(args.tokensr, args.model, device)
    cfg = model.config
    batches = load_split(args.split[0], args.samples, seed, cfg.image_size, args.batch_size, cfg.max_text_len, device)
    return device, model, bank, blink_config(args, "tokensr"), batches


def tune(argv: list[str]) -> int:
    from dataclasses import replace

    from mmgen.mllm.blink import Blink, BlinkTrace
    from mmgen.mllm.evaluate import score

    args = _parser_sub("eval").parse_args(argv)
    _, model, bank, base, batches = _setup(args, seed=1)
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
    for q in (0.1, 0.25, 0.5, 0.75):  # expand for about 90% ... 25% of the questions at the first layer
        tau_exp = float(torch.quantile(first, q))
        for drop_frac in (0.8, 0.0):
            c = replace(base, tau_exp=tau_exp, tau_drop=tau_exp * drop_frac)
            for mode in ("interp", "tokensr"):
                acc, expanded, _ = score(model, Blink(replace(c, mode=mode), bank), batches)
                print(f"tau_exp={tau_exp:.3f} tau_drop={c.tau_drop:.3f} {mode:8s} acc {acc['all']:.3f} expanded {expanded:.0%}")
    return 0


def settings(argv: list[str]) -> int:
    from dataclasses import replace

    from mmgen.mllm.blink import Blink, BlinkTrace
    from mmgen.mllm.evaluate import _runner, _time, score, sign_test

    i = argv.index("--settings")
    pairs = []
    while i + 1 < len(argv) and "," in argv[i + 1]:
        pairs.append(tuple(float(v) for v in argv.pop(i + 1).split(",")))
    argv.pop(i)
    args = _parser_sub("eval").parse_args(argv)
    device, model, bank, base, batches = _setup(args, seed=args.seed)
    blinks = {"vanilla": None, **{f"{e:g}/{d:g}": Blink(replace(base, tau_exp=e, tau_drop=d), bank) for e, d in pairs}}
    runs = {name: _runner(model, b) for name, b in blinks.items()}
    for run in runs.values():
        _time(run, batches[0], device)
    times = {name: [[] for _ in batches] for name in runs}  # (wall, cpu) per repeat
    for _ in range(args.repeats):
        for b, batch in enumerate(batches):
            for name, run in runs.items():
                times[name][b].append(_time(run, batch, device, cpu=True))
    lat = {name: sum(min(w for w, _ in t) for t in ts) for name, ts in times.items()}
    cpu = {name: sum(min(c for _, c in t) for t in ts) for name, ts in times.items()}
    _, _, ref = score(model, None, batches)
    print(f"{args.split[0]}, {args.samples} questions (seed {args.seed}), batch {args.batch_size}; Blink: {base}\n")
    print("| tau_exp/tau_drop | acc | fixed/broken vs vanilla | p | latency (s) | x vanilla | CPU x vanilla "
          "| expanded | dropped |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| vanilla | {ref.float().mean():.3f} | - | - | {lat['vanilla']:.2f} | 1.00 | 1.00 | - | - |")
    for name, blink in blinks.items():
        if blink is None:
            continue
        acc, expanded, correct = score(model, blink, batches)
        dropped = 0
        with torch.no_grad():
            for batch in batches:
                trace = BlinkTrace()
                blink.run(model, model.prepare(*batch[:3]), trace)
                active = torch.stack(trace.active)
                dropped += int((active[:-1] & ~active[1:]).any(0).sum())
        fixed, broken = int((correct & ~ref).sum()), int((ref & ~correct).sum())
        print(f"| {name} | {acc['all']:.3f} | +{fixed}/-{broken} | {sign_test(fixed, broken):.2g} | {lat[name]:.2f} "
              f"| {lat[name] / lat['vanilla']:.2f} | {cpu[name] / cpu['vanilla']:.2f} | {expanded:.0%} "
              f"| {dropped / args.samples:.0%} |")
    return 0


def diagnose(argv: list[str]) -> int:
    from dataclasses import replace

    from mmgen.mllm.blink import Blink, BlinkTrace, gather_region, super_resolve
    from mmgen.mllm.data import QTYPES, VQADataset
    from mmgen.mllm.lightning import target_tiles, tile_origin
    from mmgen.mllm.model import zoom_view
    from mmgen.mllm.text import WORD_TO_ID, batch_encode
    from mmgen.mllm.tokensr import interpolate_region

    args = _parser_sub("eval").parse_args(argv)
    model = load_model(args.model)
    bank = load_tokensr(args.tokensr, args.model)
    base = blink_config(args, "tokensr")
    cfg, split, n = model.config, args.split[0], args.samples
    items = [VQADataset(n, split, args.seed, size=cfg.image_size)[i] for i in range(n)]
    images, hires = torch.stack([it["image"] for it in items]), torch.stack([it["hires"] for it in items])
    ids, lengths = batch_encode([it["question"] for it in items], cfg.max_text_len)
    answers = torch.tensor([WORD_TO_ID[it["answer"]] for it in items])
    qtype = [it["qtype"] for it in items]
    bbox = torch.stack([it["target_bbox"] for it in items])
    has_target = bbox[:, 0] >= 0
    target = target_tiles(model, bbox, base.region, torch.Generator().manual_seed(0))
    of_type = {q: torch.tensor([t == q for t in qtype]) for q in QTYPES}

    def report(name: str, logits: torch.Tensor) -> None:
        ok = (logits.argmax(-1) == answers).float()
        print(f"{name:58s} all {ok.mean():.3f}  " + "  ".join(f"{q} {ok[m].mean():.3f}" for q, m in of_type.items()))

    def blink_trace(config) -> tuple[torch.Tensor, BlinkTrace]:
        trace = BlinkTrace()
        return Blink(config, bank).run(model, model.prepare(images, ids, lengths), trace), trace

    print(f"split {split}, seed {args.seed}, {n} questions; Blink: {base}\n")
    with torch.no_grad():
        vanilla = model(images, ids, lengths)
        report("vanilla", vanilla)
        _, scan = blink_trace(replace(base, tau_exp=float("inf"), tau_drop=0.0))
        print("\n(1) top saliency tile == the asked-about object's tile (questions with one object)")
        for layer, top in zip(scan.layers, scan.top):
            hit = {q: (top == target)[m & has_target].float().mean().item() for q, m in of_type.items()}
            print(f"  layer {layer}: " + "  ".join(f"{q} {v:.2f}" for q, v in hit.items() if v == v))
        _, trace = blink_trace(base)
        active = torch.stack(trace.active)
        print("\n(2) expansion: " + ", ".join(f"layer {layer} active {a.float().mean():.2f}" for layer, a in
                                            zip(trace.layers, active))
              + f"; dropped later {(active[:-1] & ~active[1:]).any(0).float().mean():.2f}"
              + f"; expanded after the first layer {(~active[:-1] & active[1:]).any(0).float().mean():.2f}")
        print("\n(3) the asked-about object's tile (random tile where there is none) expanded at one layer")
        r0, c0 = tile_origin(model, target, base.region)
        pos = model.region_positions(r0, c0, base.region, base.factor)
        zoom = zoom_view(model, hires, r0, c0, base.region, base.factor)
        report("  true zoom tokens at the input", model(images, ids, lengths, extra=zoom, extra_pos=pos))
        zoomed = model.hidden_states(model.prepare(images, extra=zoom, extra_pos=pos), range(*base.layers))
        nv = model.grid[0] * model.grid[1]
        for layer in range(*base.layers):
            for kind in ("true zoom", "TokenSR", "interp"):
                state = model.prepare(images, ids, lengths)
                for i in range(model.num_layers):
                    if i == layer:
                        region = gather_region(state.h[:, :nv], model.grid, base.region, target)[0]
                        extra = {"true zoom": lambda: zoomed[layer][:, nv:nv + pos.shape[1]],
                                 "TokenSR": lambda: super_resolve(model, bank[layer], region, r0, c0, base.factor)[0],
                                 "interp": lambda: super_resolve(model, lambda x: interpolate_region(x, base.factor),
                                                                 region, r0, c0, base.factor)[0]}
                        state = model.set_extra(state, extra[kind](), pos)
                    state = model.run_layer(i, state)
                report(f"  {kind} tokens at layer {layer}", model.readout(state))
        print("\n(4) ceiling: the true zoom of the tile Blink picks (first scanned layer), where Blink expands")
        r0, c0 = tile_origin(model, scan.top[0], base.region)
        pos = model.region_positions(r0, c0, base.region, base.factor)
        zoomed_logits = model(images, ids, lengths, extra=zoom_view(model, hires, r0, c0, base.region, base.factor),
                              extra_pos=pos)
        expands = active.any(0)
        report(f"  where Blink expands ({expands.float().mean():.0%})",
               torch.where(expands[:, None], zoomed_logits, vanilla))
        report("  always", zoomed_logits)
    return 0


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--settings" in argv:
        sys.exit(settings(argv))
    for flag, command in (("--tune", tune), ("--diagnose", diagnose)):
        if flag in argv:
            argv.remove(flag)
            sys.exit(command(argv))
    sys.exit(main(["eval", "--table", *argv]))
