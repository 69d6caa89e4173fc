"""The paper-profile train step on a CUDA GPU: tcnet_base, 448², batch 15, bf16 autocast, channels_last.

Adam (fused), ``CombinedLoss`` (λ = 0.5, class weights, the FOV as valid mask) computed in float32
on float32 logits (as the train stage does). One row per ``--lk-impl`` (``auto``: on CUDA the fastest of direct, fft and mixed, measured
once per shape, tcnet/models/lk_tune.py; ``direct``: cuDNN's depthwise kernels) and a reference row, smp's U-Net/ResNet-34 at the same size, batch and precision
(``--reference none`` to skip): the issue's target 2 on the GPU. Each configuration runs on its
own (so that its peak memory is its own): warm-up steps (cuDNN autotuning off by default;
``--benchmark-cudnn``), then the median of the timed steps, CUDA-synchronised. ``--compile``
adds ``torch.compile`` (its compile time is reported, not timed in the steps). ``--cuda-graph``
runs the train stage's captured step (``train.cuda_graph``, tcnet/training/cuda_graph.py): the
whole step -- forward, loss, backward, fused Adam -- in one CUDA graph after eager warm-up steps
(which measure ``auto``'s choices; the capture reuses them); its replays are timed. ``--profile`` adds, per
configuration, a few profiled steps (``torch.profiler``): the GPU's busy time against the step's,
kernels per step, and the kernel time by kind (FFT, GEMM, convolution, attention, elementwise,
...) and by kernel: where the step's time goes on the GPU.

Reported: step time, images/s, model FLOP/s (forward FLOPs of the architecture with the direct
convolution, ``tcnet.models.flops``, × batch × 3), the ratio to the reference's model FLOP/s,
model-FLOP utilisation (MFU) against the GPU's dense bf16 peak (a table of known GPUs;
``--peak-tflops`` for others), and peak memory (``torch.cuda.max_memory_allocated`` / ``_reserved``).

Without CUDA it measures nothing, says so, writes a JSON whose summary says so, and exits 0
(``--device cpu`` runs the same code on the CPU: a check of the machinery, not a GPU figure).
"""

from __future__ import annotations

import functools
import gc
import time

import torch

from benchmarks import common
from benchmarks.common import Col

HELP = "paper-profile train step on CUDA: tcnet_base 448² batch 15 bf16 channels_last, vs U-Net (exits without CUDA)"
NO_GPU = "no CUDA GPU in this environment: gpu_step measured nothing (run it on a GPU machine)"
MFU_TARGET = 35.0  # the target for the paper profile, % of the bf16 peak

# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, without sparsity).
BF16_PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 80GB HBM3": 989.4,  # SXM
    "H100 SXM": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,  # other H100 names: the PCIe figure (the conservative one)
    "GH200": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.1,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.2,
    "RTX 3090": 71.0,
}


def peak_tflops(name: str) -> float | None:
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):  # most specific first
        if key.lower() in name.lower():
            return BF16_PEAK_TFLOPS[key]
    return None


def add_arguments(p) -> None:
    p.add_argument("--model", default="tcnet_base")
    p.add_argument("--reference", default="unet", help="reference model at the same settings ('none' to skip)")
    p.add_argument("--size", type=int, default=None, help="image size (default 448)")
    p.add_argument("--batch", type=int, default=None, help="batch (default 15)")
    p.add_argument("--lk-impl", nargs="+", default=["auto"], choices=("auto", "direct", "fft", "mixed"),
                   help="one row per implementation of the large kernels (default auto)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="float32 instead of bf16 autocast")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile each model (compile time reported apart)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture the whole step in a CUDA graph after eager warm-up and time its replays")
    p.add_argument("--profile", action="store_true",
                   help="also profile a few steps per configuration: GPU busy time, kernel time by kind and by kernel")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    p.add_argument("--benchmark-cudnn", action="store_true",
                   help="torch.backends.cudnn.benchmark = True, as the paper profile trains (deterministic: false)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; quick 5)")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu checks the machinery, no GPU figure")


