"""Large-kernel depthwise convolution: ``direct`` (F.conv2d groups=C) vs ``fft`` vs ``mixed`` vs ``auto``.

At the shapes TCNet runs (every variant's four stage shapes at a 448² input, batch 2, k = 31; the
issue's 2×64×112² is tcnet_base's first stage), in NCHW and channels_last, for training
(forward + backward, gradients of input, weight and bias) and inference (forward under
``torch.inference_mode``). The candidates of one shape run interleaved in the same process;
``mixed`` (direct forward and input gradient, FFT weight gradient) only in training, where its
forward is the direct one.
``auto`` is timed through ``LargeKernelDWConv(lk_impl="auto")`` (its per-call choice included);
the table shows what it picked and whether that was the measured winner (a pick within 10 % of the
winner counts as right: a tie). A kernel-size sweep at one shape locates the measured crossover
next to ``choose_impl``'s rule. On CUDA (when present) the same tables run on the GPU (cuDNN).
"""

from __future__ import annotations

import torch

from benchmarks import common
from benchmarks.common import Col

HELP = "large-kernel depthwise conv: direct vs fft vs mixed vs auto, fwd+bwd and fwd, NCHW / channels_last"
TARGET_SPEEDUP = 15.0
TIE = 1.10  # auto's pick counts as right when within 10 % of the measured winner

VARIANT_WIDTHS = {"tcnet_tiny": 16, "tcnet_small": 32, "tcnet_base": 64}


