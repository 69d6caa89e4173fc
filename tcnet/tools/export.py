"""``tcnet export``: a trained model to ONNX or TorchScript, verified against PyTorch.

The exported graph takes the normalised ``N x 3 x S x S`` float32 tensor that
:func:`tcnet.data.transforms.prepare_image` makes (ImageNet mean/std, RGB) and returns the logits
``N x K x S x S`` (K = 1: ``sigmoid`` gives the foreground probability). ``S`` is fixed at export
(default: the checkpoint's ``image_size``); the batch axis is dynamic (ONNX input ``image``, output
``logits``, axis 0 ``batch``).

Before export the model is made exportable without changing what it computes:

1. every large-kernel depthwise conv is switched to ``lk_impl="direct"``: the FFT path
   (``torch.fft.rfft2``) neither traces (``torch.jit.trace``) nor exports to ONNX;
2. each large kernel is cropped once to the taps that can reach its feature map at size ``S``
   (``tcnet.models.lk_conv.crop_kernel``, exact): the crop is otherwise a slice of the weight at
   run time, which the TorchScript-based ONNX exporter rejects ("convolution for kernel of
   unknown shape").

ONNX uses torch's TorchScript-based exporter (``dynamo=False``): the torch.export-based exporter,
torch's default since 2.9, needs ``onnxscript``, which tcnet does not depend on.

Then the file is VERIFIED: ONNX under onnxruntime (CPU) and TorchScript after ``torch.jit.load``
must reproduce the original PyTorch model (as loaded, its own ``lk_impl``) to ``--atol`` (default
1e-4, max absolute difference of the logits) on random inputs and on a real-looking image, with
batch sizes 1 and 2. A file that fails is not left at ``--out``; the command fails (exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import errno
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tcnet.models.outputs import main_output
from tcnet.tools.predict import example_image
from tcnet.utils.atomic import atomic_path

FORMATS = ("onnx", "torchscript")
DEFAULT_ATOL = 1e-4
DEFAULT_OPSET = 17
SDPA_MIN_OPSET = 14  # ONNX export of F.scaled_dot_product_attention (the ETM's attention) starts here
VERIFY_BATCHES = (1, 2)


class ExportVerificationError(RuntimeError):
    """The exported model does not reproduce the PyTorch model."""


@dataclass
class ExportResult:
    path: str
    format: str
    image_size: int
    max_abs_diff: float
    atol: float
    model_name: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Logits(nn.Module):
    """The model's main logits only (no auxiliary heads, no dict/tuple)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return main_output(self.inner(image))


