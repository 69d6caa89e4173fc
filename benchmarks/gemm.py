"""The attention's projections on CPU: ``F.linear`` (the BLAS PyTorch ships) against a oneDNN 1×1 convolution.

PyTorch's x86 wheels do their float32 GEMMs (``F.linear``, ``matmul``, SDPA's inner products) in
Intel MKL, and their convolutions in oneDNN. MKL takes its AVX-512 kernels on Intel processors
only; oneDNN picks its kernels from the CPU's instruction sets whatever the vendor. On an AMD CPU
with AVX-512 the same product can therefore run faster as a 1×1 convolution: this target
measures that at the shapes of TCNet's spatial-reduction attention and sets the two routes of
``tcnet.models.attention.project`` side by side, first per projection, then per attention module
(forward + backward, channels_last, float32, the model's train-step shapes).

Tables: (1) every projection of the variant's attention modules (q, kv, proj; tokens × in → out),
forward + backward (input, weight and bias gradients) as ``F.linear`` on the tokens and as
``F.conv2d`` 1×1 on the map, with GFLOP/s (1 MAC = 2 FLOPs, backward = 2 × forward), and a square
reference product (``--square``, 2048 × 2048 → 2048 by default) that shows the two libraries'
rates away from TCNet's shapes; (2) every
attention module of one step, both routes and ``auto`` (``project``'s choice per call: oneDNN on
CPU from ``ONEDNN_MIN_MACS`` on), and their sums over the step. The summary is auto's sum over the
BLAS route's (below 1: faster than ``F.linear`` everywhere; no target).
"""

from __future__ import annotations

import torch

from benchmarks import common
from benchmarks.common import Col

HELP = "attention projections on CPU: F.linear (MKL) vs the same product as a oneDNN 1x1 conv, fwd+bwd"

PROJ_COLS = [Col("module", "attention module"), Col("proj", "projection"), Col("shape", "tokens × in → out"),
             Col("blas_ms", "F.linear ms", ".2f"), Col("blas_gflops", "GFLOP/s", ".0f"),
             Col("onednn_ms", "1×1 conv ms", ".2f"), Col("onednn_gflops", "GFLOP/s", ".0f"),
             Col("ratio", "conv / linear", ".2f")]
MOD_COLS = [Col("module", "attention module"), Col("calls", "calls / step", "d"),
            Col("blas_ms", "BLAS route ms", ".1f"),
            Col("onednn_ms", "oneDNN route ms", ".1f"), Col("ratio", "oneDNN / BLAS", ".2f"),
            Col("auto_ms", "auto ms", ".1f"), Col("auto_ratio", "auto / BLAS", ".2f")]


def add_arguments(p) -> None:
    p.add_argument("--model", default=None, help="TCNet variant (default tcnet_base; tiny: tcnet_tiny)")
    p.add_argument("--size", type=int, default=None, help="image size (default 448; quick 224; tiny 32)")
    p.add_argument("--batch", type=int, default=2, help="batch (default 2)")
    p.add_argument("--square", type=int, default=None,
                   help="n of the square reference product, n tokens × n → n (default 2048; quick 1024; tiny 64)")


def attention_calls(model: torch.nn.Module, size: int, batch: int) -> dict[str, dict]:
    """The model's attention modules with the input shape of each in one forward, grouped by
    (dim, heads, sr, map): ``{label: {"module": m, "shape": (B, C, H, W), "calls": n}}``."""
    from tcnet.models.attention import SpatialReductionAttention

    seen: dict[str, dict] = {}

    def hook(module, inputs):
        B, C, H, W = inputs[0].shape
        label = f"C={C} heads={module.num_heads} sr={module.sr_ratio} @ {H}×{W}"
        entry = seen.setdefault(label, {"module": module, "shape": (B, C, H, W), "calls": 0})
        entry["calls"] += 1

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, SpatialReductionAttention)]
    with torch.no_grad():
        model(torch.randn(batch, 3, size, size))
    for h in handles:
        h.remove()
    return seen


def _projection_fns(lin: torch.nn.Linear, B: int, h: int, w: int) -> tuple[dict, int]:
    """Forward + backward of ``lin`` on a ``B×in×h×w`` channels_last map, both routes; and its FLOPs."""
    import torch.nn.functional as F

    from tcnet.models.attention import project

    x = torch.randn(B, lin.in_features, h, w).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(B, lin.out_features, h, w).contiguous(memory_format=torch.channels_last)
    tokens = x.detach().flatten(2).transpose(1, 2).requires_grad_()  # contiguous: a CL map's pixels
    params = [lin.weight, lin.bias]
    fns = {"blas": _fwd_bwd(lambda t: F.linear(t, lin.weight, lin.bias), tokens, params, g.flatten(2).transpose(1, 2)),
           "onednn": _fwd_bwd(lambda t: project(t, lin, onednn=True), x, params, g)}
    return fns, 3 * 2 * B * h * w * lin.in_features * lin.out_features


def _fill_projection_row(r: dict, med: dict, prefix: str) -> dict:
    r["blas_ms"], r["onednn_ms"] = med[f"{prefix}blas"] * 1e3, med[f"{prefix}onednn"] * 1e3
    r["blas_gflops"], r["onednn_gflops"] = r["flops"] / r["blas_ms"] / 1e6, r["flops"] / r["onednn_ms"] / 1e6
    r["ratio"] = r["onednn_ms"] / r["blas_ms"]
    return r


