"""TCNet train-step throughput as model FLOP/s, against smp U-Net/ResNet-34 at the same size and batch.

A train step is: forward, the project's loss (``CombinedLoss``, λ = 0.5: WCE + Dice), backward,
``Adam(fused=True).step()``, ``zero_grad(set_to_none=True)`` -- in float32 on CPU, as the train stage runs
(denormals flushed, freed heap memory retained: ``tcnet.utils.heap``).

Model FLOPs convention: the forward FLOPs of the architecture counted by ``tcnet.models.flops``
(``FlopCounterMode``; 1 multiply-add = 2 FLOPs; convolutions, matmuls and attention only; the large
depthwise kernels counted as the DIRECT convolution whatever ``lk_impl`` computes them with), times
the batch, times 3 for a train step (backward ≈ 2 × forward). Model FLOP/s = those FLOPs / the
measured median step time: an FFT that does the same layer with fewer operations raises it.

Every configuration (model × ``lk_impl`` × memory format) is built once and all are timed
interleaved in one process. The reference is the faster U-Net setting; the ratio is the best TCNet
setting's model FLOP/s over it (target >= 0.9), taken two ways: of the median step times, and
paired -- repeat i of a configuration against repeat i of the reference (same round, seconds
apart), the median of those ratios. The verdict uses the paired one: on a shared 2-core VM the
machine's speed drifts between rounds by more than the gap being measured, and pairing cancels
what the two sides of a ratio share. ``--profile`` adds torch.profiler tables for the best
setting of each variant and for U-Net: the top-10 ops by self CPU time, self time by kind of op,
time per phase of the step. They rank ops, but the profiler inflates some CPU ops several-fold on
this machine; where a step's time goes is ``python -m benchmarks step_breakdown`` (module hooks).
``--compile`` adds each model again, channels_last, through ``torch.compile`` (the train stage's
``train.compile``), with two untimed steps first and the first (compiling) step's time printed.
``--bf16`` adds each model again in every layout under CPU bfloat16 autocast (the train stage's
``train.cpu_bf16``); a bf16 row's ratio is to the faster bf16 U-Net setting, so each precision is
compared with U-Net in the same precision.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from benchmarks import common
from benchmarks.common import Col

HELP = "TCNet train-step model FLOP/s vs smp U-Net/ResNet-34 at the same size and batch"
TARGET_RATIO = 0.9
REFERENCE = "unet"


@dataclass(frozen=True)
class Config:
    model: str
    lk_impl: str | None = None  # None: not a TCNet
    channels_last: bool = False
    compiled: bool = False  # the model through torch.compile (inductor), as train.compile does
    bf16: bool = False  # under CPU bfloat16 autocast, as train.cpu_bf16 runs

    @property
    def label(self) -> str:
        layout = "channels_last" if self.channels_last else "NCHW"
        return (f"{self.model} {self.lk_impl + ' ' if self.lk_impl else ''}{layout}"
                f"{' compiled' if self.compiled else ''}{' bf16' if self.bf16 else ''}")

    @property
    def is_reference(self) -> bool:
        return self.model == REFERENCE


def add_arguments(p) -> None:
    p.add_argument("--size", type=int, default=None, help="image size (default 448; quick 224; tiny 32)")
    p.add_argument("--batch", type=int, default=None, help="batch (default 2)")
    p.add_argument("--models", nargs="+", default=None,
                   help="TCNet variants (default tcnet_tiny tcnet_small tcnet_base; quick tiny and small)")
    p.add_argument("--profile", action="store_true",
                   help="add torch.profiler tables (op ranking; for the split of a step use step_breakdown)")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="the default (kept for old command lines)")
    p.add_argument("--compile", action="store_true",
                   help="also time U-Net and every variant channels_last through torch.compile (the train stage's "
                        "train.compile); compiling takes minutes on CPU (~75 s U-Net, ~3 min tcnet_base)")
    p.add_argument("--bf16", action="store_true",
                   help="also time U-Net and every variant in every layout under CPU bfloat16 autocast (the train "
                        "stage's train.cpu_bf16); their ratios are to the faster bf16 U-Net setting")


def configs_for(mode: common.Mode, models: list[str] | None, compiled: bool = False,
                bf16: bool = False) -> list[Config]:
    variants = models or mode.pick(["tcnet_tiny"], ["tcnet_tiny", "tcnet_small"],
                                   ["tcnet_tiny", "tcnet_small", "tcnet_base"])
    layouts = (False,) if mode.tiny else (False, True)
    cfgs = [Config(REFERENCE, None, cl) for cl in layouts]
    for v in variants:
        cfgs += [Config(v, "auto", cl) for cl in layouts]
    plain = list(cfgs)
    if compiled:  # each model again in the last layout (channels_last but in --tiny), compiled: minutes each
        cfgs += [Config(c.model, c.lk_impl, c.channels_last, compiled=True) for c in plain
                 if c.channels_last == layouts[-1]]
    if bf16:  # each model again in every layout, under CPU autocast
        cfgs += [Config(c.model, c.lk_impl, c.channels_last, bf16=True) for c in plain]
    if mode.full and "tcnet_tiny" in variants:
        cfgs.append(Config("tcnet_tiny", "direct", False))  # what the fast path saves, on a whole step
    return cfgs


class Step:
    """One configured model with its optimizer, loss and a fixed batch; calling it runs one step."""

    def __init__(self, cfg: Config, size: int, batch: int):
        import tcnet
        from tcnet.losses.combined import CombinedLoss

        torch.manual_seed(0)
        kwargs = {"lk_impl": cfg.lk_impl} if cfg.lk_impl else {}
        self.model = tcnet.create_model(cfg.model, **kwargs).train()
        self.x = torch.randn(batch, 3, size, size)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        g = torch.Generator().manual_seed(1)
        self.mask = (torch.rand(batch, 1, size, size, generator=g) > 0.7).float()
        self.loss_fn = CombinedLoss(ce_weight=0.5)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4, fused=True)  # as the train stage builds it
        if cfg.compiled:
            self.model = torch.compile(self.model)  # as the train stage does with train.compile
        self.bf16 = cfg.bf16
        self.faults: list[int] = []  # minor page faults of each call (first touches of fresh pages)
        self.first_call_s: float | None = None  # the first step (a compiled model compiles in it)

    def __call__(self, label=None) -> None:
        import resource
        import time

        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        from tcnet.training.loop import autocast

        start = time.perf_counter()
        with autocast(torch.device("cpu"), False, cpu_bf16=self.bf16):  # as the train loop enters it
            self._step(label or _no_label)
        if self.first_call_s is None:
            self.first_call_s = time.perf_counter() - start
        self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    def _step(self, label) -> None:
        with label("step: zero_grad"):
            self.opt.zero_grad(set_to_none=True)
        with label("step: forward"):
            out = self.model(self.x)
        with label("step: loss"):
            loss = self.loss_fn(out, self.mask)
        with label("step: backward"):
            loss.backward()
        with label("step: optimizer (Adam)"):
            self.opt.step()


@contextmanager
def _no_label(name):
    yield


def paired_ratios(times, ref_times, flops: float, ref_flops: float) -> dict:
    """Repeat i of a configuration against repeat i of the reference (same round, seconds apart):
    ``paired`` (the median ratio of model FLOP/s), ``paired_range`` and every ratio."""
    paired = [(flops / t) / (ref_flops / t_ref) for t, t_ref in zip(times, ref_times)]
    return {"paired": common.median(paired), "paired_range": f"{min(paired):.2f}-{max(paired):.2f}",
            "paired_all": [round(v, 4) for v in paired]}


def model_step_flops(name: str, size: int, batch: int) -> dict[str, int]:
    """A train step's model FLOPs by kind (``tcnet.models.flops.flops_by_kind`` × batch × 3; model built on meta)."""
    from tcnet.models.flops import flops_by_kind, meta_model

    return {k: v * batch * 3 for k, v in flops_by_kind(meta_model(name), size).items()}


