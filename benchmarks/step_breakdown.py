"""Where a train step's time goes, by kind of module: forward and backward hooks, no profiler.

``torch.profiler`` distorts per-op CPU times on this machine (docs/performance.md §2: a 1×1
convolution that takes 4.5-5.7 ms reads 39 ms under it, ``gelu_backward`` on 2×256×112² reads
47 ms against 3.7 ms timed alone), so it can rank ops but not split a step. This target times
whole modules instead: a forward pre-hook and a forward hook around each module's forward, a full
backward pre-hook and a full backward hook around its backward, on the outermost module of each
kind (a convolution inside the attention counts as attention). What no hooked module covers --
BatchNorm, the activations and residual adds between modules, concatenations, the loss, Adam --
is the "rest" row: the step minus the modules.

The step is ``train_step``'s (forward, ``CombinedLoss``, backward, fused Adam; the train stage's
allocator setting and flush-denormal). Each kind's model FLOPs are the forward FLOPs of its
modules (``tcnet.models.flops.flops_by_module``: 1 multiply-add = 2 FLOPs, large kernels counted
as the direct convolution) × 3 for forward + backward, so its GFLOP/s compares with
``train_step``'s model GFLOP/s (not for a first layer, whose input needs no gradient: its backward
computes the weight's alone, so its figure is not a rate). The hooks cost a little (backward hooks
add a node per module): the step is also timed without them, and both are printed.

``--scaling`` runs each model again on one thread and prints, per kind, the speed-up from one thread
to ``--threads`` and the milliseconds above a perfect split: on this 2-core machine tcnet_base is
near U-Net on one thread and loses the difference in the kinds that split badly (docs/performance.md
§2, seventh round).

``--ceiling`` also times whole steps of each TCNet model with one kind of work taken out (the CBAM
gates, GELU, LayerNorm2d, BatchNorm, the attention's SDPA; then all of them), interleaved with
U-Net, and prints the ratio ``train_step`` would report if that kind cost nothing: the most that
hand-written kernels for it could give (``benchmarks/ceiling.py``).

Caveat: the autograd engine may run another branch's backward nodes between a module's backward
pre-hook and its hook (it orders nodes by creation); the split is then slightly off between
neighbours, never in the total.
"""

from __future__ import annotations

import time
import warnings

from benchmarks import common
from benchmarks.ceiling import REMOVABLE as REMOVED_NAMES
from benchmarks.common import Col
from benchmarks.train_step import TARGET_RATIO

HELP = "where a train step's time goes by kind of module (hooks, no profiler), with each kind's GFLOP/s"


def add_arguments(p) -> None:
    p.add_argument("--size", type=int, default=None, help="image size (default 448; quick 224; tiny 32)")
    p.add_argument("--batch", type=int, default=None, help="batch (default 2)")
    p.add_argument("--models", nargs="+", default=None,
                   help="models (default tcnet_base unet; quick tcnet_small unet; tiny tcnet_tiny)")
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last (train_step's best setting)")
    p.add_argument("--scaling", action="store_true",
                   help="also run each model on 1 thread and print each kind's speed-up from 1 to --threads threads")
    p.add_argument("--ceiling", action="store_true",
                   help="also time each TCNet model's step with the gates, GELU, LayerNorm2d, BatchNorm or SDPA "
                        "taken out (each alone, then all), against U-Net: the ratio if that work were free")


def kind_of(module) -> str | None:
    """The row a module's time goes to, or None for a module that is not timed on its own."""
    from torch import nn

    from tcnet.models.attention import SpatialReductionAttention
    from tcnet.models.layers import ChannelAttention, LayerNorm2d, SpatialAttention
    from tcnet.models.lk_conv import LargeKernelDWConv

    if isinstance(module, LargeKernelDWConv):
        k = module.kernel_size
        return f"large-kernel depthwise {k}×{k}"
    if isinstance(module, SpatialReductionAttention):
        return "attention (projections + SDPA)"
    if isinstance(module, ChannelAttention):
        return "channel gate (CBAM)"
    if isinstance(module, SpatialAttention):
        return "spatial gate (CBAM)"
    if isinstance(module, LayerNorm2d):
        return "LayerNorm2d"
    if isinstance(module, nn.LayerNorm):
        return "LayerNorm"
    if isinstance(module, nn.GELU):
        return "GELU"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        depthwise = module.groups > 1 and module.groups == module.in_channels
        stride = "" if tuple(module.stride) == (1, 1) else f" stride {module.stride[0]}"
        return f"conv {kh}×{kw}{' depthwise' if depthwise else ''}{stride}"
    return None


def outermost(model) -> list[tuple[str, object, str]]:
    """``(name, module, kind)`` of each module with a kind that is not inside another such module."""
    picked: list[tuple[str, object, str]] = []
    for name, m in model.named_modules():
        kind = kind_of(m)
        if kind is None or any(name.startswith(p + ".") for p, _, _ in picked):
            continue
        picked.append((name, m, kind))
    return picked


class Hooks:
    """Forward and backward seconds per kind, summed over the calls while ``active``."""

    def __init__(self, modules: list[tuple[str, object, str]]):
        self.fwd: dict[str, float] = {}
        self.bwd: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.active = False
        self.handles = []
        for _, m, kind in modules:
            self._attach(m, kind)

    def _attach(self, m, kind: str) -> None:
        t: dict[str, float] = {}

        def pre(mod, args):
            t["f"] = time.perf_counter()

        def post(mod, args, out):
            if self.active:
                self.fwd[kind] = self.fwd.get(kind, 0.0) + time.perf_counter() - t["f"]
                self.calls[kind] = self.calls.get(kind, 0) + 1

        def bpre(mod, grad_out):
            t["b"] = time.perf_counter()

        def bpost(mod, grad_in, grad_out):
            if self.active and "b" in t:
                self.bwd[kind] = self.bwd.get(kind, 0.0) + time.perf_counter() - t.pop("b")

        self.handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post),
                         m.register_full_backward_pre_hook(bpre), m.register_full_backward_hook(bpost)]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


