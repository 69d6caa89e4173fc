"""tcnet.data.io: every shipped format decodes to uint8 RGB / grey; bad files name themselves."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tcnet.data.io import InvalidInputError, open_image, read_gray, read_image, write_png


def _rgb(h=20, w=30):
    rng = np.random.default_rng(0)
    a = np.zeros((h, w, 3), np.int64)
    a[..., 0] = np.linspace(0, 250, w).astype(np.int64)[None, :]
    a[..., 1] = 120
    a[5:12, 4:20, 2] = 200
    return np.clip(a + rng.integers(0, 3, a.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("fmt,suffix,lossless", [
    ("PNG", ".png", True), ("BMP", ".bmp", True), ("TIFF", ".tif", True), ("JPEG", ".jpg", False),
])
def test_read_image_formats(tmp_path, fmt, suffix, lossless):
    a = _rgb()
    p = tmp_path / f"img{suffix}"
    Image.fromarray(a).save(p, format=fmt)
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == a.shape
    if lossless:
        np.testing.assert_array_equal(out, a)
    else:
        assert np.abs(out.astype(int) - a).mean() < 8


def test_read_image_grey_palette_alpha_16bit(tmp_path):
    g = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (8, 1))
    Image.fromarray(g).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (8, 25, 3) and (out == g[..., None]).all()

    Image.fromarray(g).save(tmp_path / "g.gif", optimize=False)  # GIF: greyscale / palette
    assert read_image(tmp_path / "g.gif").shape == (8, 25, 3)

    rgba = np.dstack([_rgb(), np.full((20, 30), 77, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])

    g16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out[-1, -1, 0] == round(55000 / 257)


def test_tiff_that_pillow_cannot_read_falls_back_to_tifffile(tmp_path):
    import tifffile

    a = np.random.default_rng(1).random((10, 12, 3)).astype(np.float32)  # float RGB: Pillow gives up
    p = tmp_path / "f.tif"
    tifffile.imwrite(p, a, photometric="rgb")
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (10, 12, 3)
    np.testing.assert_allclose(out, np.round(a * 255), atol=1)
    assert read_gray(p).shape == (10, 12)


def test_read_gray_modes(tmp_path):
    m = np.zeros((6, 7), bool)
    m[2:4, 1:5] = True
    Image.fromarray(m).save(tmp_path / "one.png")  # 1-bit
    assert set(np.unique(read_gray(tmp_path / "one.png"))) == {0, 255}
    p = Image.frombytes("P", (7, 6), m.astype(np.uint8).tobytes())
    p.putpalette([4, 2, 4, 252, 254, 252])
    p.save(tmp_path / "pal.gif", optimize=False)
    assert set(np.unique(read_gray(tmp_path / "pal.gif"))) == {3, 253}  # the DRIVE 2nd_manual pitfall
    with open_image(tmp_path / "pal.gif") as img:
        assert img.mode == "P"
    Image.fromarray(_rgb()).save(tmp_path / "rgb.png")
    assert read_gray(tmp_path / "rgb.png").shape == (20, 30)


def test_missing_empty_and_not_an_image(tmp_path):
    with pytest.raises(InvalidInputError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InvalidInputError, match=r"empty\.jpg: file is empty"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(InvalidInputError, match=r"junk\.png: not a recognised image"):
        read_gray(tmp_path / "junk.png")
    with pytest.raises(InvalidInputError, match="not a file"):
        read_image(tmp_path)


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("BMP", ".bmp"), ("TIFF", ".tif")])
def test_truncated_files_are_reported_as_such(tmp_path, fmt, suffix):
    a = np.random.default_rng(2).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    full = tmp_path / f"full{suffix}"
    Image.fromarray(a).save(full, format=fmt)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InvalidInputError) as e:
        read_image(cut)
    msg = str(e.value)
    assert str(cut) in msg and ("truncated" in msg or "corrupt" in msg)


def test_write_png_roundtrip_atomic_deterministic(tmp_path):
    a = _rgb()
    p = write_png(tmp_path / "sub" / "x.png", a)
    np.testing.assert_array_equal(read_image(p), a)
    first = p.read_bytes()
    write_png(p, a)
    assert p.read_bytes() == first  # no timestamp: same array, same bytes
    m = np.zeros((5, 6), bool)
    m[1:3] = True
    write_png(tmp_path / "m.png", m)
    assert Image.open(tmp_path / "m.png").mode == "L"
    assert set(np.unique(read_gray(tmp_path / "m.png"))) == {0, 255}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.png", "sub"]  # no temp files left
    assert [x.name for x in (tmp_path / "sub").iterdir()] == ["x.png"]
    with pytest.raises(ValueError, match="uint8 or bool"):
        write_png(tmp_path / "f.png", np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        write_png(tmp_path / "f.png", np.zeros((3, 3, 2), np.uint8))


def test_planar_16_bit_rgb_tiff_and_oversized_images(tmp_path, monkeypatch):
    import tifffile

    planar = np.stack([np.full((6, 5), v, np.uint16) for v in (60000, 30000, 1000)])  # 3 x H x W
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif")[0, 0], [233, 117, 4])  # /257, not scrambled
    Image.fromarray(_rgb()).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 600 pixels: over twice the limit
    with pytest.raises(InvalidInputError, match=r"big\.png: image too large to decode safely"):
        read_image(tmp_path / "big.png")


def test_an_oversized_tiff_is_refused_by_every_reader_tifffile_included(tmp_path, monkeypatch):
    """Pillow refuses a decompression bomb; the readers' tifffile fallback must not decode it
    instead (a 400 KB zlib TIFF held 20000 x 20000 pixels: 22 s and 6.8 GB in `tcnet predict`)."""
    import tifffile

    from tcnet.data.io import ImageTooLargeError, tifffile_samples

    tifffile.imwrite(tmp_path / "grey.tif", np.zeros((30, 40), np.uint8), compression="zlib")  # Pillow's bomb
    tifffile.imwrite(tmp_path / "rgb16.tif", np.zeros((30, 40, 3), np.uint16))  # only tifffile reads it right
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((50, 10, 10), np.uint8))  # 50 pages of 100 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1200 pixels a page: over twice the limit
    for name in ("grey.tif", "rgb16.tif"):
        for reader in (read_image, read_gray, tifffile_samples):
            with pytest.raises(ImageTooLargeError, match=rf"{name}: image too large to decode safely"):
                reader(tmp_path / name)
    with pytest.raises(ImageTooLargeError, match=r"stack.tif: .* 5000 samples"):  # pages x pixels over 8x the limit
        tifffile_samples(tmp_path / "stack.tif")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    assert read_image(tmp_path / "rgb16.tif").shape == (30, 40, 3) and read_gray(tmp_path / "grey.tif").shape == (30, 40)


def test_wide_and_big_endian_samples_are_scaled_not_clipped_to_white(tmp_path):
    """A big-endian 16-bit TIFF, 16-bit data in int32 or float32: the same grey as the 8-bit image."""
    import tifffile

    grey = np.tile(np.arange(256, dtype=np.uint16), (4, 1))
    cases = {"be16": (grey * 257, ">"), "i32": (grey.astype(np.int32) * 257, "<"),
             "f32": (grey.astype(np.float32) * 257, "<"), "unit": (grey.astype(np.float32) / 255, "<")}
    for name, (data, order) in cases.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", data, byteorder=order)
        np.testing.assert_array_equal(read_gray(tmp_path / f"{name}.tif"), grey.astype(np.uint8), err_msg=name)
    tifffile.imwrite(tmp_path / "neg.tif", grey.astype(np.int16) - 5)
    with pytest.raises(InvalidInputError, match=r"neg\.tif: pixel values -5\.\.250 .* outside 0\.\.65535"):
        read_image(tmp_path / "neg.tif")
    # planar 16-bit RGB, which Pillow opens but scrambles: read_gray as read_image, through tifffile
    rgb = np.stack([grey.astype(np.uint16) * 257] * 3)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_gray(tmp_path / "planar.tif"), grey.astype(np.uint8))
    # 0..1 floats with one stray value above 1 would be read as 0..255 data (all but black): refused
    stray = grey.astype(np.float32) / 255
    stray[0, 0] = 1.01
    tifffile.imwrite(tmp_path / "stray.tif", stray)
    with pytest.raises(InvalidInputError, match=r"stray\.tif: floating-point pixel values 0\.\.1\.01 are neither"):
        read_gray(tmp_path / "stray.tif")


def test_write_png_text_fields_are_kept_and_deterministic(tmp_path):
    a = np.zeros((4, 5), np.uint8)
    write_png(tmp_path / "a.png", a, text={"Software": "tcnet predict"})
    write_png(tmp_path / "b.png", a, text={"Software": "tcnet predict"})
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with Image.open(tmp_path / "a.png") as im:
        assert im.text == {"Software": "tcnet predict"}
    np.testing.assert_array_equal(read_gray(tmp_path / "a.png"), a)