ROW_COLS = [
    Col("config", "configuration"), Col("step_s", "step s (median)", ".3f"), Col("min_s", "min s", ".3f"),
    Col("images_per_s", "images/s", ".2f"), Col("gflop_step", "model GFLOP/step", ".1f"),
    Col("gflops", "model GFLOP/s", ".1f"), Col("ratio", "vs U-Net", ".2f"),
    Col("paired", "vs U-Net, paired", ".2f"), Col("paired_range", "paired min-max"),
    Col("faults", "page faults / step", ".0f"),
]


def run(args, mode: common.Mode) -> dict:
    size = args.size or mode.pick(32, 224, 448)
    batch = args.batch or 2
    repeats = args.repeats or mode.pick(1, 3, 9)
    cfgs = configs_for(mode, args.models, compiled=args.compile, bf16=args.bf16)
    from tcnet.utils.heap import retain_freed_memory

    # The train stage's allocator setting on CPU (tcnet/stages/train.py), for every configuration
    # alike. Without it the configurations' page faults depended on which model ran before them in
    # this shared process, not on the model (docs/performance.md §2).
    heap = retain_freed_memory(trim_threshold=None)
    common.progress(f"building {len(cfgs)} configurations at {size}², batch {batch}")
    steps = {c.label: Step(c, size, batch) for c in cfgs}
    by_kind = {m: model_step_flops(m, size, batch) for m in dict.fromkeys(c.model for c in cfgs)}
    flops = {m: k["total"] for m, k in by_kind.items()}
    flop_rows = [{"model": m, **{k: v / 1e9 for k, v in k.items()}} for m, k in by_kind.items()]
    common.print_table(f"## model GFLOP per train step by kind, {size}², batch {batch} (forward × batch × 3; "
                       "31×31 kernels counted as the direct convolution)", FLOP_COLS, flop_rows)
    common.progress("timing (interleaved)")
    from tcnet.training.runtime import flush_denormal

    with flush_denormal(torch.device("cpu")):  # as the train stage runs, for every configuration alike
        # A compiled model compiles in its first call and may recompile in its second (the optimizer
        # state and grads exist from then on): two untimed calls then.
        times = common.time_interleaved(steps, repeats, warmup=mode.warmup(2 if args.compile else 1),
                                        budget_s=mode.pick(None, 30.0, 600.0))
    rows = []
    for c in cfgs:
        st = common.stats(times[c.label])
        rows.append({
            "config": c.label, "model": c.model, "lk_impl": c.lk_impl, "channels_last": c.channels_last,
            "step_s": st["median_s"], "min_s": st["min_s"], "times_s": st,
            "images_per_s": batch / st["median_s"], "gflop_step": flops[c.model] / 1e9,
            "faults": common.median(steps[c.label].faults[-len(times[c.label]):]),
            "compiled": c.compiled, "bf16": c.bf16, "first_step_s": steps[c.label].first_call_s,
            "gflops": flops[c.model] / st["median_s"] / 1e9,
        })
    # The reference of each precision: the faster U-Net setting in it (float32 unless --bf16).
    refs = {bf: max((r for r in rows if r["model"] == REFERENCE and r["bf16"] == bf), key=lambda r: r["gflops"])
            for bf in {r["bf16"] for r in rows}}
    for r in rows:
        r["reference"] = refs[r["bf16"]]["config"]
        r["ratio"] = r["gflops"] / refs[r["bf16"]]["gflops"]
        # Paired: repeat i of this configuration against repeat i of the reference, run in the same
        # round seconds apart, so a slow patch of the machine hits both sides of each ratio.
        r.update(paired_ratios(times[r["config"]], times[r["reference"]], flops[r["model"]], flops[REFERENCE]))
    common.print_table(
        f"## train step at {size}², batch {batch}, float32{' (bf16 rows: CPU bfloat16 autocast)' if args.bf16 else ''}, "
        f"{common.median_of(repeats, [r['times_s'] for r in rows])}; model FLOPs = direct-conv forward FLOPs × "
        "batch × 3; ratio to the faster U-Net "
        f"setting ({' and '.join(r['config'] for r in refs.values())}): of the medians, and "
        "paired (median over repeats of repeat i's ratio)", ROW_COLS, rows)
    tcnet_rows = [r for r in rows if r["model"] != REFERENCE]
    # The target's comparison is float32 (bf16 rows: the CPU autocast experiment, against bf16 U-Net,
    # reported beside it, never the verdict)
    best = max((r for r in tcnet_rows if not r["bf16"]), key=lambda r: r["paired"])
    best_per_variant = {}
    for r in tcnet_rows:
        if r["model"] not in best_per_variant or r["paired"] > best_per_variant[r["model"]]["paired"]:
            best_per_variant[r["model"]] = r
    common.say("")
    for r in rows:
        if r["compiled"]:
            common.say(f"{r['config']}: first step (compiling) {r['first_step_s']:.1f} s (shorter when inductor's "
                       "on-disk cache, /tmp/torchinductor_$USER by default, holds an earlier run's kernels)")
    for v, r in best_per_variant.items():
        common.say(f"best setting for {v}: {r['config']} -> {r['gflops']:.1f} GFLOP/s ({r['ratio']:.2f}× U-Net; "
                   f"paired {r['paired']:.2f}×, {r['paired_range']})")
    common.say(common.summary_line(f"best TCNet model FLOP/s over U-Net, paired ({best['config']})", best["paired"],
                                   TARGET_RATIO))
    result = {
        "settings": {"size": size, "batch": batch, "repeats": repeats, "dtype": "float32", "bf16_rows": bool(args.bf16),
                     "loss": "CombinedLoss(ce_weight=0.5)", "optimizer": "Adam(lr=1e-4, fused=True)",
                     "allocator": "glibc, freed memory retained (tcnet.utils.heap, as the train stage)" if heap
                                  else "as it comes (not glibc)",
                     "flops_convention": "forward FLOPs (tcnet.models.flops, direct conv, 1 MAC = 2 FLOPs) "
                                         "x batch x 3"},
        "tables": {"steps": rows, "flops_by_kind": flop_rows},
        "summary": {
            "metric": "best float32 TCNet model FLOP/s / U-Net model FLOP/s (train step), median of the per-repeat "
                      "ratios",
            "value": best["paired"], "target": TARGET_RATIO, "met": common.verdict(best["paired"], TARGET_RATIO),
            "ratio_of_medians": best["ratio"],
            "best_config": best["config"], "reference_config": best["reference"],
            "best_per_variant": {v: {"config": r["config"], "gflops": r["gflops"], "ratio": r["ratio"],
                                     "paired": r["paired"], "paired_range": r["paired_range"]}
                                 for v, r in best_per_variant.items()},
        },
        "notes": [],
    }
    if args.profile:
        # the best setting of every variant, and U-Net
        labels = list(dict.fromkeys([r["config"] for r in best_per_variant.values()] +
                                    [r["config"] for r in refs.values()]))
        result["tables"]["profile"] = {}
        for c in (next(c for c in cfgs if c.label == lab) for lab in labels):
            with flush_denormal(torch.device("cpu")):  # under the settings the steps were timed with
                top, cats, phases, shapes = profile_step(steps[c.label])
            common.print_table(f"## profile: {c.label}, one step, top 10 ops by self CPU time", PROFILE_COLS, top)
            common.print_table(f"## profile: {c.label}, self CPU time by kind of op", CAT_COLS, cats)
            common.print_table(f"## profile: {c.label}, CPU time by phase of the step", PHASE_COLS, phases)
            common.print_table(f"## profile: {c.label}, top 10 (op, input shapes) by self CPU time", SHAPE_COLS,
                               shapes)
            result["tables"]["profile"][c.label] = {"top_ops": top, "by_kind": cats, "by_phase": phases,
                                                    "by_shape": shapes}
    return result


