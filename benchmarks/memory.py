"""Peak memory of a train step per TCNet variant and the U-Net reference.

CPU: each configuration runs in a FRESH Python process (nothing left over from another model, no
allocator cache shared), with the train stage's allocator setting (freed heap memory retained,
``tcnet.utils.heap``): import, build the model, optimizer (Adam), loss (CombinedLoss) and a fixed
batch; read the resident set size (RSS, ``/proc/self/statm``); run train steps (forward, loss,
backward, Adam step; the first allocates Adam's state); read the peak RSS
(``VmHWM``, the high-water mark of the process: ``benchmarks.common.peak_rss_mib``). Reported:
``peak - RSS before the steps`` (what a train step adds: activations kept for backward,
gradients, Adam state, the FFT buffers) and the process's absolute peak. ``tracemalloc`` would miss
torch's allocations; the high-water mark sees them all.

CUDA (when present): ``torch.cuda.max_memory_allocated`` over the same steps, in the same table.
"""

from __future__ import annotations

import os

from benchmarks import common
from benchmarks.common import Col

HELP = "peak RSS of a train step per TCNet variant and U-Net (fresh process each)"


def add_arguments(p) -> None:
    p.add_argument("--size", type=int, default=None, help="image size (default 448; quick 224; tiny 32)")
    p.add_argument("--batch", type=int, default=None, help="batch (default 2)")
    p.add_argument("--models", nargs="+", default=None, help="models (default tcnet_tiny tcnet_small tcnet_base unet)")
    p.add_argument("--steps", type=int, default=None, help="train steps per process (default 2)")


def configs_for(mode: common.Mode, models) -> list[dict]:
    names = models or mode.pick(["tcnet_tiny"], ["tcnet_tiny", "tcnet_small", "tcnet_base", "unet"],
                                ["tcnet_tiny", "tcnet_small", "tcnet_base", "unet"])
    cfgs = [{"model": n, "lk_impl": "auto" if n.startswith("tcnet") else None, "channels_last": False} for n in names]
    if mode.full and not models:
        cfgs.append({"model": "tcnet_tiny", "lk_impl": "direct", "channels_last": False})
        cfgs.append({"model": "tcnet_small", "lk_impl": "auto", "channels_last": True})
    return cfgs


def _label(c: dict) -> str:
    return f"{c['model']} {c['lk_impl'] + ' ' if c['lk_impl'] else ''}{'channels_last' if c['channels_last'] else 'NCHW'}"


def measure_in_subprocess(cfg: dict, size: int, batch: int, steps: int, threads: int) -> dict:
    return common.run_child("memory", {**cfg, "size": size, "batch": batch, "steps": steps, "threads": threads},
                            _label(cfg))


COLS = [Col("config", "configuration"), Col("rss_before_mib", "RSS before step MiB", ".0f"),
        Col("step_delta_mib", "train-step peak delta MiB", ".0f"), Col("peak_mib", "process peak MiB", ".0f"),
        Col("state_mib", "weights+grads+Adam MiB", ".0f"), Col("cuda_peak_mib", "CUDA peak MiB", ".0f"),
        Col("vs_unet", "delta vs U-Net", ".2f")]


def run(args, mode: common.Mode) -> dict:
    size = args.size or mode.pick(32, 224, 448)
    batch = args.batch or 2
    steps = args.steps or mode.pick(1, 2, 2)
    cfgs = configs_for(mode, args.models)
    if args.repeats is not None:
        common.say(f"note: --repeats {args.repeats} does not apply here: one fresh process per model, one "
                   "measurement each (--steps sets the steps within it)")
    import torch

    threads = torch.get_num_threads()  # what __main__ set: every core (one in the tiny mode), or --threads
    rows = []
    for c in cfgs:
        common.progress(f"{_label(c)} at {size}², batch {batch} (fresh process)")
        r = measure_in_subprocess(c, size, batch, steps, threads)
        rows.append({"config": _label(c), **c, **r})
    ref = next((r for r in rows if r["model"] == "unet"), None)
    for r in rows:
        r["vs_unet"] = r["step_delta_mib"] / ref["step_delta_mib"] if ref else None
    common.print_table(f"## train-step memory at {size}², batch {batch}, float32, {steps} steps, fresh process each",
                       COLS, rows)
    return {
        "settings": {"size": size, "batch": batch, "steps": steps, "threads": threads,
                     "method": "peak RSS (VmHWM) minus RSS before the steps, fresh process per configuration"},
        "tables": {"memory": rows},
        "summary": {"metric": "train-step peak RSS delta (MiB) per configuration (no target)", "value": None,
                    "target": None, "met": None,
                    "step_delta_mib": {r["config"]: r["step_delta_mib"] for r in rows}},
        "notes": [],
    }


# ----------------------------------------------------------------------------------------------
# Child process
# ----------------------------------------------------------------------------------------------


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(spec: dict) -> dict:
    from tcnet.utils.heap import retain_freed_memory

    retain_freed_memory(trim_threshold=None)  # as the train stage runs on CPU (tcnet/stages/train.py)
    import torch

    import tcnet
    from tcnet.losses.combined import CombinedLoss

    torch.set_num_threads(int(spec["threads"]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    kwargs = {"lk_impl": spec["lk_impl"]} if spec["lk_impl"] else {}
    model = tcnet.create_model(spec["model"], **kwargs).to(device).train()
    b, s = int(spec["batch"]), int(spec["size"])
    x = torch.randn(b, 3, s, s, device=device)
    if spec["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    mask = (torch.rand(b, 1, s, s, device=device) > 0.7).float()
    loss_fn = CombinedLoss(ce_weight=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as the train stage builds it
    n_params = sum(p.numel() for p in model.parameters())
    rss_before = _rss_mib()
    peak_before = common.peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(int(spec["steps"])):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), mask).backward()
        opt.step()
    peak = common.peak_rss_mib()
    return {
        "params": n_params, "state_mib": n_params * 4 * 4 / 2**20,  # weights, grads, Adam exp_avg, exp_avg_sq
        "rss_before_mib": rss_before, "peak_before_mib": peak_before, "peak_mib": peak,
        "step_delta_mib": peak - rss_before, "rss_after_mib": _rss_mib(),
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "device": device.type,
    }


if __name__ == "__main__":
    common.child_main("memory", child)