def _fwd_bwd(fn, inp: torch.Tensor, params: list[torch.Tensor], grad: torch.Tensor):
    def call():
        y = fn(inp)
        torch.autograd.grad(y, [inp, *params], grad)
    return call


def run(args, mode: common.Mode) -> dict:
    import tcnet

    name = args.model or mode.pick("tcnet_tiny", "tcnet_base", "tcnet_base")
    size = args.size or mode.pick(32, 224, 448)
    repeats = args.repeats or mode.pick(1, 5, 9)
    torch.manual_seed(0)
    model = tcnet.create_model(name).train().to(memory_format=torch.channels_last)
    calls = attention_calls(model, size, args.batch)
    n_calls = sum(c["calls"] for c in calls.values())
    common.progress(f"{name} at {size}², batch {args.batch}: {n_calls} attention calls, {len(calls)} kinds")
    proj_rows, mod_rows = [], []
    n = args.square or mode.pick(64, 1024, 2048)
    fns, flops = _projection_fns(torch.nn.Linear(n, n), 1, n // 32, 32)
    common.progress(f"square reference {n} × {n} → {n}: timing (interleaved, {repeats} repeats)")
    med = {k: common.median(v) for k, v in common.time_interleaved(fns, repeats, warmup=mode.warmup()).items()}
    proj_rows.append(_fill_projection_row({"module": "reference (square)", "proj": "-", "shape": f"{n} × {n} → {n}",
                                           "flops": flops}, med, ""))
    for label, c in calls.items():
        m, (B, C, H, W) = c["module"], c["shape"]
        hh, ww = H // m.sr_ratio, W // m.sr_ratio
        fns = {}
        for proj, lin, (h_, w_) in (("q", m.q, (H, W)), ("kv", m.kv, (hh, ww)), ("proj", m.proj, (H, W))):
            pf, flops = _projection_fns(lin, B, h_, w_)
            fns.update({f"{proj} {route}": f for route, f in pf.items()})
            proj_rows.append({"module": label, "proj": proj, "shape": f"{B * h_ * w_} × {lin.in_features} → "
                              f"{lin.out_features}", "flops": flops})
        x = torch.randn(B, C, H, W).contiguous(memory_format=torch.channels_last).requires_grad_()
        g = torch.randn(B, C, H, W).contiguous(memory_format=torch.channels_last)
        params = [p for p in m.parameters()]
        for route, onednn in (("blas", False), ("onednn", True), ("auto", None)):
            fns[f"module {route}"] = _fwd_bwd(lambda t, onednn=onednn: _attention(m, t, onednn), x, params, g)
        common.progress(f"{label}: timing (interleaved, {repeats} repeats)")
        times = common.time_interleaved(fns, repeats, warmup=mode.warmup(2))
        med = {k: common.median(v) for k, v in times.items()}
        for r in proj_rows[-3:]:
            _fill_projection_row(r, med, f"{r['proj']} ")
        mod_rows.append({"module": label, "calls": c["calls"], "blas_ms": med["module blas"] * 1e3 * c["calls"],
                         "onednn_ms": med["module onednn"] * 1e3 * c["calls"],
                         "ratio": med["module onednn"] / med["module blas"],
                         "auto_ms": med["module auto"] * 1e3 * c["calls"],
                         "auto_ratio": med["module auto"] / med["module blas"],
                         "times_s": {k: common.stats(v) for k, v in times.items() if k.startswith("module")}})
    total = {"module": "all attention of one step", "calls": sum(r["calls"] for r in mod_rows),
             **{k: sum(r[k] for r in mod_rows) for k in ("blas_ms", "onednn_ms", "auto_ms")}}
    total["ratio"], total["auto_ratio"] = total["onednn_ms"] / total["blas_ms"], total["auto_ms"] / total["blas_ms"]
    common.print_table(f"## {name}'s attention projections at {size}², batch {args.batch}, channels_last, float32: "
                       f"forward + backward, median of {repeats}", PROJ_COLS, proj_rows)
    common.print_table(f"## {name}'s attention modules (projections + sr conv + LayerNorm + SDPA), forward + backward, "
                       "per step (calls × median)", MOD_COLS, mod_rows + [total])
    common.say(f"attention of one {name} step: BLAS route {total['blas_ms']:.1f} ms, oneDNN route "
               f"{total['onednn_ms']:.1f} ms ({total['ratio']:.2f}×), auto (the model's choice per call) "
               f"{total['auto_ms']:.1f} ms ({total['auto_ratio']:.2f}×)")
    return {
        "settings": {"model": name, "size": size, "batch": args.batch, "square": n, "repeats": repeats,
                     "dtype": "float32",
                     "memory_format": "channels_last", "blas": _blas_line()},
        "tables": {"projections": proj_rows, "modules": mod_rows + [total]},
        "summary": {"metric": "attention fwd+bwd per step, the model's route (auto) / F.linear route (no target)",
                    "value": total["auto_ratio"], "onednn_over_blas": total["ratio"], "target": None, "met": None},
        "notes": [],
    }


def _attention(m, x: torch.Tensor, onednn: bool | None) -> torch.Tensor:
    """The module's forward with the projections' route forced (``None``: the module's own choice)."""
    m.onednn = onednn
    try:
        return m(x)
    finally:
        m.onednn = None


def _blas_line() -> str:
    """The BLAS and oneDNN versions torch was built with (from ``torch.__config__.show()``)."""
    lines = [ln.strip(" -") for ln in torch.__config__.show().splitlines()]
    return "; ".join(ln for ln in lines if "Math Kernel Library" in ln or "MKL-DNN" in ln or "BLAS_INFO" in ln[:9])