FLOP_COLS = [Col("model", "model"), Col("total", "total", ".1f"), Col("convolution", "convolutions but 31×31", ".1f"),
             Col("large_kernel", "31×31 depthwise", ".1f"), Col("attention_matmul", "attention + matmul", ".1f")]
PROFILE_COLS = [Col("op", "op"), Col("self_ms", "self CPU ms", ".1f"), Col("pct", "% of step", ".1f"),
                Col("calls", "calls", "d"), Col("ms_per_call", "ms/call", ".2f")]
CAT_COLS = [Col("kind", "kind"), Col("self_ms", "self CPU ms", ".1f"), Col("pct", "% of step", ".1f")]
SHAPE_COLS = [Col("op", "op"), Col("shapes", "input shapes"), Col("self_ms", "self CPU ms", ".1f"),
              Col("pct", "% of step", ".1f"), Col("calls", "calls", "d")]
PHASE_COLS = [Col("kind", "phase"), Col("self_ms", "CPU ms", ".1f"), Col("pct", "% of step", ".1f")]

# Which kind of work an aten op is (for the "where the time goes" table).
KINDS = [
    ("FFT (large kernels)", ("fft",)),
    ("convolution (oneDNN)", ("conv", "mkldnn")),
    ("pooling / resampling", ("pool", "upsample", "interp")),  # before matmul: "bilinear" contains "linear"
    ("matmul / linear", ("addmm", "::mm", "bmm", "matmul", "linear")),
    ("attention (SDPA)", ("attention",)),
    ("normalisation", ("batch_norm", "layer_norm", "native_norm")),
    ("optimizer (Adam)", ("_foreach", "adam")),
    ("copies / layout", ("copy_", "contiguous", "clone", "cat", "constant_pad", "pad", "to_copy", "empty_like",
                         "flip", "index", "slice", "permute")),
    ("element-wise", ("add", "mul", "gelu", "relu", "sigmoid", "sub", "div", "sum", "mean", "amax", "max",
                      "where", "threshold", "exp", "log", "fill", "zero", "clamp", "neg", "pow", "sqrt",
                      "binary_cross", "softplus")),
]


