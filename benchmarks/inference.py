"""Predict throughput (images/s) of every registered model: eval mode, ``torch.inference_mode``.

Each model is built once (default options: TCNet with ``lk_impl="auto"``, i.e. the FFT for its
31×31 kernels on CPU without gradients), float32, NCHW -- what ``tcnet predict`` runs. For each
batch size all models are timed interleaved in one process; images/s = batch / median seconds per
forward. GFLOP/image is ``tcnet.models.flops`` (direct-conv convention, 1 MAC = 2 FLOPs), so the
model-GFLOP/s column says how well each network uses the machine. "vs U-Net" is images/s relative
to the U-Net of the same batch. A model whose warm-up forward takes 15 s or more (UNet3+ at batch 8:
over a TFLOP per image) is timed by that one call only (n = 1 in the JSON). Freed heap memory is
retained (``tcnet.utils.heap``), as the evaluate stage and ``tcnet predict`` run on CPU
(``cpu_settings --only heap_infer`` compares it with the allocator as it comes).
"""

from __future__ import annotations

import torch

from benchmarks import common
from benchmarks.common import Col

HELP = "predict images/s of every registered model, batch 1 and 8, inference_mode"


def add_arguments(p) -> None:
    p.add_argument("--size", type=int, default=None, help="image size (default 448; quick 224; tiny 32)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 8)")
    p.add_argument("--models", nargs="+", default=None, help="models (default: every registered model)")
    p.add_argument("--no-channels-last-rows", dest="cl_rows", action="store_false",
                   help="full mode: leave out the extra channels_last rows of the TCNet variants")


COLS = [Col("model", "model"), Col("batch", "batch", "d"), Col("ms_per_batch", "ms / batch", ".1f"),
        Col("images_per_s", "images/s", ".2f"), Col("gflop_per_image", "GFLOP/image", ".1f"),
        Col("gflops", "model GFLOP/s", ".1f"), Col("vs_unet", "vs U-Net", ".2f")]


def run(args, mode: common.Mode) -> dict:
    import tcnet
    from tcnet.models.flops import model_complexity
    from tcnet.utils.heap import retain_freed_memory_for_inference

    heap = retain_freed_memory_for_inference()  # as evaluate and `tcnet predict` on CPU
    size = args.size or mode.pick(32, 224, 448)
    batches = args.batches or mode.pick([1, 2], [1, 8], [1, 8])
    models = args.models or mode.pick(["tcnet_tiny", "unet"], ["tcnet_tiny", "tcnet_small", "tcnet_base", "unet"],
                                      tcnet.list_models())
    repeats = args.repeats or mode.pick(1, 3, 3)
    common.progress(f"building {len(models)} models")
    built, gflop = {}, {}
    for name in models:
        torch.manual_seed(0)
        built[name] = tcnet.create_model(name).eval()
        gflop[name] = model_complexity(name, size)["flops"] / 1e9
    if mode.full and args.cl_rows:  # TCNet also in channels_last (not what predict does today)
        for name in [m for m in models if m.startswith("tcnet")]:
            torch.manual_seed(0)
            built[f"{name} channels_last"] = tcnet.create_model(name).eval().to(memory_format=torch.channels_last)
            gflop[f"{name} channels_last"] = gflop[name]
    rows = []
    for b in batches:
        x = torch.randn(b, 3, size, size)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def fwd(m, cl=False):
            inp = x_cl if cl else x

            def fn():
                with torch.inference_mode():
                    m(inp)
            return fn

        common.progress(f"batch {b}: timing {len(models)} models (interleaved, {repeats} repeats)")
        times = common.time_interleaved({n: fwd(m, n.endswith("channels_last")) for n, m in built.items()}, repeats,
                                        warmup=mode.warmup(),
                                        budget_s=mode.pick(None, 40.0, 300.0), slow_s=mode.pick(None, 10.0, 15.0))
        batch_rows = []
        for name in built:
            st = common.stats(times[name])
            batch_rows.append({"model": name, "batch": b, "ms_per_batch": st["median_s"] * 1000,
                               "images_per_s": b / st["median_s"], "gflop_per_image": gflop[name],
                               "gflops": gflop[name] * b / st["median_s"], "times_s": st})
        ref = next((r for r in batch_rows if r["model"] == "unet"), None)
        for r in batch_rows:
            r["vs_unet"] = r["images_per_s"] / ref["images_per_s"] if ref else None
        rows += batch_rows
    common.print_table(f"## inference at {size}², float32, NCHW (\x27channels_last\x27 rows: model and input channels_last), "
                       f"inference_mode, {common.median_of(repeats, [r['times_s'] for r in rows])}", COLS, rows)
    return {
        "settings": {"size": size, "batches": batches, "models": models, "repeats": repeats, "dtype": "float32",
                     "allocator": "glibc, freed memory retained (tcnet.utils.heap, as evaluate and tcnet predict)"
                     if heap else "as it comes (not glibc)"},
        "tables": {"inference": rows},
        "summary": {"metric": "images/s per model and batch (no target)", "value": None, "target": None,
                    "met": None,
                    "images_per_s": {f"{r['model']}@b{r['batch']}": r["images_per_s"] for r in rows}},
        "notes": [],
    }
