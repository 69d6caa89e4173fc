"""Synthetic dermoscopy: a pigmented lesion on skin, with hairs and vignetting (ISIC / PH2 look-alike).

What it imitates, so that the same code path runs as on real data (it is NOT real data, and scores
on it say nothing about the paper's numbers):

- skin: a pinkish-beige base colour with blotchy low-frequency texture and fine grain;
- the lesion: one irregular blob (radius modulated by a random Fourier series, elongated and
  rotated), brown-to-dark palette with internal variation (light/dark patches, a faint pigment
  network, sometimes a blue-grey veil), its edge soft in the image while the truth mask is crisp;
- hairs: a few thin dark curves crossing lesion and skin (they are not part of the mask);
- illumination: vignetting, and in some images the dark round aperture of the dermatoscope.

``make_lesion(rng, width, height) -> (rgb uint8 H x W x 3, mask bool H x W)``.
"""

from __future__ import annotations

import numpy as np

from tcnet.data.synth.common import polyline_px, quadratic_curve, smooth_noise, to_uint8

SKIN_COLOURS = np.array([(228, 178, 152), (214, 160, 132), (236, 196, 172), (200, 146, 120)], np.float64)
LESION_LIGHT = np.array([(176, 112, 78), (160, 100, 70), (190, 128, 92)], np.float64)
LESION_DARK = np.array([(92, 54, 38), (70, 42, 32), (110, 66, 44)], np.float64)
VEIL = np.array((104, 100, 118), np.float64)  # blue-whitish / grey structures
HAIR = np.array((38, 28, 24), np.float64)


def lesion_mask(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """One irregular, star-shaped (hence connected, hole-free) lesion as bool H x W."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    side = min(w, h)
    cx = w / 2 + rng.uniform(-0.12, 0.12) * w
    cy = h / 2 + rng.uniform(-0.12, 0.12) * h
    radius = rng.uniform(0.17, 0.38) * side
    rot = rng.uniform(0, np.pi)
    stretch = rng.uniform(0.72, 1.0)
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(rot) + dy * np.sin(rot)
    v = (-dx * np.sin(rot) + dy * np.cos(rot)) / stretch
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    boundary = np.ones_like(r)
    for k in range(2, 16):  # coarse lobes plus a fine ragged edge
        amp = rng.uniform(0.0, 0.16) / k**0.9
        boundary += amp * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return r < radius * np.clip(boundary, 0.45, None)


def make_lesion(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """A dermoscopic-looking RGB image and its lesion mask."""
    from scipy import ndimage

    side = min(w, h)
    mask = lesion_mask(rng, w, h)

    # Skin: base colour, blotchy texture, fine grain.
    skin = SKIN_COLOURS[rng.integers(len(SKIN_COLOURS))] * rng.uniform(0.9, 1.04) + rng.normal(0, 3, 3)
    tex = smooth_noise(rng, h, w, cell=side / 5, octaves=3)
    img = skin[None, None, :] * (1 + 0.045 * tex[..., None])
    img[..., 0] += 5 * smooth_noise(rng, h, w, cell=side / 3)[...]  # reddish blotches

    # Lesion colour: mix of a light and a dark brown driven by smooth noise, darker towards the core.
    light = LESION_LIGHT[rng.integers(len(LESION_LIGHT))] * rng.uniform(0.85, 1.1) + rng.normal(0, 4, 3)
    dark = LESION_DARK[rng.integers(len(LESION_DARK))] * rng.uniform(0.8, 1.15) + rng.normal(0, 3, 3)
    dist_in = ndimage.distance_transform_edt(mask)
    core = np.clip(dist_in / max(dist_in.max(), 1.0), 0, 1)
    mix = np.clip(0.35 + 0.45 * core + 0.28 * smooth_noise(rng, h, w, cell=side / 8, octaves=2), 0, 1)
    lesion = light[None, None, :] * (1 - mix[..., None]) + dark[None, None, :] * mix[..., None]
    # Faint pigment network: a distorted grid of darker lines.
    freq = 2 * np.pi / (side * rng.uniform(0.05, 0.09))  # mesh period ~5-9 % of the side
    warp = 4.0 * smooth_noise(rng, h, w, cell=side / 10, octaves=2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    net = np.maximum(np.cos(freq * xx + warp), np.cos(freq * yy - warp))
    lesion *= (1 - rng.uniform(0.03, 0.1) * np.clip(net, 0, 1) ** 6)[..., None]
    if rng.random() < 0.3:  # blue-grey veil patch
        veil = np.clip(smooth_noise(rng, h, w, cell=side / 6) - 1.0, 0, 1)[..., None] * 0.55
        lesion = lesion * (1 - veil) + VEIL * veil

    # Soft edge in the image (the truth mask stays crisp at alpha = 0.5).
    alpha = ndimage.gaussian_filter(mask.astype(np.float64), sigma=max(0.8, side / 120))
    img = img * (1 - alpha[..., None]) + lesion * alpha[..., None]

    # Hairs: thin dark curves (not part of the lesion mask).
    import cv2

    import tcnet.data.transforms  # noqa: F401  (OpenCV single-threaded, fork-safe: see there)

    hair_layer = np.zeros((h, w), np.uint8)
    thickness = max(1, int(round(side / 300)))
    for _ in range(int(rng.poisson(2.5))):
        p0 = rng.uniform((-0.1 * w, -0.1 * h), (1.1 * w, 1.1 * h))
        ang = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.35, 1.0) * np.hypot(w, h)
        p2 = p0 + length * np.array([np.cos(ang), np.sin(ang)])
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.15 * length, 2)
        pts = polyline_px(quadratic_curve(p0, p1, p2, 40))
        cv2.polylines(hair_layer, [pts], False, int(rng.integers(150, 230)), thickness, cv2.LINE_AA, shift=4)
    a_hair = (hair_layer.astype(np.float64) / 255.0)[..., None]
    img = img * (1 - a_hair) + HAIR * a_hair

    # Illumination: vignetting, sometimes the dermatoscope's dark round aperture.
    cy0, cx0 = (h - 1) / 2, (w - 1) / 2
    rr = np.hypot((yy - cy0) / (h / 2), (xx - cx0) / (w / 2)) / np.sqrt(2)
    img *= (1 - rng.uniform(0.15, 0.4) * rr**2.2)[..., None]
    if rng.random() < 0.25:
        edge = rng.uniform(0.85, 1.0)
        aperture = np.clip((edge - rr * np.sqrt(2) * 0.8) / 0.05, 0, 1)
        img *= (0.08 + 0.92 * aperture)[..., None]

    img += rng.normal(0, 2.0, img.shape)
    return to_uint8(img), mask