def _kind(op: str) -> str:
    return common.first_kind(op, KINDS)


def profile_step(step) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """One step (after a warm-up step) under torch.profiler: the top-10 ops by self CPU time, self
    time by kind of op, CPU time per phase (forward, loss, backward, optimizer), and the top-10
    (op, input shapes) pairs -- which layers the time goes to."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step(record_function)
    by_shape = [e for e in prof.key_averages(group_by_input_shape=True)
                if e.self_cpu_time_total > 0 and not e.key.startswith("step: ")]
    by_shape.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    averages = prof.key_averages()
    phase_events = [e for e in averages if e.key.startswith("step: ")]
    phase_total = sum(e.cpu_time_total for e in phase_events)
    phases = [{"kind": e.key[len("step: "):], "self_ms": e.cpu_time_total / 1000,
               "pct": 100 * e.cpu_time_total / phase_total} for e in phase_events]
    events = [e for e in averages if e.self_cpu_time_total > 0 and not e.key.startswith("step: ")]
    total = sum(e.self_cpu_time_total for e in events)  # microseconds, exclusive, sums to the step
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    top = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1000, "pct": 100 * e.self_cpu_time_total / total,
            "calls": e.count, "ms_per_call": e.self_cpu_time_total / 1000 / max(e.count, 1)} for e in events[:10]]
    cats: dict[str, float] = {}
    for e in events:
        cats[_kind(e.key)] = cats.get(_kind(e.key), 0.0) + e.self_cpu_time_total
    kinds = [{"kind": k, "self_ms": v / 1000, "pct": 100 * v / total}
             for k, v in sorted(cats.items(), key=lambda kv: kv[1], reverse=True)]
    kinds.append({"kind": "total (one step)", "self_ms": total / 1000, "pct": 100.0})
    shapes = [{"op": e.key, "shapes": _shapes(e.input_shapes), "self_ms": e.self_cpu_time_total / 1000,
               "pct": 100 * e.self_cpu_time_total / total, "calls": e.count} for e in by_shape[:10]]
    return top, kinds, phases, shapes


def _shapes(input_shapes) -> str:
    """The tensor inputs' shapes, short: ``2x64x112x112, 64x1x31x31``."""
    parts = ["x".join(map(str, s)) for s in (input_shapes or []) if isinstance(s, (list, tuple)) and s]
    return ", ".join(parts[:3])