COLS = [Col("config", "configuration"), Col("step_ms", "step ms (median)", ".1f"),
        Col("images_per_s", "images/s", ".1f"), Col("tflops", "model TFLOP/s", ".2f"),
        Col("vs_reference", "÷ reference", ".2f"), Col("mfu_pct", "MFU %", ".2f"),
        Col("compile_s", "compile / capture s", ".1f"),
        Col("max_alloc_gib", "max allocated GiB", ".2f"), Col("max_reserved_gib", "max reserved GiB", ".2f")]


def _skipped() -> dict:
    common.say(NO_GPU)
    common.say("on a CUDA machine: python -m benchmarks gpu_step   (tcnet_base, 448², batch 15, bf16, channels_last)")
    return {"settings": {}, "tables": {}, "skipped": NO_GPU,
            "summary": {"metric": "paper-profile GPU train step", "value": None, "target": None, "met": None,
                        "skipped": NO_GPU},
            "notes": [NO_GPU]}


# Kernel names -> kind, first match wins (cuFFT, cuBLAS/CUTLASS, cuDNN, PyTorch's own kernels).
KERNEL_KINDS = (
    ("fft", ("fft",)),
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("convolution", ("conv", "dgrad", "wgrad", "fprop", "implicit_gemm", "depthwise", "winograd")),
    ("gemm", ("gemm", "nvjet", "cutlass", "cublas", "xmma", "matmul")),
    ("normalisation", ("norm",)),
    ("reduction", ("reduce", "softmax", "sum_", "mean")),
    ("copy / layout", ("copy", "transpose", "permute", "cat", "memcpy", "memset", "pad", "fill")),
    ("elementwise", ("elementwise", "vectorized", "unrolled")),
)


def kernel_kind(name: str) -> str:
    return common.first_kind(name, KERNEL_KINDS)


def _kernel_events(prof, device: torch.device) -> list[tuple[str, float, float]]:
    """``(name, start_us, duration_us)`` of each GPU kernel (on CPU: each op's self time, a
    stand-in for kernels so that ``--device cpu`` checks the same code)."""
    out = []
    for e in prof.events():
        if device.type == "cuda":
            # kernels only: not the CPU's ops, nor the ranges a CPU annotation draws on the GPU's
            # timeline (`Optimizer.step#Adam.step`), which overlap the kernels they contain
            if e.device_type != torch.autograd.DeviceType.CUDA or getattr(e, "is_user_annotation", False):
                continue
            out.append((e.name, float(e.time_range.start), float(e.time_range.elapsed_us())))
        else:
            out.append((e.name, float(e.time_range.start), float(e.self_cpu_time_total)))
    return out


def _busy_us(kernels: list[tuple[str, float, float]]) -> float:
    """Time with at least one kernel running (the union of their intervals)."""
    busy, end = 0.0, float("-inf")
    for _, start, dur in sorted(kernels, key=lambda k: k[1]):
        stop = start + dur
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    return busy


