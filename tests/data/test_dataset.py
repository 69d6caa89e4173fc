"""SegmentationDataset: item format, determinism across worker counts, image/mask/FOV alignment."""

import csv
import pickle
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tcnet.data.dataset import MANIFEST_COLUMNS, SegmentationDataset, item_seed, load_arrays, read_manifest
from tcnet.data.transforms import denormalize

S = 64
N = 8


def _make_preprocessed(root, n=N, size=S):
    """A preprocess-shaped folder whose image channels encode the mask (R) and the FOV (G)."""
    rng = np.random.default_rng(0)
    masks = np.zeros((n, size, size), np.uint8)
    fovs = np.zeros((n, size, size), np.uint8)
    for k in range(n):  # asymmetric shapes, so a flip applied to one target only would show
        r, c = rng.integers(2, size // 3, 2)
        masks[k, r:r + size // 3, c:c + size // 2] = 1
        masks[k, r:r + 4, c:c + size // 2 + 8] = 1
        fovs[k, size // 8:, : size - size // 4 - k] = 1
    images = np.zeros((n, size, size, 3), np.uint8)
    images[..., 0] = masks * 255
    images[..., 1] = fovs * 255
    images[..., 2] = 128
    d = root / "toy"
    d.mkdir(parents=True)
    np.save(d / "images.npy", images)
    np.save(d / "masks.npy", masks)
    np.save(d / "fov.npy", fovs)
    ids = [f"img{k:02d}" for k in range(n)]
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        w.writeheader()
        for k, i in enumerate(ids):
            w.writerow({"id": i, "dataset": "toy", "index": k, "official_split": "", "image_path": f"toy/{i}.jpg",
                        "mask_path": f"toy/{i}.png", "fov_path": "", "orig_width": 100, "orig_height": 90,
                        "fg_fraction": 0.25, "fov_pixels": int(fovs[k].sum()), "fg_pixels": int(masks[k].sum()),
                        "checksum": "ab" * 32})
    return root, ids, images, masks, fovs


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    return _make_preprocessed(tmp_path_factory.mktemp("pre"))


def _batches(ds, num_workers, epoch=0, persistent=False):
    ds.set_epoch(epoch)
    dl = DataLoader(ds, batch_size=4, shuffle=False, num_workers=num_workers, persistent_workers=persistent)
    return [b for b in dl]


def test_items_without_augmentation_are_the_arrays(pre):
    root, ids, images, masks, fovs = pre
    order = [ids[5], ids[1], ids[3]]
    ds = SegmentationDataset(root, "toy", order, augment=False)
    assert len(ds) == 3 and ds.image_size == S
    item = ds[0]
    assert set(item) == {"image", "mask", "fov", "id"} and item["id"] == ids[5]
    assert item["image"].dtype == item["mask"].dtype == item["fov"].dtype == torch.float32
    assert item["image"].shape == (3, S, S) and item["mask"].shape == item["fov"].shape == (1, S, S)
    np.testing.assert_array_equal(denormalize(item["image"].numpy()), images[5])
    np.testing.assert_array_equal(item["mask"][0].numpy(), masks[5])
    np.testing.assert_array_equal(item["fov"][0].numpy(), fovs[5])
    assert ds[-1]["id"] == ids[3]
    with pytest.raises(IndexError):
        ds[3]


def test_same_seed_same_batches_for_0_and_2_workers(pre):
    root, ids, *_ = pre
    a = _batches(SegmentationDataset(root, "toy", ids, augment=True, seed=3), 0, epoch=1)
    b = _batches(SegmentationDataset(root, "toy", ids, augment=True, seed=3), 2, epoch=1)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert x["id"] == y["id"]
        for k in ("image", "mask", "fov"):
            assert torch.equal(x[k], y[k]), k
    # the augmentation really is random per item and per epoch, and depends on the seed
    def epoch_images(seed, epoch, order=range(N)):
        ds = SegmentationDataset(root, "toy", ids, augment=True, seed=seed)
        ds.set_epoch(epoch)
        got = {i: ds[i]["image"] for i in order}
        return torch.stack([got[i] for i in range(N)])

    e1 = epoch_images(3, 1, order=reversed(range(N)))  # fetch order does not matter
    assert torch.equal(e1, torch.cat([x["image"] for x in a]))
    assert not torch.equal(e1, epoch_images(3, 2))
    assert not torch.equal(e1, epoch_images(4, 1))
    assert item_seed(3, 1, 0) == item_seed(3, 1, 0) != item_seed(3, 1, 1)


def test_persistent_workers_see_set_epoch(pre):
    root, ids, *_ = pre
    ds = SegmentationDataset(root, "toy", ids, augment=True, seed=0)
    dl = DataLoader(ds, batch_size=N, num_workers=1, persistent_workers=True)
    got = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        got[epoch] = next(iter(dl))["image"]
    ref = SegmentationDataset(root, "toy", ids, augment=True, seed=0)
    ref.set_epoch(1)
    assert torch.equal(got[1], torch.stack([ref[i]["image"] for i in range(N)]))
    assert not torch.equal(got[0], got[1])


def test_augmentation_keeps_image_mask_and_fov_aligned(pre):
    root, ids, *_ = pre
    ds = SegmentationDataset(root, "toy", ids, augment=True, seed=11)
    changed = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(N):
            item = ds[i]
            img = denormalize(item["image"].numpy())
            mask, fov = item["mask"][0].numpy(), item["fov"][0].numpy()
            assert set(np.unique(mask)) <= {0.0, 1.0} and set(np.unique(fov)) <= {0.0, 1.0}
            for channel, target in ((0, mask), (1, fov)):
                from_image = img[..., channel] > 127
                agree = (from_image == (target > 0)).mean()
                assert agree > 0.97, (epoch, i, channel, agree)  # edges may differ by interpolation
            changed += not np.array_equal(mask, np.load(root / "toy" / "masks.npy")[i])
    assert changed > N  # most items were actually transformed


def test_repr_names_the_augmentation_amounts(pre):
    root, ids, *_ = pre
    ds = SegmentationDataset(root, "toy", ids, augment=True, seed=3, augment_options={"shift": 0.1, "p": 0.3})
    assert f"SegmentationDataset('toy', n={len(ids)}, augment=True, p=0.3, shift=0.1, seed=3, root=" in repr(ds)
    plain = SegmentationDataset(root, "toy", ids, augment=False, augment_options={"shift": 0.1})
    assert "shift" not in repr(plain)  # not applied: not shown


def test_pickling_does_not_copy_the_arrays(pre):
    root, ids, *_ = pre
    ds = SegmentationDataset(root, "toy", ids, augment=True)
    ds[0]  # opens the memmaps
    assert len(pickle.dumps(ds)) < 20_000
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[1]["image"], ds[1]["image"])


def test_unknown_ids_and_datasets_are_clear_errors(pre):
    root, ids, *_ = pre
    with pytest.raises(ValueError, match="not in the preprocessed toy data"):
        SegmentationDataset(root, "toy", ["nope"], augment=False)
    with pytest.raises(ValueError, match="present: toy"):
        SegmentationDataset(root, "drive", ids, augment=False)
    with pytest.raises(FileNotFoundError, match="tcnet preprocess"):
        SegmentationDataset(root / "missing", "toy", ids, augment=False)


def test_read_manifest_keeps_strings(pre):
    root, ids, *_ = pre
    df = read_manifest(root)
    assert list(df.columns) == list(MANIFEST_COLUMNS)
    assert df["official_split"].tolist() == [""] * N and df["id"].tolist() == ids
    assert df["index"].dtype == np.int64


def test_a_dataset_without_fov_npy_reads_as_a_whole_image_fov(tmp_path):
    """preprocess writes no fov.npy where the FOV is the whole image (ISIC, PH2): the items, augmented
    or not, are exactly those of the same arrays with an all-ones fov.npy."""
    root, ids, images, masks, _ = _make_preprocessed(tmp_path / "with")
    np.save(root / "toy" / "fov.npy", np.ones_like(masks))
    manifest = read_manifest(root)
    manifest["fov_pixels"] = S * S  # as preprocess records a whole-image FOV
    manifest.to_csv(root / "manifest.csv", index=False)
    bare = tmp_path / "without"
    shutil.copytree(root, bare)
    (bare / "toy" / "fov.npy").unlink()
    _, _, fov = load_arrays(bare / "toy")
    assert fov.shape == masks.shape and fov.dtype == np.uint8 and fov.all() and not fov.flags.writeable
    for augment in (False, True):
        a = SegmentationDataset(root, "toy", ids, augment=augment, seed=3)
        b = SegmentationDataset(bare, "toy", ids, augment=augment, seed=3)
        a.set_epoch(2), b.set_epoch(2)
        for i in range(len(ids)):
            x, y = a[i], b[i]
            assert all(torch.equal(x[k], y[k]) for k in ("image", "mask", "fov"))


def test_a_missing_fov_npy_of_a_partial_field_of_view_is_named(tmp_path):
    """fov.npy gone where manifest.csv says the FOV is smaller than the image (DRIVE, CHASE_DB1; a
    partial pull): an error, not every pixel counted as in view. Arrays of other shapes: an error."""
    root, ids, *_ = _make_preprocessed(tmp_path)
    n = len(ids)
    (root / "toy" / "fov.npy").unlink()
    with pytest.raises(ValueError, match=rf"fov\.npy: missing, but {n} image\(s\) of manifest.csv have a field of view"):
        SegmentationDataset(root, "toy", ids, augment=False)
    np.save(root / "toy" / "fov.npy", np.ones((n, S, S + 1), np.uint8))
    with pytest.raises(ValueError, match=rf"fov\.npy: shape \({n}, {S}, {S + 1}\), but images.npy holds \({n}, {S}, {S}\)"):
        SegmentationDataset(root, "toy", ids, augment=False)


def test_a_damaged_array_is_named(tmp_path):
    root, ids, *_ = _make_preprocessed(tmp_path)
    (root / "toy" / "masks.npy").write_text("junk")
    with pytest.raises(ValueError, match=r"masks\.npy: not a readable \.npy array .*re-run the preprocess stage"):
        load_arrays(root / "toy")
