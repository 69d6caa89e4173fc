"""The preprocess benchmark's reference loops and the machine probe it relies on (no timings)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import free_page_reporting  # noqa: E402
from benchmarks.preprocess import limit_run  # noqa: E402


def test_loop_with_writes_stores_each_pair_in_its_slot(tmp_path):
    from tcnet.data.io import read_gray, read_image
    from tcnet.data.transforms import resize_image, resize_mask
    from tcnet.tools.synth import run as synth

    synth("isic2018", tmp_path / "raw", n=3, seed=0, size=(80, 60), force=True)
    images = sorted(str(p) for p in (tmp_path / "raw").rglob("ISIC_*.jpg"))
    masks = sorted(str(p) for p in (tmp_path / "raw").rglob("ISIC_*_segmentation.png"))
    assert len(images) == len(masks) == 3
    out = tmp_path / "written"
    limit_run(images, 32, 2, masks, write_to=out)
    got_images, got_masks = np.load(out / "images.npy"), np.load(out / "masks.npy")
    assert got_images.shape == (3, 32, 32, 3) and got_masks.shape == (3, 32, 32)
    for i, (img, msk) in enumerate(zip(images, masks)):
        assert np.array_equal(got_images[i], resize_image(read_image(img), 32))
        assert np.array_equal(got_masks[i], resize_mask(read_gray(msk), 32))
    with pytest.raises(FileExistsError):  # a new folder per call, never one already written
        limit_run(images, 32, 1, masks, write_to=out)


def _device(root: Path, name: str, device: str, features: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "device").write_text(device + "\n")
    (root / name / "features").write_text(features + "\n")


def test_free_page_reporting_reads_the_balloon_feature_bit(tmp_path):
    assert free_page_reporting(tmp_path / "none") is None  # no virtio devices at all
    _device(tmp_path / "a", "virtio0", "0x0002", "1" * 64)  # a block device: not asked
    assert free_page_reporting(tmp_path / "a") is None
    _device(tmp_path / "a", "virtio1", "0x0005", "0110010" + "0" * 57)  # balloon, bit 5 on
    assert free_page_reporting(tmp_path / "a") is True
    _device(tmp_path / "b", "virtio0", "0x0005", "0110000" + "0" * 57)  # balloon, bit 5 off
    assert free_page_reporting(tmp_path / "b") is False
