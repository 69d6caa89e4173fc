"""The train stage's CPU settings, each measured against its alternative, side by side.

Three questions, each answered by interleaved timings of the same train step (forward, the
project's loss, backward, Adam step; ``benchmarks.train_step.Step``), float32 on CPU:

1. optimizer: ``Adam(fused=True)`` (what the train stage builds) vs torch's default per-tensor
   Adam -- the ``step()`` call alone on tcnet_base's 509 parameter tensors (random gradients);
2. denormals: the train step of tcnet_base and U-Net/ResNet-34 at 448², batch 2, channels_last,
   with ``tcnet.training.runtime.flush_denormal`` on and off;
3. layout at the demo's size (64², batch 4): NCHW vs channels_last for every model the demo trains
   (UNet3+ at the paper's width 64 and the demo's 32): why the train stage stays NCHW on CPU.

No target: the figures justify settings (docs/performance.md, "CPU settings of the train stage").
"""

from __future__ import annotations

import torch

from benchmarks import common
from benchmarks.common import Col

HELP = "the train stage's CPU settings: fused Adam, flush-denormal, NCHW vs channels_last at the demo size"

DEMO_MODELS = (
    ("tcnet_tiny", {}), ("unet", {}), ("unetpp", {}), ("deeplabv3", {}), ("deeplabv3p", {}), ("cenet", {}),
    ("fcn", {}), ("unet3p", {}), ("unet3p", {"base_channels": 32}),
)


def add_arguments(p) -> None:
    p.add_argument("--size", type=int, default=None, help="side of the denormal comparison (default 448; tiny 32)")


def _label(name: str, kwargs: dict) -> str:
    return name + "".join(f" {k}={v}" for k, v in kwargs.items())


def optimizer_rows(mode: common.Mode, repeats: int) -> list[dict]:
    import tcnet

    model = tcnet.create_model(mode.pick("tcnet_tiny", "tcnet_base", "tcnet_base"))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opts = {"Adam (per-tensor, torch default)": torch.optim.Adam(model.parameters(), lr=1e-4),
            "Adam(fused=True) (the train stage)": torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)}
    times = common.time_interleaved({k: o.step for k, o in opts.items()}, repeats, warmup=mode.warmup(2))
    ref = common.median(times["Adam (per-tensor, torch default)"])
    return [{"what": k, "ms": common.median(v) * 1000, "ratio": common.median(v) / ref} for k, v in times.items()]


def denormal_rows(mode: common.Mode, size: int, repeats: int) -> list[dict]:
    from benchmarks.train_step import Config, Step
    from tcnet.training.runtime import flush_denormal

    steps = {m: Step(Config(m, "auto" if m.startswith("tcnet") else None, True), size, 2)
             for m in (mode.pick("tcnet_tiny", "tcnet_base", "tcnet_base"), "unet")}
    fns = {}
    for m, step in steps.items():
        def off(step=step):
            step()

        def on(step=step):
            with flush_denormal(torch.device("cpu")):
                step()

        fns[f"{m} | off"], fns[f"{m} | on"] = off, on
    times = common.time_interleaved(fns, repeats, warmup=mode.warmup())
    rows = []
    for m in steps:
        ref = common.median(times[f"{m} | off"])
        for state in ("off", "on"):
            t = common.median(times[f"{m} | {state}"])
            rows.append({"what": f"{m}, flush-denormal {state}", "ms": t * 1000, "ratio": t / ref})
    return rows


def layout_rows(mode: common.Mode, repeats: int) -> list[dict]:
    import tcnet

    size, batch = mode.pick((32, 2), (64, 4), (64, 4))
    models = DEMO_MODELS[:2] if mode.tiny else DEMO_MODELS
    torch.manual_seed(0)
    fns = {}
    for name, kwargs in models:
        for cl in (False, True):
            model = tcnet.create_model(name, **kwargs)
            x = torch.randn(batch, 3, size, size)
            if cl:
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

            def step(model=model, x=x, opt=opt):
                opt.zero_grad(set_to_none=True)
                out = model(x)
                out = out[0] if isinstance(out, (list, tuple)) else out
                out.float().mean().backward()
                opt.step()

            fns[(_label(name, kwargs), cl)] = step
    times = common.time_interleaved(fns, repeats, warmup=mode.warmup())
    rows = []
    for name, kwargs in models:
        label = _label(name, kwargs)
        nchw, cl = (common.median(times[(label, c)]) for c in (False, True))
        rows.append({"model": label, "nchw_ms": nchw * 1000, "cl_ms": cl * 1000, "ratio": cl / nchw})
    return rows


COLS = [Col("what", "configuration"), Col("ms", "ms (median)", ".1f"), Col("ratio", "vs first row", ".2f")]
LAYOUT_COLS = [Col("model", "model"), Col("nchw_ms", "NCHW ms", ".1f"), Col("cl_ms", "channels_last ms", ".1f"),
               Col("ratio", "CL / NCHW", ".2f")]


def run(args, mode: common.Mode) -> dict:
    repeats = args.repeats or mode.pick(1, 3, 5)
    size = args.size or mode.pick(32, 224, 448)
    common.progress("optimizer step")
    opt = optimizer_rows(mode, repeats)
    model = mode.pick("tcnet_tiny", "tcnet_base", "tcnet_base")
    common.print_table(f"## optimizer step alone, {model}'s parameters, median of {repeats}", COLS, opt)
    common.progress(f"train step with and without flush-denormal at {size}², batch 2")
    den = denormal_rows(mode, size, repeats)
    common.print_table(f"## train step, channels_last, {size}², batch 2, flush-denormal off/on (interleaved), "
                       f"median of {repeats}", COLS, den)
    common.progress("train step NCHW vs channels_last at the demo size")
    lay = layout_rows(mode, repeats)
    common.print_table(f"## train step (fwd + bwd + fused Adam) at the demo size, NCHW vs channels_last, median of "
                       f"{repeats}", LAYOUT_COLS, lay)
    faster = [r["model"] for r in lay if r["ratio"] < 0.95]
    common.say(f"channels_last faster (< 0.95x) for: {', '.join(faster) or 'none'}")
    return {
        "settings": {"size": size, "repeats": repeats},
        "tables": {"optimizer": opt, "flush_denormal": den, "layout": lay},
        "summary": {"metric": "step times of the train stage's CPU settings against their alternatives (no target)",
                    "value": None, "target": None, "met": None},
        "notes": [],
    }
