"""The train stage's CPU settings, each measured against its alternative, side by side.

Three questions, each answered by interleaved timings of the same train step (forward, the
project's loss, backward, Adam step; ``benchmarks.train_step.Step``), float32 on CPU:

1. optimizer: ``Adam(fused=True)`` (what the train stage builds) vs torch's default per-tensor
   Adam -- the ``step()`` call alone on tcnet_base's 509 parameter tensors (random gradients);
2. denormals: the train step of tcnet_base and U-Net/ResNet-34 at 448², batch 2 (``--batch``), channels_last,
   with ``tcnet.training.runtime.flush_denormal`` on and off;
3. layout at the demo's size (64², batch 4): NCHW vs channels_last for every model the demo trains
   (UNet3+ at the paper's width 64 and the demo's 32): why the train stage stays NCHW on CPU;
4. heap: glibc's allocator as it comes vs freed memory retained (``tcnet.utils.heap``,
   ``retain_freed_memory(trim_threshold=None)``, what the train stage sets on CPU) -- the train step
   of tcnet_base and U-Net at 448², batch 2 (``--batch``), NCHW (the train stage's CPU layout). The setting is
   process-wide and cannot be undone, so each (model, setting) runs in a FRESH process: warm-up
   steps, then timed steps (median), minor page faults per step and the process's peak RSS; the
   processes alternate (off, on / on, off) over the rounds so drift hits both settings alike;
5. heap_infer: the allocator for inference: as it comes, the form the evaluate stage and ``tcnet
   predict`` set on CPU (no trimming, blocks above 32 MiB still mapped) and the train stage's
   form (those blocks kept in the heap too), for one ``inference_mode`` forward of tcnet_base and
   U-Net at 448², batch 8 (``--infer-batch``), NCHW (what they run); fresh processes, the order
   rotated over the rounds.

No target: the figures justify settings (docs/performance.md, "CPU settings of the train stage").
"""

from __future__ import annotations

import torch

from benchmarks import common
from benchmarks.common import Col
from tcnet.utils.heap import INFERENCE_FORM

HELP = ("the train stage's CPU settings: fused Adam, flush-denormal, NCHW vs channels_last at the demo size, "
        "retained heap for training and inference (fresh processes)")

DEMO_MODELS = (
    ("tcnet_tiny", {}), ("unet", {}), ("unetpp", {}), ("deeplabv3", {}), ("deeplabv3p", {}), ("cenet", {}),
    ("fcn", {}), ("unet3p", {}), ("unet3p", {"base_channels": 32}),
)


SECTIONS = ("optimizer", "denormal", "layout", "heap", "heap_infer")


def add_arguments(p) -> None:
    p.add_argument("--size", type=int, default=None,
                   help="side of the denormal and heap comparisons (default 448; quick 224; tiny 32)")
    p.add_argument("--batch", type=int, default=2,
                   help="batch of the denormal and heap comparisons (default 2; the heap setting's large-block "
                        "part shows from batch 4 on at 448²)")
    p.add_argument("--infer-batch", type=int, default=8,
                   help="batch of the inference heap comparison (default 8, tcnet predict's and the paper "
                        "profile's evaluate batch)")
    p.add_argument("--infer-models", nargs="+", default=None, metavar="MODEL",
                   help="models of the inference heap comparison (default tcnet_base unet; e.g. unet3p with "
                        "--infer-batch 4 for the heap growth of the largest activations)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=None, metavar="SECTION",
                   help=f"run only these comparisons ({', '.join(SECTIONS)}; default: all). The heap one runs "
                        "--repeats rounds (default 3) of four fresh processes: ~4 min at 448²")


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