SCALING_COLS = [Col("kind", "kind of module"), Col("ms_1", "1 thread ms", ".1f"), Col("ms_n", "N threads ms", ".1f"),
                Col("speedup", "speed-up", ".2f"), Col("lost_ms", "ms over a perfect split", ".1f"),
                Col("lost_pct", "% of the step", ".1f")]


def scaling_rows(one: list[dict], many: list[dict], threads: int) -> list[dict]:
    """Per kind: fwd+bwd ms on 1 thread and on ``threads``, the speed-up, and the ms above ``ms_1 / threads``
    (what the kind loses to an imperfect split of its work), also as % of the ``threads`` step."""
    ms1 = {r["kind"]: r["ms"] for r in one}
    step_n = many[-1]["ms"]
    rows = []
    for r in many:
        a, b = ms1.get(r["kind"]), r["ms"]
        if a is None:
            continue
        lost = b - a / threads
        rows.append({"kind": r["kind"], "ms_1": a, "ms_n": b, "speedup": a / b if b > 0 else None,
                     "lost_ms": lost, "lost_pct": 100 * lost / step_n})
    return rows


COLS = [Col("kind", "kind of module"), Col("calls", "calls / step", "d"), Col("fwd_ms", "forward ms", ".1f"),
        Col("bwd_ms", "backward ms", ".1f"), Col("ms", "fwd+bwd ms", ".1f"), Col("pct", "% of step", ".1f"),
        Col("gflop", "model GFLOP (fwd+bwd)", ".1f"), Col("gflops", "GFLOP/s", ".0f")]


