"""Image files in and out: one place that decodes every format the datasets ship.

``read_image`` -> uint8 H x W x 3 (RGB), ``read_gray`` -> uint8 H x W (PIL ``convert("L")``
semantics: mode ``1`` -> 0/255, palette -> luminance of the palette colour), ``write_png`` (atomic).
JPEG, PNG, BMP, TIFF and GIF are read with Pillow; a TIFF Pillow cannot decode (e.g. float or
multi-sample scientific TIFFs) is retried with ``tifffile``. Any file that cannot be used raises
:class:`InvalidInputError`, whose message names the file and what is wrong with it (missing, empty,
not an image, corrupt or truncated, unsupported layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")


class InvalidInputError(ValueError):
    """An input file that cannot be used; the message names the file and what is wrong with it."""


class ImageTooLargeError(InvalidInputError):
    """An image over the decompression-bomb limit (twice Pillow's ``Image.MAX_IMAGE_PIXELS``, where
    Pillow refuses): refused by every reader, tifffile's fallback included."""


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InvalidInputError(f"{path}: file not found")
    if not path.is_file():
        raise InvalidInputError(f"{path}: not a file (a folder?)")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: file is empty (0 bytes)")


def open_image(path):
    """``path`` opened and fully decoded by Pillow (a ``PIL.Image``, mode as stored).

    Raises :class:`InvalidInputError` naming the file when it is missing, empty, not an image,
    corrupt or truncated, or a TIFF Pillow decodes wrongly (16-bit colour, separate planes: the
    mask readers then read it with tifffile). For callers that need the stored mode (palette masks,
    1-bit masks).
    """
    path = Path(path)
    _check_file(path)
    img = _open_pil(path)
    if _tiff_needs_tifffile(img):  # its pixels as Pillow gives them are wrong: no caller may use them
        img.close()
        raise InvalidInputError(f"{path}: a TIFF with more than 8 bits per colour sample or separate colour planes, "
                                "which Pillow decodes wrongly (read it with tifffile)")
    return img


def _open_pil(path: Path):
    """Open and fully decode ``path`` with Pillow (``load()`` is what detects truncation)."""
    from PIL import Image, UnidentifiedImageError

    undecodable = (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError)
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise InvalidInputError(
            f"{path}: not a recognised image file (corrupt, or not JPEG/PNG/BMP/TIFF/GIF)"
        ) from None
    except undecodable as e:
        raise _decode_error(path, e) from None
    try:
        img.load()
    except undecodable as e:
        img.close()
        raise _decode_error(path, e) from None
    return img


def _tiff_needs_tifffile(img) -> bool:
    """A TIFF Pillow opens but decodes wrongly: more than 8 bits per colour sample, or separate
    colour planes (Pillow 12-13 reads planar 16-bit RGB as scrambled 8-bit RGB, silently)."""
    tags = getattr(img, "tag_v2", None)
    if img.format != "TIFF" or tags is None:
        return False
    bits = tags.get(258, (8,))  # BitsPerSample
    bits = bits if isinstance(bits, tuple) else (bits,)
    return img.mode not in ("I;16", "I;16B", "I;16L", "I", "F", "1", "L", "P") and (
        max(bits) > 8 or tags.get(284, 1) == 2  # PlanarConfiguration 2 = separate planes
    )


def _decode_error(path: Path, e: Exception) -> InvalidInputError:
    from PIL import Image

    if isinstance(e, Image.DecompressionBombError):  # an error, not a crash: name the file and the limit
        return ImageTooLargeError(f"{path}: image too large to decode safely ({e})")
    text = str(e)
    if "truncat" in text.lower() or isinstance(e, EOFError):
        return InvalidInputError(f"{path}: image file is truncated or corrupt ({text or 'unexpected end of file'})")
    return InvalidInputError(f"{path}: image data is corrupt or unreadable ({text or type(e).__name__})")


