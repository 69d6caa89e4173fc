"""Helpers shared by the synthetic image generators: seeded generators and smooth noise.

Everything here is deterministic for a given seed: NumPy's PCG64 generator, SciPy's spline zoom
and OpenCV's integer drawing routines only (no platform-dependent SIMD float paths), so the same
seed gives byte-identical files on every machine with the locked package versions.
"""

from __future__ import annotations

import zlib

import numpy as np


def rng_for(seed: int, *keys) -> np.random.Generator:
    """An independent generator for (seed, keys...): adding samples never changes earlier ones.

    String keys are turned into integers with CRC-32 (stable across runs, unlike ``hash``).
    """
    words = [int(seed) % 2**32]
    for k in keys:
        words.append(zlib.crc32(k.encode()) if isinstance(k, str) else int(k) % 2**32)
    return np.random.default_rng(np.random.SeedSequence(words))


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 1) -> np.ndarray:
    """Smooth random field of shape (h, w), about zero mean and unit std; features ~``cell`` px.

    Sum of ``octaves`` layers (each half the cell size, half the amplitude) of Gaussian noise on a
    coarse grid, upsampled with a cubic spline.
    """
    from scipy import ndimage

    out = np.zeros((h, w), np.float64)
    amp, total = 1.0, 0.0
    for _ in range(max(1, octaves)):
        gh = max(2, int(np.ceil(h / max(cell, 1.0))) + 2)
        gw = max(2, int(np.ceil(w / max(cell, 1.0))) + 2)
        grid = rng.standard_normal((gh, gw))
        layer = ndimage.zoom(grid, (h / gh, w / gw), order=3, mode="reflect", grid_mode=True)
        layer = _fit(layer, h, w)
        out += amp * layer
        total += amp * amp
        amp *= 0.5
        cell /= 2.0
    out /= np.sqrt(total)
    std = out.std()
    return out / std if std > 0 else out


def _fit(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Crop or edge-pad ``a`` to exactly (h, w) (zoom can be off by one pixel)."""
    a = a[:h, :w]
    if a.shape != (h, w):
        a = np.pad(a, ((0, h - a.shape[0]), (0, w - a.shape[1])), mode="edge")
    return a


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def quadratic_curve(p0, p1, p2, n: int) -> np.ndarray:
    """``n`` points of the quadratic Bezier curve p0 -> p2 pulled towards p1, as float (n, 2)."""
    t = np.linspace(0.0, 1.0, max(2, n))[:, None]
    p0, p1, p2 = (np.asarray(p, np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def polyline_px(points: np.ndarray, shift: int = 4) -> np.ndarray:
    """Float (x, y) points -> int32 points in OpenCV's fixed-point format (``shift`` fraction bits)."""
    return np.rint(np.asarray(points, np.float64) * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