def breakdown(model_name: str, size: int, batch: int, channels_last: bool, repeats: int, warmup: int) -> dict:
    import torch

    from benchmarks.train_step import Config, Step
    from tcnet.models.flops import flops_by_module, meta_model
    from tcnet.training.runtime import flush_denormal

    is_tcnet = model_name.startswith("tcnet")
    step = Step(Config(model_name, "auto" if is_tcnet else None, channels_last), size, batch)
    module_flops = flops_by_module(meta_model(model_name), size, batch)
    mods = outermost(step.model)
    kind_flops: dict[str, float] = {}
    for name, _, kind in mods:
        kind_flops[kind] = kind_flops.get(kind, 0.0) + 3 * module_flops.get(name, 0)
    total_flops = 3 * module_flops[""]

    with flush_denormal(torch.device("cpu")), warnings.catch_warnings():
        # The first layer's input needs no gradient: its backward hook then fires on the output's.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(warmup):
            step()
        plain = []
        for _ in range(repeats):
            t = time.perf_counter()
            step()
            plain.append(time.perf_counter() - t)
        hooks = Hooks(mods)
        step()  # untimed: the hooks' first call
        hooks.active = True
        hooked = []
        for _ in range(repeats):
            t = time.perf_counter()
            step()
            hooked.append(time.perf_counter() - t)
        hooks.active = False
        hooks.remove()

    n = len(hooked)
    step_s = sum(hooked) / n  # the per-kind sums are means over the same steps
    rows = []
    for kind in sorted(set(hooks.fwd) | set(hooks.bwd), key=lambda k: -(hooks.fwd.get(k, 0) + hooks.bwd.get(k, 0))):
        f, b = hooks.fwd.get(kind, 0.0) / n, hooks.bwd.get(kind, 0.0) / n
        fl = kind_flops.get(kind, 0.0)
        rows.append({"kind": kind, "calls": hooks.calls.get(kind, 0) // n, "fwd_ms": 1e3 * f, "bwd_ms": 1e3 * b,
                     "ms": 1e3 * (f + b), "pct": 100 * (f + b) / step_s, "gflop": fl / 1e9,
                     "gflops": fl / (f + b) / 1e9 if fl and f + b > 0 else None})
    covered = sum(r["ms"] for r in rows) / 1e3
    rest_flops = total_flops - sum(kind_flops.values())
    rows.append({"kind": "rest (BatchNorm, adds, cat, other activations, loss, Adam)", "calls": None,
                 "fwd_ms": None, "bwd_ms": None, "ms": 1e3 * (step_s - covered), "pct": 100 * (step_s - covered) / step_s,
                 "gflop": rest_flops / 1e9, "gflops": None})
    rows.append({"kind": "step (with the hooks, mean)", "calls": None, "fwd_ms": None, "bwd_ms": None,
                 "ms": 1e3 * step_s, "pct": 100.0, "gflop": total_flops / 1e9, "gflops": total_flops / step_s / 1e9})
    plain_s = common.median(plain)
    return {"model": model_name, "channels_last": channels_last, "rows": rows, "step_s_hooked_mean": step_s,
            "step_s_plain_median": plain_s, "hook_overhead": step_s / plain_s - 1, "model_gflop_step": total_flops / 1e9,
            "modules_timed": len(mods)}


CEILING_COLS = [Col("config", "configuration"), Col("removed", "modules taken out", "d"),
                Col("step_s", "step s (median)", ".3f"), Col("vs_as_is", "vs as is", ".2f"),
                Col("gflops", "model GFLOP/s (as-is FLOPs)", ".1f"), Col("paired", "vs U-Net, paired", ".2f"),
                Col("paired_range", "paired min-max")]


def ceiling(model_name: str, size: int, batch: int, channels_last: bool, repeats: int, warmup: int) -> dict:
    """Step times of ``model_name`` as is and with each kind of :mod:`benchmarks.ceiling` taken out,
    interleaved with U-Net in the same layout; every ratio uses the FLOPs of the model as it is."""
    import torch

    from benchmarks import ceiling as cl
    from benchmarks.train_step import Config, Step, model_step_flops, paired_ratios
    from tcnet.training.runtime import flush_denormal

    flops = model_step_flops(model_name, size, batch)["total"]
    ref_flops = model_step_flops("unet", size, batch)["total"]
    layout = "channels_last" if channels_last else "NCHW"
    ref = f"unet {layout}"
    unet = Step(Config("unet", None, channels_last), size, batch)
    step = Step(Config(model_name, "auto", channels_last), size, batch)
    counts = cl.add_bypasses(step.model)
    steps, removed = {ref: unet}, {ref: 0}
    for label, kinds in cl.variants().items():
        steps[label] = cl.removed_step(step, step.model, kinds)
        removed[label] = sum(counts.get(k, 0) for k in kinds)
    with flush_denormal(torch.device("cpu")):
        times = common.time_interleaved(steps, repeats, warmup=warmup)
    as_is = common.median(times["as is"])
    rows = []
    for label, ts in times.items():
        fl = ref_flops if label == ref else flops
        t = common.median(ts)
        rows.append({"config": label if label == ref else f"{model_name} {label}", "removed": removed[label],
                     "step_s": t, "vs_as_is": t / as_is if label != ref else None, "gflops": fl / t / 1e9,
                     **paired_ratios(ts, times[ref], fl, ref_flops), "samples_s": [round(x, 4) for x in ts]})
    return {"rows": rows, "model_gflop_step": flops / 1e9, "reference": ref,
            "faults_per_step": {ref: common.median(unet.faults), model_name: common.median(step.faults)}}


