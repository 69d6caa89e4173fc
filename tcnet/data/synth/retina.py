"""Synthetic fundus photographs with a vessel tree (DRIVE / CHASE_DB1 look-alike).

What it imitates (it is NOT real data; scores on it say nothing about the paper's numbers):

- a circular field of view on a black surround, the orange-red fundus inside with uneven
  illumination (bright centre, dim rim), a darker macula and a bright yellowish optic disc on the
  nasal side (left of the image for a left eye, right for a right eye);
- a vessel tree growing out of the disc: four main arcades (the temporal ones curving around the
  macula), recursively branching into thinner and paler vessels, each drawn as a wandering curve
  whose width shrinks at every branching, down to 1 px;
- mild noise. The vessel mask is exactly the drawn tree inside the FOV.

``make_fundus(rng, width, height, eye="L") -> (rgb uint8 H x W x 3, vessels bool H x W, fov bool H x W)``.
"""

from __future__ import annotations

import numpy as np

from tcnet.data.synth.common import polyline_px, smooth_noise, to_uint8

FUNDUS = np.array((205, 92, 38), np.float64)
DISC = np.array((250, 214, 150), np.float64)
VESSEL_DARKEN = np.array((0.50, 0.68, 0.55))  # fraction of each channel removed at full contrast
SHIFT = 4  # OpenCV fixed-point fraction bits for sub-pixel drawing


MAX_SEGMENTS = 2000
MIN_WIDTH = 0.9  # px; thinner branches are not grown


def _grow(rng, segments, fov_r, centre, x, y, angle, width, curl, depth, step):
    """Grow one vessel segment from (x, y), then bifurcate: a continuation that keeps the curve's
    bend and most of the width, and a thinner branch leaving at a wider angle. Appends
    (points, width) to ``segments``."""
    if len(segments) >= MAX_SEGMENTS:
        return
    pts = [(x, y)]
    n = max(3, int(fov_r * rng.uniform(0.22, 0.42) / step))
    side_branches = []
    for i in range(n):
        angle += curl + rng.normal(0.0, 0.07)
        x += step * np.cos(angle)
        y += step * np.sin(angle)
        pts.append((x, y))
        if np.hypot(x - centre[0], y - centre[1]) > fov_r * 1.03:
            break
        if width > 1.5 and i > 2 and rng.random() < 0.05:  # thin side branch at a steep angle
            side_branches.append((x, y, angle + rng.choice((-1, 1)) * rng.uniform(0.9, 1.4)))
    segments.append((np.array(pts), width))
    if np.hypot(x - centre[0], y - centre[1]) > fov_r or depth >= 12:
        return
    for bx, by, ba in side_branches:
        _grow(rng, segments, fov_r, centre, bx, by, ba, max(MIN_WIDTH, width * rng.uniform(0.3, 0.45)),
              rng.normal(0, 0.01), depth + 3, step)
    sign = rng.choice((-1, 1))
    main_w, branch_w = width * rng.uniform(0.78, 0.9), width * rng.uniform(0.5, 0.72)
    if main_w >= MIN_WIDTH:
        _grow(rng, segments, fov_r, centre, x, y, angle + sign * rng.uniform(0.1, 0.35), main_w,
              curl, depth + 1, step)
    if branch_w >= MIN_WIDTH:
        _grow(rng, segments, fov_r, centre, x, y, angle - sign * rng.uniform(0.45, 0.95), branch_w,
              rng.normal(0, 0.012), depth + 1, step)


def vessel_segments(rng, w: int, h: int, centre, fov_r: float, disc, temporal: int):
    """The tree as a list of (points (n, 2) float, width px), main arcades first."""
    segments: list = []
    step = max(1.0, fov_r / 45)
    w_main = max(1.6, 0.032 * fov_r)
    dx, dy = disc
    t = temporal  # +1: the macula is to the right of the disc, -1: to the left
    base = 0.0 if t > 0 else np.pi
    # (angle offset from the temporal direction, turn per step towards temporal, width factor)
    arcades = [
        (-1.45, +0.016, 1.0), (+1.45, -0.016, 0.95),   # superior / inferior temporal
        (-2.3, -0.004, 0.75), (+2.3, +0.004, 0.7),     # superior / inferior nasal
    ]
    for off, curl, wf in arcades:
        a0 = base + t * (off + rng.normal(0, 0.08))
        _grow(rng, segments, fov_r, centre, dx, dy, a0, w_main * wf * rng.uniform(0.9, 1.1),
              t * curl * (45 * step / fov_r), 0, step)
    for _ in range(int(rng.integers(2, 5))):  # small vessels straight out of the disc
        _grow(rng, segments, fov_r, centre, dx, dy, rng.uniform(0, 2 * np.pi),
              max(MIN_WIDTH, w_main * rng.uniform(0.3, 0.45)), rng.normal(0, 0.01), 4, step)
    return segments


