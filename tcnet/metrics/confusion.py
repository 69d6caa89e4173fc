"""The one confusion-matrix core: every score in tcnet derives from ``confusion``'s counts."""

from __future__ import annotations

import numpy as np


def is_tensor(x) -> bool:
    """True for a torch tensor (checked without importing torch)."""
    return type(x).__module__.split(".")[0] == "torch"


def _binary(x, name: str):
    """``x`` as a bool array/tensor: bool passes, integers are ``!= 0``, floats are refused."""
    if is_tensor(x):
        if x.is_floating_point() or x.is_complex():
            raise ValueError(
                f"{name} is a {x.dtype} tensor; confusion() takes binary masks -- threshold "
                "probabilities first (e.g. probs >= 0.5)"
            )
        return x if x.dtype == _torch().bool else x != 0
    x = np.asarray(x)
    if x.dtype == bool:
        return x
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(
            f"{name} has dtype {x.dtype}; confusion() takes binary masks (bool or integer 0/1) -- "
            "threshold probabilities first (e.g. probs >= 0.5)"
        )
    return x != 0


def _torch():
    import torch

    return torch


def confusion(pred, truth, valid=None, *, batch: bool = False):
    """``(tp, fp, fn, tn)`` pixel counts of a binary prediction against a binary truth.

    Foreground is ``True`` (or any non-zero integer). Only pixels where ``valid`` is non-zero count
    (the retina field of view); ``None`` = every pixel. NumPy arrays give NumPy int64 counts;
    torch tensors give int64 tensors on the same device.

    Args:
        pred, truth: binary masks of the same shape (bool or integer; floats are refused so that a
            probability map is never read as "non-zero = foreground" by accident).
        valid: optional mask of the same shape.
        batch: ``False``: one set of counts over all pixels (scalars). ``True``: axis 0 indexes
            images and the counts are per image (arrays of length ``N``).

    Shape:
        pred, truth, valid: any shape, e.g. ``H x W``; ``N x H x W`` (or ``N x 1 x H x W``) with
        ``batch=True``. Returns four scalars, or four length-``N`` arrays with ``batch=True``.
    """
    if tuple(pred.shape) != tuple(truth.shape):
        raise ValueError(f"pred has shape {tuple(pred.shape)}, truth has shape {tuple(truth.shape)}; they must match")
    if valid is not None and tuple(valid.shape) != tuple(truth.shape):
        raise ValueError(f"valid has shape {tuple(valid.shape)}, truth has shape {tuple(truth.shape)}; they must match")
    if batch and len(truth.shape) < 1:
        raise ValueError("batch=True needs an image axis (axis 0)")
    p, t = _binary(pred, "pred"), _binary(truth, "truth")
    v = None if valid is None else _binary(valid, "valid")
    if v is not None:
        p, t = p & v, t & v
    if is_tensor(p):
        torch = _torch()
        flat = (lambda x: x.reshape(x.shape[0], -1)) if batch else (lambda x: x.reshape(1, -1))
        tp = flat(p & t).sum(1)
        fp = flat(p).sum(1) - tp
        fn = flat(t).sum(1) - tp
        n = flat(v).sum(1) if v is not None else torch.full_like(tp, flat(p).shape[1])
        out = (tp, fp, fn, n - tp - fp - fn)
        return out if batch else tuple(c[0] for c in out)
    axis = tuple(range(1, p.ndim)) if batch else None
    tp = np.count_nonzero(p & t, axis=axis)
    fp = np.count_nonzero(p, axis=axis) - tp
    fn = np.count_nonzero(t, axis=axis) - tp
    if v is not None:
        n = np.count_nonzero(v, axis=axis)
    else:
        n = int(np.prod(p.shape[1:] if batch else p.shape, dtype=np.int64))
    tn = n - tp - fp - fn
    return tuple(np.asarray(c, dtype=np.int64) if batch else np.int64(c) for c in (tp, fp, fn, tn))
