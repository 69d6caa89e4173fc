"""The paper-profile train step on a CUDA GPU: tcnet_base, 448², batch 15, bf16 autocast, channels_last.

Adam, ``CombinedLoss`` (λ = 0.5) computed in float32 on float32 logits (as the train stage does),
``lk_impl="auto"`` (cuDNN's depthwise kernels on CUDA; ``--lk-impl fft`` to compare). Timed with
CUDA synchronisation: warm-up steps (cuDNN autotuning off by default; ``--benchmark-cudnn``), then
the median of the timed steps. Reported: step time, images/s, model FLOP/s (forward FLOPs of the
architecture with the direct convolution, ``tcnet.models.flops``, × batch × 3), model-FLOP
utilisation (MFU) against the GPU's dense bf16 peak (a table of known GPUs; ``--peak-tflops`` for
others), and peak memory (``torch.cuda.max_memory_allocated`` / ``_reserved``).

Without CUDA it measures nothing, says so, writes a JSON whose summary says so, and exits 0.
"""

from __future__ import annotations

import torch

from benchmarks import common
from benchmarks.common import Col

HELP = "paper-profile train step on CUDA: tcnet_base 448² batch 15 bf16 channels_last (exits without CUDA)"
NO_GPU = "no CUDA GPU in this environment: gpu_step measured nothing (run it on a GPU machine)"

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
    p.add_argument("--size", type=int, default=None, help="image size (default 448)")
    p.add_argument("--batch", type=int, default=None, help="batch (default 15)")
    p.add_argument("--lk-impl", default="auto", choices=("auto", "direct", "fft", "mixed"))
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="float32 instead of bf16 autocast")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    p.add_argument("--benchmark-cudnn", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; quick 5)")


COLS = [Col("config", "configuration"), Col("step_ms", "step ms (median)", ".1f"),
        Col("images_per_s", "images/s", ".1f"), Col("tflops", "model TFLOP/s", ".1f"),
        Col("peak_tflops", "bf16 peak TFLOP/s", ".0f"), Col("mfu_pct", "MFU %", ".1f"),
        Col("max_alloc_gib", "max allocated GiB", ".2f"), Col("max_reserved_gib", "max reserved GiB", ".2f")]


def run(args, mode: common.Mode) -> dict:
    if not torch.cuda.is_available():
        common.say(NO_GPU)
        common.say("on a CUDA machine: python -m benchmarks gpu_step   (tcnet_base, 448², batch 15, bf16, "
                   "channels_last)")
        return {"settings": {}, "tables": {}, "skipped": NO_GPU,
                "summary": {"metric": "paper-profile GPU train step", "value": None, "target": None, "met": None,
                            "skipped": NO_GPU},
                "notes": [NO_GPU]}
    import tcnet
    from tcnet.losses.combined import CombinedLoss
    from tcnet.models.flops import model_complexity

    size = args.size or mode.pick(64, 448, 448)
    batch = args.batch or mode.pick(2, 15, 15)
    steps = args.steps or args.repeats or mode.pick(2, 5, 20)
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = bool(args.benchmark_cudnn)
    torch.manual_seed(0)
    model = tcnet.create_model(args.model, lk_impl=args.lk_impl).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    mask = (torch.rand(batch, 1, size, size, device=device) > 0.7).float()
    loss_fn = CombinedLoss(ce_weight=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as the train stage builds it

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16):
            out = model(x)
        loss_fn(out.float(), mask).backward()
        opt.step()

    torch.cuda.reset_peak_memory_stats()
    times = common.time_interleaved({"step": step}, steps, warmup=mode.pick(1, 3, 5),
                                    sync=common.cuda_sync_for(device))
    st = common.stats(times["step"])
    flops = model_complexity(args.model, size)["flops"] * batch * 3
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or peak_tflops(name)
    tflops = flops / st["median_s"] / 1e12
    row = {
        "config": f"{args.model} {size}² b{batch} {'bf16' if args.bf16 else 'fp32'} "
                  f"{'channels_last' if args.channels_last else 'NCHW'} lk_impl={args.lk_impl}",
        "gpu": name, "step_ms": st["median_s"] * 1000, "images_per_s": batch / st["median_s"],
        "tflops": tflops, "peak_tflops": peak, "mfu_pct": 100 * tflops / peak if peak else None,
        "max_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
        "max_reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "times_s": st,
        "model_gflop_per_step": flops / 1e9,
    }
    common.print_table(f"## {name}: train step, median of {st['n']} (model FLOPs: direct-conv forward × batch × 3)",
                       COLS, [row])
    if peak is None:
        common.say(f"unknown bf16 peak for {name!r}: pass --peak-tflops to get the MFU")
    return {
        "settings": {"model": args.model, "size": size, "batch": batch, "bf16": args.bf16,
                     "channels_last": args.channels_last, "lk_impl": args.lk_impl, "steps": steps,
                     "cudnn_benchmark": bool(args.benchmark_cudnn)},
        "tables": {"gpu_step": [row]},
        "summary": {"metric": "model-FLOP utilisation (%) against the bf16 peak", "value": row["mfu_pct"],
                    "target": None, "met": None, "step_ms": row["step_ms"], "images_per_s": row["images_per_s"]},
        "notes": [],
    }