def profile_steps(step, sync, device: torch.device, steps: int = 3) -> dict:
    """Run ``steps`` steps under torch.profiler: wall time, GPU busy time, kernel time by kind and
    the top kernels, all per step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = (time.perf_counter() - t0) / steps
    kernels = _kernel_events(prof, device)
    total = sum(d for _, _, d in kernels) / steps
    by_kind: dict[str, list[float]] = {}
    by_name: dict[str, list[float]] = {}
    for name, _, dur in kernels:
        for table, key in ((by_kind, kernel_kind(name)), (by_name, name)):
            cell = table.setdefault(key, [0, 0.0])
            cell[0] += 1
            cell[1] += dur

    def rows(table, label):
        return [{label: k, "calls": n / steps, "ms": us / steps / 1000, "share_pct": 100 * us / steps / total}
                for k, (n, us) in sorted(table.items(), key=lambda kv: -kv[1][1])]

    return {"profiled_steps": steps, "wall_ms": wall * 1000, "kernel_ms": total / 1000,
            "busy_ms": _busy_us(kernels) / steps / 1000 if device.type == "cuda" else None, "kernels_per_step": len(kernels) / steps,
            "by_kind": rows(by_kind, "kind"), "top_kernels": rows(by_name, "kernel")[:15]}


def measure(name: str, lk_impl: str | None, args, size: int, batch: int, steps: int, warmup: int,
            device: torch.device) -> dict:
    """One configuration's train step: median time and peak memory (and its profile)."""
    import tcnet
    from tcnet.losses.combined import CombinedLoss
    from tcnet.models.flops import model_complexity
    from tcnet.training.cuda_graph import WARMUP_STEPS, GraphedTrainStep
    from tcnet.training.loop import forward_loss

    torch.manual_seed(0)
    overrides = {"lk_impl": lk_impl} if lk_impl else {}
    model = tcnet.create_model(name, **overrides).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    mask = (torch.rand(batch, 1, size, size, device=device) > 0.7).float()
    fov = torch.ones_like(mask)
    # the train stage's loss: class weights (theirs come from the run's images; these are typical of
    # ISIC) on the device, the FOV as its valid mask
    loss_fn = CombinedLoss(ce_weight=0.5, class_weights=[0.7, 1.8]).to(device)
    # as the train stage builds it (capturable when its step is captured: train.cuda_graph)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True, capturable=bool(args.cuda_graph))
    sync = common.cuda_sync_for(device)

    def make_step(forward):
        loss = functools.partial(forward_loss, forward, loss_fn, device=device, bf16=args.bf16)

        def step():  # the train loop's eager step (tcnet/training/loop.py)
            opt.zero_grad(set_to_none=True)
            loss(x, mask, fov).backward()
            opt.step()
        return step

    step = make_step(model)
    setup_s = None
    if args.compile:
        # One eager step first: auto measures its choices there, and the compiled graph reuses them
        # (lk_tune.cached_impl) instead of the fixed rule. Then the first compiled call compiles.
        step()
        sync()
        step = make_step(torch.compile(model))
        t0 = time.perf_counter()
        step()
        sync()
        setup_s = time.perf_counter() - t0
    if args.cuda_graph:  # the train stage's own captured step (train.cuda_graph)
        graphed = GraphedTrainStep(model, opt, functools.partial(forward_loss, model, loss_fn, device=device,
                                                                 bf16=args.bf16), batch_size=batch)
        t0 = time.perf_counter()
        for _ in range(WARMUP_STEPS + 1):  # eager warm-up steps, then the capture and its first replay
            graphed(x, mask, fov)
        sync()
        setup_s = time.perf_counter() - t0

        def step():
            graphed(x, mask, fov)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    st = common.stats(common.time_interleaved({"step": step}, steps, warmup=warmup, sync=sync)["step"])
    prof = profile_steps(step, sync, device) if args.profile else None
    flops = model_complexity(name, size)["flops"] * batch * 3
    cuda = device.type == "cuda"
    row = {
        "model": name, "lk_impl": lk_impl,
        "config": f"{name} {size}² b{batch} {'bf16' if args.bf16 else 'fp32'} "
                  f"{'channels_last' if args.channels_last else 'NCHW'}"
                  + (f" lk_impl={lk_impl}" if lk_impl else "")
                  + (" compiled" if args.compile else "")
                  + (" CUDA graph" if args.cuda_graph else ""),
        "step_ms": st["median_s"] * 1000, "images_per_s": batch / st["median_s"],
        "tflops": flops / st["median_s"] / 1e12, "compile_s": setup_s,
        "max_alloc_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "max_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None,
        "times_s": st, "model_gflop_per_step": flops / 1e9, "profile": prof, "device": device.type,
    }
    del model, opt, x, mask, fov, step
    if args.compile:  # the next row compiles its own graphs, from a clean cache
        torch._dynamo.reset()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


KIND_COLS = [Col("kind", "kind of kernel"), Col("calls", "kernels / step", ".0f"), Col("ms", "ms / step", ".2f"),
             Col("share_pct", "% of kernel time", ".1f")]
TOP_COLS = [Col("kernel", "kernel"), Col("calls", "calls / step", ".0f"), Col("ms", "ms / step", ".2f"),
            Col("share_pct", "% of kernel time", ".1f")]