def _to_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """Scale sample data to uint8: 16-bit unsigned (either byte order) / 257; wider or signed
    integers and floats by the range their values use (<= 1 floats: * 255; <= 255: as they are;
    <= 65535: 16-bit data in a wider type, / 257). Anything else is refused, not clipped to white."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:  # big-endian TIFFs too ('>u2')
        return np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    if arr.dtype.kind not in "iuf":
        raise InvalidInputError(f"{path}: unsupported pixel type {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidInputError(f"{path}: image holds NaN or infinite values")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0 or hi > 65535:
        raise InvalidInputError(f"{path}: pixel values {lo:g}..{hi:g} ({arr.dtype}) are outside 0..65535; "
                                "convert it to 8- or 16-bit")
    if arr.dtype.kind == "f" and hi > 1.0 and not np.array_equal(arr, np.round(arr)):
        # 0..1 data with a stray value above 1 would be read as 0..255 data (all but black): refuse
        raise InvalidInputError(f"{path}: floating-point pixel values {lo:g}..{hi:g} are neither within 0..1 nor "
                                "whole numbers; convert it to 8- or 16-bit")
    scale = 255.0 if arr.dtype.kind == "f" and hi <= 1.0 else 1.0 if hi <= 255 else 1 / 257.0
    return np.clip(np.round(arr.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def _read_tifffile(path: Path) -> np.ndarray:
    """A TIFF Pillow cannot open, through tifffile, as uint8 (:func:`_to_uint8`)."""
    return _to_uint8(tifffile_samples(path), path)


def tifffile_samples(path: Path) -> np.ndarray:
    """A TIFF's samples as tifffile decodes them, unscaled (H x W or H x W x C): for mask rules that
    look at the stored values (0/1 data in 16 bits would be 0 after scaling to 8)."""
    import tifffile

    _check_tiff_size(path)
    try:
        arr = np.asarray(tifffile.imread(path))
    except Exception as e:  # tifffile raises many types for bad files
        raise InvalidInputError(f"{path}: corrupt or unsupported TIFF ({e})") from None
    # Leading singleton pages / planar (C, H, W) layouts -> (H, W[, C]).
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    return arr


def _check_tiff_size(path: Path) -> None:
    """Refuse a TIFF too large to decode safely before tifffile decodes it, as Pillow refuses one
    (a 400 KB compressed TIFF can hold 20000 x 20000 pixels): over twice ``MAX_IMAGE_PIXELS`` in a
    page, or over eight times it in samples (pages x pixels x channels)."""
    import tifffile
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if not limit:  # the user switched Pillow's check off: so is this one
        return
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            height, width = int(page.imagelength), int(page.imagewidth)
            samples = int(np.prod(tif.series[0].shape)) if tif.series else height * width
    except Exception as e:  # tifffile raises many types for bad files
        raise InvalidInputError(f"{path}: corrupt or unsupported TIFF ({e})") from None
    if height * width > 2 * limit or samples > 8 * limit:
        raise ImageTooLargeError(
            f"{path}: image too large to decode safely ({width} x {height} pixels, {samples} samples; the limit is "
            f"{2 * limit} pixels, twice PIL.Image.MAX_IMAGE_PIXELS)")


def _pil_to_rgb(img, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in ("RGB",):
        arr = np.asarray(img)
    elif mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = _to_uint8(np.asarray(img), path)
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        arr = np.asarray(img.convert("RGBA").convert("RGB"))  # alpha dropped, colours kept
    else:  # L, 1, P, CMYK, YCbCr, LAB, HSV, ...
        arr = np.asarray(img.convert("RGB"))
    return arr


def read_image(path, *, exif_orientation: bool = False) -> np.ndarray:
    """The image at ``path`` as uint8 H x W x 3 RGB (first frame of a GIF/multi-page TIFF).

    Greyscale and palette images are expanded to RGB, alpha is dropped, 16-bit data is scaled.
    ``exif_orientation``: turn the pixels as the file's EXIF Orientation tag says (as viewers show a
    phone photo), for ``tcnet predict`` and serving, whose masks must line up with the image a
    user sees. The datasets' images are read as stored (default), the orientation their masks were
    drawn in. Raises :class:`InvalidInputError` naming the file for anything that cannot be decoded.
    """
    path = Path(path)
    _check_file(path)
    arr = None  # stays None for a TIFF Pillow cannot read, or reads wrongly: tifffile's then
    try:
        with _open_pil(path) as img:  # closes GIF/TIFF handles Pillow keeps open after load()
            if not _tiff_needs_tifffile(img):
                if exif_orientation:
                    from PIL import ImageOps

                    img = ImageOps.exif_transpose(img)
                arr = _pil_to_rgb(img, path)
    except ImageTooLargeError:
        raise
    except InvalidInputError:
        if path.suffix.lower() not in TIFF_SUFFIXES:
            raise
    if arr is None:
        arr = _read_tifffile(path)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        elif arr.ndim == 3 and arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInputError(f"{path}: expected an RGB or greyscale image, got an array of shape {arr.shape}")
    if min(arr.shape[:2]) < 1:
        raise InvalidInputError(f"{path}: image has no pixels ({arr.shape[1]}x{arr.shape[0]})")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def read_gray(path) -> np.ndarray:
    """The image at ``path`` as uint8 H x W grey levels (Pillow ``convert("L")`` semantics).

    Mode ``1`` gives 0/255; a palette image gives the luminance of each pixel's palette colour
    (DRIVE ``2nd_manual``: {3, 253}); RGB gives ITU-R 601 luminance; 16-bit data is scaled.
    """
    path = Path(path)
    _check_file(path)
    try:
        with _open_pil(path) as img:
            if not _tiff_needs_tifffile(img):  # else Pillow's pixels are wrong: tifffile's below
                return gray_of(img, path)
    except ImageTooLargeError:
        raise
    except InvalidInputError:
        if path.suffix.lower() not in TIFF_SUFFIXES:
            raise
    return _gray_array(_read_tifffile(path), path)


def gray_of(img, path) -> np.ndarray:
    """:func:`read_gray`'s grey levels of an already decoded ``PIL.Image`` (``path`` for errors)."""
    if img.mode == "L":
        arr = np.asarray(img)
    elif img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = _to_uint8(np.asarray(img), Path(path))
    elif img.mode in ("RGBA", "LA", "PA"):
        arr = np.asarray(img.convert("RGBA").convert("L"))
    else:
        arr = np.asarray(img.convert("L"))
    return _gray_array(arr, Path(path))


