"""Spatial-reduction multi-head self-attention (PVT), through ``F.scaled_dot_product_attention``.

Queries come from every position of the map; keys and values from the map reduced by a strided
``sr×sr`` convolution + LayerNorm (PVT v1), so the cost is ``N · N/sr²`` instead of ``N²``.
SDPA picks the flash / memory-efficient kernels on GPU; no softmax(QKᵀ) is ever built by hand.

On CPU the three projections (q, kv, proj) run as 1×1 convolutions on the map, with the
``nn.Linear`` layers' own weights: the same numbers through oneDNN instead of the BLAS behind
``F.linear``. PyTorch's wheels bring Intel MKL as that BLAS, which takes its AVX2 code on AMD
processors, while oneDNN uses AVX-512 wherever the CPU has it: on the AMD EPYC (AVX-512) that the
benchmarks ran on, the projections with 128-512 channels ran at 135-251 GFLOP/s as 1×1
convolutions and 105-152 through ``F.linear``, forward + backward (``python -m benchmarks gemm``;
docs/performance.md §2, ninth round).
On small products oneDNN's fixed cost per call wins instead: from ``ONEDNN_MIN_MACS`` multiply-adds
a call on (tokens × in × out; measured crossover 2-8 M), and never off the CPU (CUDA, meta), the
projections are ``F.linear`` on the tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN_MIN_MACS = 1 << 23  # ~8.4 M: below it F.linear was faster at every width measured (16-512)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """``B×C×H×W -> B×(H·W)×C``: a view for a channels_last map, a copy otherwise."""
    return x.flatten(2).transpose(1, 2)


def _as_map(tokens: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``B×(H·W)×C -> B×C×H×W``: the inverse of :func:`_tokens` (contiguous tokens give a channels_last view)."""
    B, N, C = tokens.shape
    return tokens.transpose(1, 2).reshape(B, C, H, W)


def project(x: torch.Tensor, linear: nn.Linear, onednn: bool | None = None) -> torch.Tensor:
    """``linear`` applied to every pixel of the map ``x`` (``B×C×H×W -> B×C'×H×W``).

    ``onednn=True``: as a 1×1 convolution with the layer's weight and bias (see the module doc);
    ``False``: ``F.linear`` on the tokens; ``None``: the former on CPU for products of at least
    ``ONEDNN_MIN_MACS``, outside graph capture. Both give the same numbers up to float rounding.
    """
    if onednn is None:
        onednn = (x.device.type == "cpu" and not _graph_capture()
                  and x.numel() * linear.out_features >= ONEDNN_MIN_MACS)
    if onednn:
        return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)
    H, W = x.shape[-2:]
    return _as_map(linear(_tokens(x)), H, W)


def _graph_capture() -> bool:
    """Tracing, exporting or compiling: the plain ``F.linear`` graph is wanted there (a shape test
    would become a guard on a dynamic size, and the compiler picks its own GEMM kernels)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


class SpatialReductionAttention(nn.Module):
    """Multi-head self-attention on a ``B×C×H×W`` map; keys/values pooled by ``sr_ratio``.

    Shape: ``B×C×H×W -> B×C×H×W``. ``H`` and ``W`` must be multiples of ``sr_ratio``
    (true for TCNet on inputs that are multiples of 32). ``onednn``: the projections' route
    (:func:`project`); ``None`` picks it per call, ``True``/``False`` force it (benchmarks, tests).
    """

    onednn: bool | None = None

    def __init__(self, dim: int, num_heads: int = 1, sr_ratio: int = 1, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        else:
            self.sr = nn.Identity()
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h, d = self.num_heads, C // self.num_heads
        onednn = self.onednn
        q = _tokens(project(x, self.q, onednn)).reshape(B, H * W, h, d).transpose(1, 2)  # B×h×N×d
        reduced = self.sr(x)
        kv_src = _as_map(self.norm(_tokens(reduced)), *reduced.shape[-2:])  # LayerNorm over channels
        kv = _tokens(project(kv_src, self.kv, onednn)).reshape(B, -1, 2, h, d).permute(2, 0, 3, 1, 4)  # 2×B×h×M×d
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # B×h×N×d
        return project(_as_map(out.transpose(1, 2).reshape(B, H * W, C), H, W), self.proj, onednn)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}"
