"""The paper-profile train step on a CUDA GPU: tcnet_base, 448², batch 15, bf16 autocast, channels_last.

Adam (fused), ``CombinedLoss`` (λ = 0.5) computed in float32 on float32 logits (as the train stage
does). One row per ``--lk-impl`` (``auto``: on CUDA the fastest of direct, fft and mixed, measured
once per shape, tcnet/models/lk_tune.py; ``direct``: cuDNN's depthwise kernels) and a reference row, smp's U-Net/ResNet-34 at the same size, batch and precision
(``--reference none`` to skip): the issue's target 2 on the GPU. Each configuration runs on its
own (so that its peak memory is its own): warm-up steps (cuDNN autotuning off by default;
``--benchmark-cudnn``), then the median of the timed steps, CUDA-synchronised. ``--compile``
adds ``torch.compile`` (its compile time is reported, not timed in the steps).

Reported: step time, images/s, model FLOP/s (forward FLOPs of the architecture with the direct
convolution, ``tcnet.models.flops``, × batch × 3), the ratio to the reference's model FLOP/s,
model-FLOP utilisation (MFU) against the GPU's dense bf16 peak (a table of known GPUs;
``--peak-tflops`` for others), and peak memory (``torch.cuda.max_memory_allocated`` / ``_reserved``).

Without CUDA it measures nothing, says so, writes a JSON whose summary says so, and exits 0
(``--device cpu`` runs the same code on the CPU: a check of the machinery, not a GPU figure).
"""

from __future__ import annotations

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
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    p.add_argument("--benchmark-cudnn", action="store_true",
                   help="torch.backends.cudnn.benchmark = True, as the paper profile trains (deterministic: false)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; quick 5)")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu checks the machinery, no GPU figure")


COLS = [Col("config", "configuration"), Col("step_ms", "step ms (median)", ".1f"),
        Col("images_per_s", "images/s", ".1f"), Col("tflops", "model TFLOP/s", ".2f"),
        Col("vs_reference", "÷ reference", ".2f"), Col("mfu_pct", "MFU %", ".2f"),
        Col("compile_s", "compile s", ".0f"),
        Col("max_alloc_gib", "max allocated GiB", ".2f"), Col("max_reserved_gib", "max reserved GiB", ".2f")]


def _skipped() -> dict:
    common.say(NO_GPU)
    common.say("on a CUDA machine: python -m benchmarks gpu_step   (tcnet_base, 448², batch 15, bf16, channels_last)")
    return {"settings": {}, "tables": {}, "skipped": NO_GPU,
            "summary": {"metric": "paper-profile GPU train step", "value": None, "target": None, "met": None,
                        "skipped": NO_GPU},
            "notes": [NO_GPU]}


def measure(name: str, lk_impl: str | None, args, size: int, batch: int, steps: int, warmup: int,
            device: torch.device) -> dict:
    """One configuration's train step: median time and peak memory."""
    import tcnet
    from tcnet.losses.combined import CombinedLoss
    from tcnet.models.flops import model_complexity

    torch.manual_seed(0)
    overrides = {"lk_impl": lk_impl} if lk_impl else {}
    model = tcnet.create_model(name, **overrides).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    mask = (torch.rand(batch, 1, size, size, device=device) > 0.7).float()
    loss_fn = CombinedLoss(ce_weight=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as the train stage builds it
    forward = torch.compile(model) if args.compile else model

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            out = forward(x)
        loss_fn(out.float(), mask).backward()
        opt.step()

    sync = common.cuda_sync_for(device)
    compile_s = None
    if args.compile:  # the first call compiles: time it apart from the steps
        t0 = time.perf_counter()
        step()
        sync()
        compile_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    st = common.stats(common.time_interleaved({"step": step}, steps, warmup=warmup, sync=sync)["step"])
    flops = model_complexity(name, size)["flops"] * batch * 3
    cuda = device.type == "cuda"
    row = {
        "model": name, "lk_impl": lk_impl,
        "config": f"{name} {size}² b{batch} {'bf16' if args.bf16 else 'fp32'} "
                  f"{'channels_last' if args.channels_last else 'NCHW'}"
                  + (f" lk_impl={lk_impl}" if lk_impl else "")
                  # auto does not measure inside a compiled graph (tcnet/models/lk_tune.py): its fixed rule runs
                  + (" (its fixed rule)" if args.compile and lk_impl == "auto" else "")
                  + (" compiled" if args.compile else ""),
        "step_ms": st["median_s"] * 1000, "images_per_s": batch / st["median_s"],
        "tflops": flops / st["median_s"] / 1e12, "compile_s": compile_s,
        "max_alloc_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "max_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None,
        "times_s": st, "model_gflop_per_step": flops / 1e9,
    }
    del model, opt, forward, x, mask
    if args.compile:  # the next row compiles its own graphs, from a clean cache
        torch._dynamo.reset()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def run(args, mode: common.Mode) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return _skipped()
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
                     "steps": steps, "compile": args.compile, "cudnn_benchmark": bool(args.benchmark_cudnn),
                     "device": str(device)},
        "tables": {"gpu_step": rows},
        "summary": {"metric": "model-FLOP utilisation (%) against the bf16 peak, first configuration",
                    "value": head["mfu_pct"], "target": MFU_TARGET if peak else None,
                    "met": common.verdict(head["mfu_pct"], MFU_TARGET) if peak else None,
                    "step_ms": head["step_ms"], "images_per_s": head["images_per_s"],
                    "vs_reference": head["vs_reference"]},
        "notes": [] if device.type == "cuda" else ["--device cpu: a check of the machinery, not a GPU figure"],
    }