def tcnet_shapes(size: int = 448, batch: int = 2, k: int = 31) -> list[dict]:
    """Every (B, C, H, W) a TCNet variant's large kernels see at ``size``², labelled, de-duplicated."""
    shapes: dict[tuple, list[str]] = {}
    for variant, c in VARIANT_WIDTHS.items():
        for i, scale in enumerate((4, 8, 16, 32)):
            key = (batch, c * 2**i, size // scale, size // scale)
            shapes.setdefault(key, []).append(f"{variant.split('_')[1]} 1/{scale}")
    return [{"shape": s, "k": k, "used_by": ", ".join(v)} for s, v in shapes.items()]


def lk_counts(variant: str) -> dict[int, int]:
    """How many large-kernel convolutions a variant has per width (= per stage), counted on meta."""
    from tcnet.models.flops import meta_model
    from tcnet.models.lk_conv import LargeKernelDWConv

    model = meta_model(variant)
    counts: dict[int, int] = {}
    for m in model.modules():
        if isinstance(m, LargeKernelDWConv):
            counts[m.channels] = counts.get(m.channels, 0) + 1
    return counts


def per_variant(rows: list[dict], size: int, batch: int) -> list[dict]:
    """Each variant's large-kernel time per step: sum over its convolutions (count × time of the
    stage shape), per layout -- the speed-up the whole model sees."""
    by_key = {(r["shape"], r["layout"]): r for r in rows}
    out = []
    for variant in VARIANT_WIDTHS:
        counts = lk_counts(variant)
        for layout in ("NCHW", "CL"):
            tot = {"direct_ms": 0.0, "fft_ms": 0.0, "mixed_ms": 0.0, "auto_ms": 0.0, "best_ms": 0.0}
            n, complete = 0, True
            for c, k in sorted(counts.items()):
                s = size // (4 * c // VARIANT_WIDTHS[variant])
                r = by_key.get((f"{batch}x{c}x{s}x{s}", layout))
                if r is None:
                    complete = False
                    break
                n += k
                for key in ("direct_ms", "fft_ms", "mixed_ms", "auto_ms"):
                    tot[key] = None if r[key] is None or tot[key] is None else tot[key] + k * r[key]
                tot["best_ms"] += k * r["best_ms"]
            if complete and n:
                out.append({"variant": variant, "layout": layout, "convs": n, **tot,
                            "speedup": tot["direct_ms"] / tot["fft_ms"],
                            "auto_vs_best": tot["auto_ms"] / tot["best_ms"],
                            "regime": rows[0]["regime"]})
    return out


def add_arguments(p) -> None:
    p.add_argument("--size", type=int, default=448, help="TCNet input size the stage shapes come from (448)")
    p.add_argument("--batch", type=int, default=2, help="batch of the stage shapes (2)")
    p.add_argument("--device", default=None, help="cpu (default) and, when present, cuda; or one of them")
    p.add_argument("--bf16", action="store_true",
                   help="bf16 inputs under bf16 autocast, as a bf16 train step feeds the LKM's large kernels "
                        "(weights stay float32; the ETM's are fed float32 by LayerNorm, the tables without --bf16)")


def _dwconv_flops(B: int, C: int, H: int, W: int, k: int) -> int:
    return 2 * B * C * H * W * k * k


def bench_shape(B: int, C: int, H: int, W: int, k: int, layout: str, regime: str, device: str,
                repeats: int, budget_s: float | None, warmup: int = 1, bf16: bool = False) -> dict:
    from tcnet.models.lk_conv import LK_IMPLS, LargeKernelDWConv, dwconv_direct, dwconv_fft, dwconv_mixed

    torch.manual_seed(0)
    mod = LargeKernelDWConv(C, k, lk_impl="auto").to(device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    x = torch.randn(B, C, H, W, device=device, dtype=dtype)
    g = torch.randn(B, C, H, W, device=device, dtype=dtype)
    if layout == "channels_last":
        mod = mod.to(memory_format=torch.channels_last)  # what model.to(memory_format=...) does
        x = x.contiguous(memory_format=torch.channels_last)
        g = g.contiguous(memory_format=torch.channels_last)
    w, b = mod.weight, mod.bias
    train = regime == "train"
    x.requires_grad_(train)
    impls = {"direct": lambda t: dwconv_direct(t, w, b), "fft": lambda t: dwconv_fft(t, w, b)}
    if train:
        impls["mixed"] = lambda t: dwconv_mixed(t, w, b)
    impls["auto"] = mod

    def make(f):
        if train:
            def fn():
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                    y = f(x)
                y.backward(g)
                x.grad = w.grad = b.grad = None
        else:
            def fn():
                with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                                            enabled=bf16):
                    f(x)
        return fn

    # auto's pick for this call, under the timed calls' autocast (on CUDA: measured here, lk_tune.py)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        if train:
            picked = mod.resolved_impl(x)
        else:
            with torch.inference_mode():
                picked = mod.resolved_impl(x)
    times = common.time_interleaved({n: make(f) for n, f in impls.items()}, repeats, warmup=warmup,
                                    sync=common.cuda_sync_for(device), budget_s=budget_s)
    ms = {n: common.median(t) * 1000 for n, t in times.items()}
    winner = min((n for n in LK_IMPLS if n in ms and n != "auto"), key=ms.get)  # mixed: training only
    best = ms[winner]
    flops = _dwconv_flops(B, C, H, W, k) * (3 if train else 1)  # fwd + grad input + grad weight
    return {
        "shape": f"{B}x{C}x{H}x{W}", "k": k, "layout": "CL" if layout == "channels_last" else "NCHW",
        "regime": regime, "device": device, "dtype": "bf16" if bf16 else "fp32",
        "direct_ms": ms["direct"], "fft_ms": ms["fft"], "mixed_ms": ms.get("mixed"), "auto_ms": ms["auto"],
        "best_ms": best,
        "speedup": ms["direct"] / ms["fft"],
        "winner": winner, "auto_picks": picked,
        "auto_ok": ms[picked] <= TIE * best,
        "auto_vs_best": ms["auto"] / best,
        "direct_gflops": flops / (ms["direct"] / 1000) / 1e9,
        "times_s": {n: common.stats(t) for n, t in times.items()},
    }


SHAPE_COLS = [
    Col("shape", "shape B×C×H×W"), Col("used_by", "TCNet stage (448²)"), Col("layout", "layout"),
    Col("direct_ms", "direct ms", ".1f"), Col("fft_ms", "fft ms", ".1f"), Col("mixed_ms", "mixed ms", ".1f"),
    Col("auto_ms", "auto ms", ".1f"), Col("speedup", "direct/fft", ".1f"),
    Col("direct_gflops", "direct GFLOP/s", ".1f"),
    Col("winner", "winner"), Col("auto_picks", "auto picks"), Col("auto_ok", "auto right"),
]
VARIANT_COLS = [
    Col("variant", "variant"), Col("layout", "layout"), Col("convs", "31×31 convs", "d"),
    Col("direct_ms", "direct ms", ".0f"), Col("fft_ms", "fft ms", ".0f"), Col("mixed_ms", "mixed ms", ".0f"),
    Col("auto_ms", "auto ms", ".0f"), Col("speedup", "direct/fft", ".1f"), Col("auto_vs_best", "auto / best", ".2f"),
]
SWEEP_COLS = [
    Col("k", "k", "d"), Col("regime", "regime"), Col("layout", "layout"), Col("direct_ms", "direct ms", ".2f"),
    Col("fft_ms", "fft ms", ".2f"), Col("mixed_ms", "mixed ms", ".2f"), Col("auto_ms", "auto ms", ".2f"),
    Col("speedup", "direct/fft", ".2f"),
    Col("winner", "winner"), Col("auto_picks", "auto picks"), Col("auto_ok", "auto right"),
]


def _median_of(repeats: int, rows: list[dict]) -> str:
    return common.median_of(repeats, [st for r in rows for st in r["times_s"].values()])


def run(args, mode: common.Mode) -> dict:
    from tcnet.models.lk_conv import MIXED_MAX_PIXELS

    repeats = args.repeats or mode.pick(1, 3, 5)
    layouts = ("contiguous", "channels_last")
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if mode.tiny:
        shapes = [{"shape": (1, 8, 16, 16), "k": 31, "used_by": "tiny test shape"}]
        sweep_shape, sweep_ks = (1, 8, 16, 16), (5, 31)
    elif mode.quick:
        all_shapes = {s["shape"]: s for s in tcnet_shapes(args.size, args.batch)}
        keys = [(args.batch, 64, args.size // 4, args.size // 4), (args.batch, 128, args.size // 8, args.size // 8),
                (args.batch, 512, args.size // 32, args.size // 32)]
        shapes = [all_shapes[k] for k in keys if k in all_shapes]
        sweep_shape, sweep_ks = (2, 32, 56, 56), (5, 9, 15, 31)
    else:
        shapes = tcnet_shapes(args.size, args.batch)
        sweep_shape, sweep_ks = (2, 64, 56, 56), (3, 5, 7, 9, 11, 13, 15, 17, 21, 25, 31)
    budget = mode.pick(None, 20.0, 60.0)  # per candidate set: stop repeating a very slow direct conv early
    tables, summary, notes = {}, {}, []
    for device in devices:
        for regime in ("train", "infer"):
            rows = []
            for s in shapes:
                for layout in layouts:
                    common.progress(f"{device} {regime} {s['shape']} k={s['k']} {layout}")
                    r = bench_shape(*s["shape"], s["k"], layout, regime, device, repeats, budget, mode.warmup(),
                                    args.bf16)
                    rows.append({**r, "used_by": s["used_by"]})
            what = ("forward+backward" if regime == "train" else "forward, inference_mode") + (
                ", bf16 autocast" if args.bf16 else "")
            common.print_table(
                f"## {device}: {what}, {_median_of(repeats, rows)} (ms); direct/fft = fft's speed-up", SHAPE_COLS,
                rows)
            tables[f"{device}_{regime}"] = rows
            pv = per_variant(rows, args.size, args.batch)
            if pv:
                common.print_table(
                    f"## {device}: {what}, per variant: every large-kernel conv of one step at {args.size}², "
                    f"batch {args.batch} (count × median, ms)", VARIANT_COLS, pv)
                tables[f"{device}_{regime}_per_variant"] = pv
        sweep = []
        for regime in ("train", "infer"):
            for layout in layouts if mode.full else ("contiguous",):
                for k in sweep_ks:
                    common.progress(f"{device} sweep {regime} k={k} {layout}")
                    sweep.append(bench_shape(*sweep_shape, k, layout, regime, device, repeats, budget,
                                             mode.warmup(), args.bf16))
        common.print_table(
            f"## {device}: crossover sweep over k at {'x'.join(map(str, sweep_shape))}, {_median_of(repeats, sweep)} "
            "(ms)",
            SWEEP_COLS, sweep)
        tables[f"{device}_sweep"] = sweep
        summary[device] = _summary(tables[f"{device}_train"], tables[f"{device}_infer"], sweep, sweep_ks,
                                   tables.get(f"{device}_train_per_variant", []))
    if "cuda" not in devices:
        notes.append("no GPU in this environment: CUDA / cuDNN rows not measured")
        common.say("\nno GPU in this environment: the CUDA (cuDNN) rows are not measured")
    cpu = summary.get("cpu") or next(iter(summary.values()))
    common.say("")
    headline = cpu["min_variant_speedup_train_nchw"]
    if headline is not None:
        per = ", ".join(f"{v} {s:.1f}x" for v, s in cpu["variant_speedup_train_nchw"].items())
        common.say(common.summary_line("fft speed-up over direct, fwd+bwd, NCHW, whole model's large kernels, "
                                       "worst variant", headline, TARGET_SPEEDUP) + f"  [{per}]")
    else:
        headline = cpu["min_speedup_train_nchw"]
    common.say(common.summary_line("fft speed-up over direct, fwd+bwd, NCHW, worst single TCNet shape",
                                   cpu["min_speedup_train_nchw"], TARGET_SPEEDUP))
    common.say(common.summary_line("fft speed-up over direct, fwd+bwd, channels_last, worst TCNet shape",
                                   cpu["min_speedup_train_cl"], TARGET_SPEEDUP))
    common.say(common.summary_line("fft (best layout) over direct (best layout), fwd+bwd, worst TCNet shape",
                                   cpu["min_speedup_train_best_layouts"], TARGET_SPEEDUP))
    common.say(f"auto picked the measured winner (or a tie within 10 %) in {cpu['auto_right']} of "
               f"{cpu['auto_cases']} cases; wrong: {cpu['auto_wrong'] or 'none'}")
    common.say(f"measured crossover (first k from which fft beats direct, NCHW): train "
               f"k={cpu['crossover_train_nchw']}, inference k={cpu['crossover_infer_nchw']}; choose_impl's rule: "
               "train NCHW mixed for 5<=k<15, fft from 15; train channels_last fft from k=9, mixed on maps up to "
               f"{MIXED_MAX_PIXELS} pixels; inference fft for k>=15 (NCHW), k>=29 on maps >= 48² (channels_last)")
    return {
        "settings": {"size": args.size, "batch": args.batch, "repeats": repeats, "devices": devices, "bf16": args.bf16,
                     "sweep_shape": list(sweep_shape), "sweep_ks": list(sweep_ks)},
        "tables": tables,
        "summary": {
            "metric": "fft speed-up over direct, forward+backward, NCHW, summed over a variant's large-kernel "
                      "convolutions, worst variant (tiny mode: worst shape)",
            "value": headline, "target": TARGET_SPEEDUP,
            "met": common.verdict(headline, TARGET_SPEEDUP),
            "per_device": summary,
        },
        "notes": notes,
    }


def _summary(train: list[dict], infer: list[dict], sweep: list[dict], ks, variants: list[dict]) -> dict:
    def worst(rows, layout):
        vals = [r["speedup"] for r in rows if r["layout"] == layout]
        return min(vals) if vals else None

    best_layouts = []
    by_shape: dict[str, dict] = {}
    for r in train:
        by_shape.setdefault(r["shape"], {})[r["layout"]] = r
    for pair in by_shape.values():
        best_layouts.append(min(p["direct_ms"] for p in pair.values()) / min(p["fft_ms"] for p in pair.values()))
    cases = train + infer + sweep
    wrong = [f"{r['regime']} {r['shape']} k={r['k']} {r['layout']}: picked {r['auto_picks']} "
             f"({r[r['auto_picks'] + '_ms']:.1f} ms vs {r[r['winner'] + '_ms']:.1f} ms)"
             for r in cases if not r["auto_ok"]]

    def crossover(regime):
        rows = sorted((r for r in sweep if r["regime"] == regime and r["layout"] == "NCHW"), key=lambda r: r["k"])
        for i, r in enumerate(rows):
            if all(q["fft_ms"] < q["direct_ms"] for q in rows[i:]):
                return r["k"]
        return None

    return {
        "min_speedup_train_nchw": worst(train, "NCHW"), "min_speedup_train_cl": worst(train, "CL"),
        "variant_speedup_train_nchw": {v["variant"]: v["speedup"] for v in variants if v["layout"] == "NCHW"},
        "variant_speedup_train_cl": {v["variant"]: v["speedup"] for v in variants if v["layout"] == "CL"},
        "min_variant_speedup_train_nchw": min((v["speedup"] for v in variants if v["layout"] == "NCHW"),
                                              default=None),
        "min_speedup_train_best_layouts": min(best_layouts) if best_layouts else None,
        "max_speedup_train_nchw": max((r["speedup"] for r in train if r["layout"] == "NCHW"), default=None),
        "min_speedup_infer_nchw": worst(infer, "NCHW"), "min_speedup_infer_cl": worst(infer, "CL"),
        "auto_cases": len(cases), "auto_right": len(cases) - len(wrong), "auto_wrong": wrong,
        "crossover_train_nchw": crossover("train"), "crossover_infer_nchw": crossover("infer"),
    }