def single_channel(arr: np.ndarray) -> np.ndarray:
    """One channel of decoded samples: grey as it is, grey + alpha its grey, colour its ITU-R 601
    luminance (float64, unrounded); other shapes unchanged (the caller says what is wrong)."""
    if arr.ndim == 3 and arr.shape[2] < 3:
        return arr[..., 0]
    if arr.ndim == 3:
        return arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return arr


def _gray_array(arr: np.ndarray, path: Path) -> np.ndarray:
    arr = single_channel(arr)
    if arr.ndim != 2:
        raise InvalidInputError(f"{path}: expected a single-channel image, got an array of shape {arr.shape}")
    return np.ascontiguousarray(np.round(arr), dtype=np.uint8)


def write_png(path, arr, text: Optional[dict] = None) -> Path:
    """Write ``arr`` (uint8 H x W, H x W x 3 or H x W x 4; uint16 H x W; bool -> 0/255) as PNG, atomically.

    The file appears complete or not at all (temporary sibling + ``os.replace``). No timestamp or
    other metadata is written, so the same array (and ``text``: PNG tEXt fields) gives the same bytes.
    """
    from PIL import Image, PngImagePlugin

    from tcnet.utils.atomic import atomic_write

    path = Path(path)
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.dtype.kind == "u" and a.dtype.itemsize == 2 and a.ndim == 2:  # 16-bit grey (probability maps): I;16
        a = a.astype("<u2")
    elif a.dtype != np.uint8:
        raise ValueError(f"write_png({path}): expected a uint8 or bool array (or uint16 H x W), got {a.dtype} {a.shape}")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"write_png({path}): expected H x W, H x W x 3 or H x W x 4, got shape {a.shape}")
    img = Image.fromarray(np.ascontiguousarray(a))  # uint8: L, RGB or RGBA from the shape; uint16: I;16
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    with atomic_write(path, "wb") as f:
        img.save(f, format="PNG", pnginfo=info)
    return path


__all__ = ["InvalidInputError", "open_image", "read_image", "read_gray", "write_png"]