def make_fundus(rng: np.random.Generator, w: int, h: int, eye: str = "L",
                fov_radius: float = 0.47, centre_jitter: float = 0.0):
    """A fundus-looking RGB image, its vessel mask and its FOV mask.

    ``fov_radius``: FOV radius as a fraction of min(W, H); ``centre_jitter``: random offset of the
    FOV centre as a fraction of min(W, H).
    """
    import cv2
    from scipy import ndimage

    import tcnet.data.transforms  # noqa: F401  (OpenCV single-threaded, fork-safe: see there)

    side = min(w, h)
    cx = (w - 1) / 2 + rng.uniform(-centre_jitter, centre_jitter) * side
    cy = (h - 1) / 2 + rng.uniform(-centre_jitter, centre_jitter) * side
    fov_r = fov_radius * side * rng.uniform(0.98, 1.02)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rr = np.hypot(xx - cx, yy - cy)
    fov = rr <= fov_r

    temporal = 1 if eye.upper() == "L" else -1  # left eye: disc on the left, macula to its right
    disc = (cx - temporal * fov_r * rng.uniform(0.42, 0.55), cy + fov_r * rng.uniform(-0.12, 0.12))
    disc_r = fov_r * rng.uniform(0.11, 0.14)
    macula = (cx + temporal * fov_r * rng.uniform(0.0, 0.12), cy + fov_r * rng.uniform(-0.05, 0.08))

    # Fundus background: colour, illumination falloff, texture, macula.
    colour = FUNDUS * rng.uniform(0.85, 1.08) + rng.normal(0, 5, 3)
    illum = 1.05 - 0.5 * (rr / fov_r) ** 2.2 + 0.06 * smooth_noise(rng, h, w, cell=side / 4, octaves=2)
    img = colour[None, None, :] * illum[..., None]
    img *= (1 + 0.03 * smooth_noise(rng, h, w, cell=side / 30, octaves=2))[..., None]
    dm = np.hypot(xx - macula[0], yy - macula[1])
    img *= (1 - 0.32 * np.exp(-(dm / (0.16 * fov_r)) ** 2))[..., None]

    # Optic disc: bright, yellowish, soft edge, brighter cup.
    dd = np.hypot(xx - disc[0], yy - disc[1])
    a_disc = 1 / (1 + np.exp((dd - disc_r) / max(0.8, 0.12 * disc_r)))
    img = img * (1 - a_disc[..., None]) + DISC * a_disc[..., None]
    img += (30 * np.exp(-(dd / (0.45 * disc_r)) ** 2))[..., None]

    # Vessels: draw thin/pale first, thick/dark last (one uint8 contrast layer; later draws win).
    segments = vessel_segments(rng, w, h, (cx, cy), fov_r, disc, temporal)
    w_max = max(s[1] for s in segments)
    layer = np.zeros((h, w), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for pts, width in sorted(segments, key=lambda s: s[1]):
        thick = max(1, int(round(width)))
        contrast = 0.35 + 0.6 * min(1.0, width / w_max) ** 0.7
        p = polyline_px(pts, SHIFT)
        cv2.polylines(layer, [p], False, int(round(255 * contrast)), thick, cv2.LINE_8, shift=SHIFT)
        cv2.polylines(mask, [p], False, 1, thick, cv2.LINE_8, shift=SHIFT)
    dark = ndimage.gaussian_filter(layer.astype(np.float64) / 255.0, sigma=0.6)
    dark *= 1 - 0.6 * a_disc  # vessels fade on the bright disc
    img *= 1 - dark[..., None] * VESSEL_DARKEN[None, None, :]

    img += rng.normal(0, 2.5, img.shape)
    img *= fov[..., None]  # black surround ...
    img += np.abs(rng.normal(0, 1.2, img.shape)) * (~fov)[..., None]  # ... with a little sensor noise
    vessels = (mask > 0) & fov
    return to_uint8(img), vessels, fov