def exportable_copy(model, size: int):
    """A copy of ``model`` ready to trace at ``size``: direct large-kernel convs, kernels cropped to
    their feature maps, main logits only. The original is untouched."""
    from tcnet.models.lk_conv import LargeKernelDWConv, crop_kernel, set_lk_impl

    m = copy.deepcopy(model).cpu().eval()
    set_lk_impl(m, "direct")
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        mod.register_forward_pre_hook(lambda mod, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
        for name, mod in m.named_modules() if isinstance(mod, LargeKernelDWConv)
    ]
    try:
        with torch.inference_mode():
            m(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    for name, mod in m.named_modules():
        if isinstance(mod, LargeKernelDWConv) and name in sizes:
            w, _ = crop_kernel(mod.weight.detach(), *sizes[name])
            if tuple(w.shape) != tuple(mod.weight.shape):
                mod.weight = torch.nn.Parameter(w.clone(), requires_grad=False)
                mod.kernel_size = int(w.shape[-1])
    for p in m.parameters():
        p.requires_grad_(False)
    return Logits(m).eval()


def verification_inputs(size: int, seed: int = 0) -> list[np.ndarray]:
    """Float32 ``N x 3 x S x S`` inputs: random normal (batch 1 and 2) and a prepared image."""
    from tcnet.data.transforms import prepare_image

    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(n, 3, size, size, generator=g).numpy() for n in VERIFY_BATCHES]
    out.append(prepare_image(example_image(3 * size // 2, size), size).numpy())
    return out


def _reference(model, inputs: list[np.ndarray]) -> list[np.ndarray]:
    ref_model = copy.deepcopy(model).cpu().eval()
    with torch.inference_mode():
        return [main_output(ref_model(torch.from_numpy(x))).float().numpy() for x in inputs]


def _run_onnx(path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x})[0] for x in inputs]


def _run_torchscript(path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
    # The profiling executor's first calls re-optimise the graph (seconds); the answer is the same.
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        return [loaded(torch.from_numpy(x)).float().numpy() for x in inputs]


def _metadata(meta: dict, size: int) -> dict[str, str]:
    from tcnet.data.transforms import MEAN, STD

    return {
        "tcnet.model_name": str(meta.get("model_name", "")),
        "tcnet.num_classes": str(meta.get("num_classes", 1)),
        "tcnet.image_size": str(size),
        "tcnet.input": f"float32 N x 3 x {size} x {size}, RGB, (x/255 - mean)/std",
        "tcnet.mean": json.dumps(list(MEAN)),
        "tcnet.std": json.dumps(list(STD)),
        "tcnet.output": "logits N x K x S x S; K=1: sigmoid -> foreground probability",
        "tcnet.source": str(meta.get("source", "")),
    }


def uses_sdpa(net: torch.nn.Module) -> bool:
    """Whether ``net`` computes attention through ``F.scaled_dot_product_attention``."""
    from tcnet.models.attention import SpatialReductionAttention

    return any(isinstance(m, SpatialReductionAttention) for m in net.modules())


@contextlib.contextmanager
def _stdout_fd_dropped():
    """Drop what C++ code writes to file descriptor 1 inside the block.

    torch 2.14's TorchScript ONNX exporter turns its log on for every export (``setup_onnx_logging``
    tests the function ``_jit_is_onnx_log_enabled`` instead of calling it) and so prints the whole
    Torch IR graph, thousands of lines, to stdout when an export fails. The failure is reported as
    one line by :func:`export`; the dump would bury it.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _export_onnx(module, size: int, path: Path, metadata: dict[str, str], opset: int) -> None:
    import onnx

    example = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings(), _stdout_fd_dropped():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(
            module, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _export_torchscript(module, size: int, path: Path, metadata: dict[str, str]) -> None:
    example = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        with torch.no_grad():
            traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"tcnet.json": json.dumps(metadata)})


def export(
    model: str,
    fmt: str,
    out: str | Path,
    *,
    size: int | None = None,
    atol: float = DEFAULT_ATOL,
    opset: int = DEFAULT_OPSET,
) -> ExportResult:
    """Export MODEL (anything :mod:`tcnet.tools.model_source` resolves) to ``out`` and verify it."""
    from tcnet.tools.model_source import load
    from tcnet.tools.predict import image_size_of

    if fmt not in FORMATS:
        from tcnet.config import did_you_mean

        raise ValueError(f"unknown format {fmt!r}{did_you_mean(fmt, FORMATS)}; valid: {', '.join(FORMATS)}")
    if not atol >= 0:
        raise ValueError(f"--atol must be >= 0, got {atol:g}")
    from torch.onnx import _constants as onnx_constants

    lo, hi = onnx_constants.ONNX_MIN_OPSET, onnx_constants.ONNX_MAX_OPSET
    if fmt == "onnx" and not lo <= opset <= hi:  # below it torch dumps the whole graph before failing
        raise ValueError(f"--opset {opset}: torch {torch.__version__} exports ONNX opsets {lo}-{hi} "
                         f"(default {DEFAULT_OPSET}; TCNet's attention needs 14 or later)")
    out = Path(out)
    if out.is_dir():  # checked before the export's minutes, not after them
        raise IsADirectoryError(errno.EISDIR, "is a folder; --out names the file to write", str(out))
    if size is not None and (size < 32 or size % 32):  # before the model loads; 0 is not "the default"
        raise ValueError(f"--size must be a positive multiple of 32, got {size}")
    net, meta, _ = load(model, "cpu")
    if fmt == "onnx" and opset < SDPA_MIN_OPSET and uses_sdpa(net):
        raise ValueError(f"--opset {opset}: {model} has attention (scaled_dot_product_attention), which ONNX "
                         f"exports from opset {SDPA_MIN_OPSET} (default {DEFAULT_OPSET})")
    size = int(size if size is not None else image_size_of(meta))
    if size < 32 or size % 32:
        raise ValueError(f"the checkpoint's image_size {size} is not a positive multiple of 32: pass --size")
    inputs = verification_inputs(size)
    reference = _reference(net, inputs)
    module = exportable_copy(net, size)
    metadata = _metadata(meta, size)

    with atomic_path(out) as tmp:
        if fmt == "onnx":
            try:
                _export_onnx(module, size, tmp, metadata, opset)
            except (RuntimeError, torch.onnx.errors.OnnxExporterError) as e:  # e.g. an opset too old or too new
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(f"ONNX export failed: {first} (at --opset {opset}; default {DEFAULT_OPSET}); "
                                 f"nothing written to {out}") from None
            got = _run_onnx(tmp, inputs)
        else:
            _export_torchscript(module, size, tmp, metadata)
            got = _run_torchscript(tmp, inputs)
        diff = 0.0
        for ref, res in zip(reference, got):
            if res.shape != ref.shape:
                raise ExportVerificationError(
                    f"{fmt} export of {model}: output shape {res.shape} != PyTorch {ref.shape}")
            diff = max(diff, float(np.abs(res.astype(np.float64) - ref).max()))
        if not diff <= atol:
            raise ExportVerificationError(
                f"{fmt} export of {model} does not match PyTorch: max |difference| {diff:.3g} > atol {atol:g}; "
                f"nothing written to {out}"
            )
    return ExportResult(str(out), fmt, size, diff, atol, str(meta.get("model_name", "")))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "MODEL: a checkpoint, run folder, saved MLflow model folder or MLflow URI (runs:/<id>/pyfunc, "
        "models:/tcnet@champion).\n"
        "The input is the normalised N x 3 x S x S tensor of prepare_image; the output the logits.\n"
        "The file is verified (onnxruntime / torch.jit.load) against PyTorch before it is kept.\n"
        "exit status: 0 exported and verified; 2 bad arguments or verification failed."
    )
    parser.add_argument("--model", required=True, metavar="MODEL", help="checkpoint, run folder or MLflow model URI")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (dynamic batch axis) or torchscript")
    parser.add_argument("--out", required=True, metavar="FILE", help="the exported file (e.g. tcnet.onnx, tcnet.pt)")
    parser.add_argument("--size", type=int, default=None, metavar="S", help="input side (default: the checkpoint's image_size)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"verification tolerance (default {DEFAULT_ATOL:g})")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")


def main(args: argparse.Namespace) -> int:
    try:
        result = export(args.model, args.format, args.out, size=args.size, atol=args.atol, opset=args.opset)
    except ExportVerificationError as e:
        raise ValueError(str(e)) from None
    print(
        f"tcnet export: {result.format} {result.path} ({result.model_name}, input N x 3 x {result.image_size} x "
        f"{result.image_size}); verified: max |diff| vs PyTorch {result.max_abs_diff:.2e} <= {result.atol:g}",
        file=sys.stderr,
    )
    return 0


__all__ = ["export", "exportable_copy", "ExportResult", "ExportVerificationError", "add_arguments", "main"]