def report_ceiling(name: str, layout: str, size: int, batch: int, channels_last: bool, repeats: int,
                   warmup: int) -> tuple[list[dict], dict]:
    """:func:`ceiling` for one model, printed; returns its rows and its summary entries."""
    common.progress(f"{name} {layout}: steps with each kind of work taken out, interleaved with U-Net "
                    f"({repeats} repeats)")
    c = ceiling(name, size, batch, channels_last, repeats, warmup)
    common.print_table(
        f"## {name} {layout}: the ratio if a kind of work were free -- whole steps with it taken out, "
        f"interleaved with {c['reference']}, median of {repeats}; model FLOP/s counted with the "
        f"model as it is ({c['model_gflop_step']:.1f} GFLOP a step)", CEILING_COLS, c["rows"])
    common.say(f"page faults per step (median): {', '.join(f'{k} {v:.0f}' for k, v in c['faults_per_step'].items())}")
    as_is, best = c["rows"][1], c["rows"][-1]
    common.say(f"{name}: with {', '.join(REMOVED_NAMES)} all taken out the step takes {best['vs_as_is']:.2f}× "
               f"as long: {best['paired']:.2f}× U-Net's model FLOP/s against {as_is['paired']:.2f}× as is "
               f"(paired, this run; train_step's target {TARGET_RATIO}×)")
    return c["rows"], {"ceiling_as_is_paired": as_is["paired"], "ceiling_all_removed_paired": best["paired"],
                       "ceiling_all_removed_vs_as_is": best["vs_as_is"]}


def run(args, mode: common.Mode) -> dict:
    size = args.size or mode.pick(32, 224, 448)
    batch = args.batch or 2
    repeats = args.repeats or mode.pick(1, 3, 5)
    models = args.models or mode.pick(["tcnet_tiny"], ["tcnet_small", "unet"], ["tcnet_base", "unet"])
    channels_last = not args.nchw
    import torch

    from tcnet.utils.heap import retain_freed_memory

    retain_freed_memory(trim_threshold=None)  # the train stage's allocator setting, as train_step
    warmup = mode.pick(1, 2, 3)
    threads = torch.get_num_threads()
    ceiling_repeats = args.repeats or mode.pick(1, 3, 7)
    notes = ["BatchNorm is not hooked (an in-place ReLU after it conflicts with backward hooks): it is in 'rest'"]
    if args.scaling and threads == 1:
        notes.append("--scaling compares 1 thread with --threads; this run had 1 thread, so there is no scaling table")
        common.say(f"note: {notes[-1]}")
    tables, summary = {}, {}
    for name in models:
        layout = "channels_last" if channels_last else "NCHW"
        common.progress(f"{name} {layout} at {size}², batch {batch}: {repeats} steps without hooks, {repeats} with")
        r = breakdown(name, size, batch, channels_last, repeats, warmup)
        common.print_table(
            f"## {name} {layout}, train step at {size}², batch {batch}: time by kind of module (mean of {repeats} "
            f"hooked steps; step without hooks {r['step_s_plain_median']:.3f} s median, hooks "
            f"{100 * r['hook_overhead']:+.1f} %)", COLS, r["rows"])
        tables[f"{name} {layout}"] = r["rows"]
        summary[name] = {k: r[k] for k in ("step_s_plain_median", "step_s_hooked_mean", "hook_overhead",
                                           "model_gflop_step", "modules_timed")}
        if args.scaling and threads > 1:
            common.progress(f"{name} {layout}: the same on 1 thread")
            torch.set_num_threads(1)
            try:
                r1 = breakdown(name, size, batch, channels_last, repeats, warmup)
            finally:
                torch.set_num_threads(threads)
            rows = scaling_rows(r1["rows"], r["rows"], threads)
            common.print_table(
                f"## {name} {layout}: thread scaling by kind of module, 1 → {threads} threads (hooked steps; step "
                f"without hooks {r1['step_s_plain_median']:.3f} s on 1 thread, {r['step_s_plain_median']:.3f} s on "
                f"{threads}: {r1['step_s_plain_median'] / r['step_s_plain_median']:.2f}×)", SCALING_COLS, rows)
            tables[f"{name} {layout} scaling"] = rows
            summary[name]["step_s_plain_median_1_thread"] = r1["step_s_plain_median"]
        if args.ceiling and name.startswith("tcnet"):
            tables[f"{name} {layout} ceiling"], entries = report_ceiling(
                name, layout, size, batch, channels_last, ceiling_repeats, warmup)
            summary[name].update(entries)
    return {
        "settings": {"size": size, "batch": batch, "repeats": repeats, "channels_last": channels_last,
                     "method": "forward (pre-)hooks and full backward (pre-)hooks on the outermost module of each "
                               "kind; model FLOPs from tcnet.models.flops.flops_by_module x 3"},
        "tables": tables,
        "summary": {"metric": "train-step time by kind of module (no target)", "value": None, "target": None,
                    "met": None, "models": summary},
        "notes": notes,
    }