def denormal_rows(mode: common.Mode, size: int, repeats: int, batch: int) -> list[dict]:
    from benchmarks.train_step import Config, Step
    from tcnet.training.runtime import flush_denormal

    steps = {m: Step(Config(m, "auto" if m.startswith("tcnet") else None, True), size, batch)
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


HEAP_FORMS = {  # child spec "heap" -> (retain_freed_memory kwargs or None, label)
    "": (None, "heap as it comes"),
    "train": ({"trim_threshold": None}, "heap retained, large blocks too (the train stage)"),
    "infer": (INFERENCE_FORM, "heap retained, large blocks mapped (evaluate, tcnet predict)"),
}


def heap_rows(mode: common.Mode, size: int, rounds: int, batch: int, infer: bool = False,
              models: tuple[str, ...] | None = None) -> list[dict]:
    """Train steps (or, ``infer``, inference forwards) with glibc's heap as it comes and retained."""
    models = models or mode.pick(("tcnet_tiny",), ("tcnet_small", "unet"), ("tcnet_base", "unet"))
    steps, warmup = mode.pick((1, 1), (3, 1), (5, 2)) if not infer else mode.pick((1, 1), (3, 1), (3, 1))
    threads = torch.get_num_threads()
    forms = ("", "infer", "train") if infer else ("", "train")
    got: dict[tuple[str, str], list[dict]] = {(m, h): [] for m in models for h in forms}
    for r in range(rounds):
        for m in models:
            k = r % len(forms)
            for heap in forms[k:] + forms[:k]:
                common.progress(f"round {r + 1}/{rounds}: {m}, {HEAP_FORMS[heap][1]} "
                                f"(fresh process, {warmup}+{steps} {'forwards' if infer else 'steps'} at {size}²)")
                spec = {"model": m, "size": size, "batch": batch, "heap": heap, "steps": steps, "warmup": warmup,
                        "threads": threads, "infer": infer}
                got[(m, heap)].append(common.run_child("cpu_settings", spec, f"{m}, heap {heap or 'default'}"))
    rows = []
    for m in models:
        ref = common.median([c["step_s"] for c in got[(m, "")]])
        for heap in forms:
            cs = got[(m, heap)]
            t = common.median([c["step_s"] for c in cs])
            rows.append({"what": f"{m}, {HEAP_FORMS[heap][1]}",
                         "ms": t * 1000, "ratio": t / ref, "faults": common.median([c["faults"] for c in cs]),
                         "peak_mib": max(c["peak_mib"] for c in cs), "per_process_ms": [c["step_s"] * 1000 for c in cs]})
    return rows


def child(spec: dict) -> dict:
    """One model's train step (or inference forward) in this (fresh) process, with or without the
    retained heap."""
    kwargs = HEAP_FORMS[spec["heap"]][0]
    if kwargs is not None:
        from tcnet.utils.heap import retain_freed_memory

        if not retain_freed_memory(**kwargs):
            raise RuntimeError("not glibc: the heap setting does not apply here")
    from benchmarks.train_step import Config, Step
    from tcnet.training.runtime import flush_denormal

    torch.set_num_threads(int(spec["threads"]))
    if spec.get("infer"):
        return _infer_child(spec)
    step = Step(Config(spec["model"], "auto" if spec["model"].startswith("tcnet") else None, False),
                int(spec["size"]), int(spec["batch"]))
    with flush_denormal(torch.device("cpu")):
        times = common.time_interleaved({"step": step}, int(spec["steps"]), warmup=int(spec["warmup"]))["step"]
    return {"step_s": common.median(times), "times_s": times, "faults": common.median(step.faults[-len(times):]),
            "peak_mib": common.peak_rss_mib()}


def _infer_child(spec: dict) -> dict:
    """One model's inference forward, as the evaluate stage runs it: eval mode, NCHW, inference_mode."""
    import resource

    import tcnet

    torch.manual_seed(0)
    model = tcnet.create_model(spec["model"]).eval()
    x = torch.randn(int(spec["batch"]), 3, int(spec["size"]), int(spec["size"]))
    faults: list[int] = []

    def forward():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with torch.inference_mode():
            model(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    times = common.time_interleaved({"forward": forward}, int(spec["steps"]), warmup=int(spec["warmup"]))["forward"]
    return {"step_s": common.median(times), "times_s": times, "faults": common.median(faults[-len(times):]),
            "peak_mib": common.peak_rss_mib()}


HEAP_COLS = [Col("what", "configuration"), Col("ms", "step ms (median)", ".0f"), Col("ratio", "vs as it comes", ".2f"),
             Col("faults", "page faults / step", ".0f"), Col("peak_mib", "process peak RSS MiB", ".0f")]


HEAP_INFER_COLS = [Col("what", "configuration"), Col("ms", "forward ms (median)", ".0f"),
                   Col("ratio", "vs as it comes", ".2f"), Col("faults", "page faults / forward", ".0f"),
                   Col("peak_mib", "process peak RSS MiB", ".0f")]


def run(args, mode: common.Mode) -> dict:
    repeats = args.repeats or mode.pick(1, 3, 5)
    size = args.size or mode.pick(32, 224, 448)
    batch = args.batch
    if batch < 1:
        raise SystemExit(f"cpu_settings: --batch must be >= 1, got {batch}")
    only = set(args.only or SECTIONS)
    tables: dict[str, list[dict]] = {}
    if "optimizer" in only:
        common.progress("optimizer step")
        tables["optimizer"] = optimizer_rows(mode, repeats)
        model = mode.pick("tcnet_tiny", "tcnet_base", "tcnet_base")
        common.print_table(f"## optimizer step alone, {model}'s parameters, median of {repeats}", COLS,
                           tables["optimizer"])
    if "denormal" in only:
        common.progress(f"train step with and without flush-denormal at {size}², batch {batch}")
        tables["flush_denormal"] = denormal_rows(mode, size, repeats, batch)
        common.print_table(f"## train step, channels_last, {size}², batch {batch}, flush-denormal off/on (interleaved), "
                           f"median of {repeats}", COLS, tables["flush_denormal"])
    if "layout" in only:
        common.progress("train step NCHW vs channels_last at the demo size")
        lay = tables["layout"] = layout_rows(mode, repeats)
        common.print_table(f"## train step (fwd + bwd + fused Adam) at the demo size, NCHW vs channels_last, median "
                           f"of {repeats}", LAYOUT_COLS, lay)
        faster = [r["model"] for r in lay if r["ratio"] < 0.95]
        common.say(f"channels_last faster (< 0.95x) for: {', '.join(faster) or 'none'}")
    rounds = args.repeats or mode.pick(1, 1, 3)
    if "heap" in only:
        tables["heap"] = heap_rows(mode, size, rounds, batch)
        common.print_table(f"## train step, NCHW, {size}², batch {batch}, glibc heap as it comes vs retained (fresh "
                           f"process per row and round; median over {rounds} round(s) of each process's median "
                           "step)", HEAP_COLS, tables["heap"])
    if "heap_infer" in only:
        infer_batch = args.infer_batch
        if infer_batch < 1:
            raise SystemExit(f"cpu_settings: --infer-batch must be >= 1, got {infer_batch}")
        tables["heap_infer"] = heap_rows(mode, size, rounds, infer_batch, infer=True,
                                         models=tuple(args.infer_models) if args.infer_models else None)
        common.print_table(f"## inference forward (inference_mode), NCHW, {size}², batch {infer_batch}, glibc heap as "
                           f"it comes vs retained, two forms (fresh process per row and round; median over {rounds} round(s) of "
                           "each process's median forward)", HEAP_INFER_COLS, tables["heap_infer"])
    return {
        "settings": {"size": size, "batch": batch, "infer_batch": args.infer_batch,
                     "infer_models": args.infer_models, "repeats": repeats,
                     "heap_rounds": rounds, "sections": sorted(only)},
        "tables": tables,
        "summary": {"metric": "step times of the train stage's CPU settings against their alternatives (no target)",
                    "value": None, "target": None, "met": None},
        "notes": [],
    }


if __name__ == "__main__":
    common.child_main("cpu_settings", child)