def print_profile(row: dict) -> None:
    p = row["profile"]
    if row["device"] == "cuda":
        what = (f"GPU busy {p['busy_ms']:.1f} ms ({100 * p['busy_ms'] / p['wall_ms']:.0f} %), "
                f"{p['kernels_per_step']:.0f} kernels, {p['kernel_ms']:.1f} ms of kernel time")
    else:
        what = f"{p['kernels_per_step']:.0f} ops, {p['kernel_ms']:.1f} ms of self CPU time (CPU: ops, not kernels)"
    common.say(f"\n### profile of {row['config']}: {p['profiled_steps']} steps under torch.profiler; per step "
               f"{p['wall_ms']:.1f} ms wall (profiler on), {what}")
    common.print_table(f"#### {row['config']}: kernel time by kind, per step", KIND_COLS, p["by_kind"])
    short = [dict(r, kernel=r["kernel"][:90]) for r in p["top_kernels"]]
    common.print_table(f"#### {row['config']}: top {len(short)} kernels by time, per step", TOP_COLS, short)


def run(args, mode: common.Mode) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return _skipped()
    if args.cuda_graph and device.type != "cuda":
        raise SystemExit(f"gpu_step: --cuda-graph needs a CUDA device, not {device.type!r}")
    if args.cuda_graph and args.compile:
        raise SystemExit("gpu_step: --cuda-graph and --compile are separate rows: pass one of them "
                         "(torch.compile's own CUDA graphs are its mode='reduce-overhead')")
    size = args.size or mode.pick(32, 448, 448)
    batch = args.batch or mode.pick(2, 15, 15)
    steps = args.steps or args.repeats or mode.pick(2, 5, 20)
    warmup = mode.pick(1, 3, 5)
    torch.backends.cudnn.benchmark = bool(args.benchmark_cudnn)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} (not a GPU figure)"
    peak = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
    configs = [(args.model, impl) for impl in args.lk_impl]
    if args.reference != "none":
        configs.append((args.reference, None))
    rows = []
    for model_name, impl in configs:
        common.progress(f"{model_name}{' lk_impl=' + impl if impl else ''}")
        rows.append(measure(model_name, impl, args, size, batch, steps, warmup, device))
    ref = rows[-1] if args.reference != "none" else None
    for r in rows:
        r["gpu"] = name
        r["peak_tflops"] = peak
        r["mfu_pct"] = 100 * r["tflops"] / peak if peak else None
        r["vs_reference"] = r["tflops"] / ref["tflops"] if ref else None
    common.print_table(f"## {name}: train step, median of {steps} (model FLOPs: direct-conv forward × batch × 3; "
                       f"bf16 peak {peak or '?'} TFLOP/s)", COLS, rows)
    for r in rows:
        if r["profile"]:
            print_profile(r)
    if peak is None and device.type == "cuda":
        common.say(f"unknown bf16 peak for {name!r}: pass --peak-tflops to get the MFU")
    head = rows[0]
    if head["mfu_pct"] is not None:
        common.say(common.summary_line(f"{head['config']}: model-FLOP utilisation, % of the bf16 peak",
                                       head["mfu_pct"], MFU_TARGET, unit=" %"))
    if ref:
        common.say(common.summary_line(f"{head['config']}: model FLOP/s ÷ {ref['model']}'s", head["vs_reference"],
                                       0.9))
    return {
        "settings": {"model": args.model, "reference": args.reference, "size": size, "batch": batch,
                     "bf16": args.bf16, "channels_last": args.channels_last, "lk_impl": args.lk_impl,
                     "steps": steps, "compile": args.compile, "cuda_graph": args.cuda_graph,
                     "profile": args.profile, "cudnn_benchmark": bool(args.benchmark_cudnn),
                     "device": str(device)},
        "tables": {"gpu_step": rows},
        "summary": {"metric": "model-FLOP utilisation (%) against the bf16 peak, first configuration",
                    "value": head["mfu_pct"], "target": MFU_TARGET if peak else None,
                    "met": common.verdict(head["mfu_pct"], MFU_TARGET) if peak else None,
                    "step_ms": head["step_ms"], "images_per_s": head["images_per_s"],
                    "vs_reference": head["vs_reference"]},
        "notes": [] if device.type == "cuda" else ["--device cpu: a check of the machinery, not a GPU figure"],
    }
