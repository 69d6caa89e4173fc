"""Dataset adapters on their synthetic look-alikes, on the known mirrors, and on broken copies."""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tcnet.config import DATASETS
from tcnet.data.adapters import (
    LayoutError, MissingImageError, MissingMaskError, Sample, binarize_mask_file, discover, get_adapter, list_adapters, load_fov,
    load_mask,
)
from tcnet.data.adapters.chase_db1 import derive_fov, split_ids
from tcnet.data.io import InvalidInputError, read_image
from tcnet.data.synth.writers import synthetic_pairs


def _check_semantics(samples, retina: bool):
    """Masks are binary, plausible in size, and mark the darker structure (lesion / vessel)."""
    for s in samples:
        img = read_image(s.image)
        m = load_mask(s)
        f = load_fov(s, img)
        assert m.dtype == bool and f.dtype == bool and m.shape == f.shape == img.shape[:2]
        frac = m[f].mean()
        assert (0.01 < frac < 0.35) if retina else (0.01 < frac < 0.7), (s.id, frac)
        grey = img.astype(float).mean(axis=2)
        ring = ndimage.binary_dilation(m, iterations=3) & ~m & f  # the background right next to it
        inside, outside = grey[m & f].mean(), grey[ring].mean()
        assert inside < outside - 4, (s.id, inside, outside)  # foreground is the darker structure
        assert (m & ~f).sum() <= 0.03 * m.sum()  # (a derived FOV may shave the labelled rim)


def test_registry_matches_config_and_rejects_unknown_names():
    assert sorted(list_adapters()) == sorted(DATASETS)
    with pytest.raises(ValueError, match=r"unknown dataset 'isic2019'.*did you mean 'isic2018'.*valid: chase_db1"):
        get_adapter("isic2019")
    with pytest.raises(ValueError, match="valid:"):
        discover("stare", "/nonexistent")


def test_isic2017(synth_root):
    samples = discover("isic2017", synth_root / "isic2017")
    assert Counter(s.official_split for s in samples) == {"train": 4, "val": 2, "test": 2}
    assert [s.id for s in samples] == sorted(s.id for s in samples)
    assert samples[0].id == "ISIC_0000000" and samples[0].fov is None
    # decoys present on disk but ignored: superpixels PNG and metadata CSVs
    train_dir = synth_root / "isic2017" / "ISIC-2017_Training_Data"
    assert (train_dir / "ISIC_0000000_superpixels.png").exists()
    assert (train_dir / "ISIC-2017_Training_Data_metadata.csv").exists()
    assert all(s.image.suffix == ".jpg" and s.mask.name == f"{s.id}_segmentation.png" for s in samples)
    assert all("superpixels" not in str(s.image) for s in samples)
    _check_semantics(samples, retina=False)
    s = samples[0]
    assert dataclasses.is_dataclass(s) and isinstance(s, Sample)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.id = "x"
    assert load_fov(s).all() and load_fov(s).shape == (48, 64)  # all-true, size from the header


def test_isic2017_mirrors_and_mask_case(synth_copy):
    root = synth_copy("isic2017")
    # dataset-ninja: Task1/<zip folder>/<zip folder>/ for every folder
    for d in list(root.iterdir()):
        inner = root / "Task1" / d.name
        inner.mkdir(parents=True)
        shutil.move(str(d), str(inner / d.name))
    # the challenge page's capital-S mask name
    gt = root / "Task1" / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC-2017_Training_Part1_GroundTruth"
    (gt / "ISIC_0000001_segmentation.png").rename(gt / "ISIC_0000001_Segmentation.png")
    samples = discover("isic2017", root)
    assert len(samples) == 8
    assert {s.id: s for s in samples}["ISIC_0000001"].mask.name == "ISIC_0000001_Segmentation.png"


def test_isic2018_optional_splits_and_ignored_texts(synth_root, synth_copy):
    samples = discover("isic2018", synth_root / "isic2018")
    assert Counter(s.official_split for s in samples) == {"train": 4, "val": 2}
    gt = synth_root / "isic2018" / "ISIC2018_Task1_Training_GroundTruth"
    assert (gt / "LICENSE.txt").exists() and (gt / "ATTRIBUTION.txt").exists()
    _check_semantics(samples, retina=False)
    root = synth_copy("isic2018")
    shutil.rmtree(root / "ISIC2018_Task1-2_Training_Input")
    with pytest.raises(LayoutError, match="ISIC2018_Task1-2_Training_Input/ folder .* required"):
        discover("isic2018", root)
    # an optional split's ground truth without its images is an error too, never a split dropped in silence
    shutil.copytree(synth_root / "isic2018" / "ISIC2018_Task1-2_Training_Input", root / "ISIC2018_Task1-2_Training_Input")
    shutil.rmtree(root / "ISIC2018_Task1-2_Validation_Input")
    with pytest.raises(LayoutError, match="ISIC2018_Task1_Validation_GroundTruth holds the val masks but no "
                       "ISIC2018_Task1-2_Validation_Input/ folder"):
        discover("isic2018", root)
    shutil.rmtree(root / "ISIC2018_Task1_Validation_GroundTruth")  # the way out the error names
    assert Counter(s.official_split for s in discover("isic2018", root)) == {"train": 4}


def test_ph2_official_layout_and_root_levels(synth_root):
    root = synth_root / "ph2"
    samples = discover("ph2", root)
    assert [s.id for s in samples] == ["IMD002", "IMD003", "IMD004"]
    assert all(s.official_split == "" and s.fov is None for s in samples)
    assert "PH2 Dataset images" in str(samples[0].image)  # the space is real
    assert samples[0].mask.name == "IMD002_lesion.bmp"
    assert (root / "PH2Dataset" / "PH2 Dataset images" / "IMD002" / "IMD002_roi").is_dir()  # ignored
    _check_semantics(samples, retina=False)
    assert [s.id for s in discover("ph2", root / "PH2Dataset")] == [s.id for s in samples]  # root = PH2Dataset


def test_ph2_mirrors(synth_copy, tmp_path):
    root = synth_copy("ph2")
    (root / "PH2Dataset" / "PH2 Dataset images").rename(root / "PH2Dataset" / "PH2_Dataset_images")
    assert len(discover("ph2", root)) == 3
    flat = tmp_path / "flat"
    (flat / "trainx").mkdir(parents=True)
    (flat / "trainy").mkdir()
    for case in (root / "PH2Dataset" / "PH2_Dataset_images").iterdir():
        shutil.copy(case / f"{case.name}_Dermoscopic_Image" / f"{case.name}.bmp", flat / "trainx")
        shutil.copy(case / f"{case.name}_lesion" / f"{case.name}_lesion.bmp", flat / "trainy")
    samples = discover("ph2", flat)
    assert [s.id for s in samples] == ["IMD002", "IMD003", "IMD004"]
    _check_semantics(samples, retina=False)
    (flat / "trainy" / "IMD003_lesion.bmp").unlink()
    with pytest.raises(MissingMaskError, match=r"IMD003\.bmp.*IMD003_lesion\.bmp"):
        discover("ph2", flat)


def test_drive(synth_root):
    samples = discover("drive", synth_root / "drive")
    assert [s.id for s in samples] == ["01_test", "02_test", "21_training", "22_training"]
    assert [s.official_split for s in samples] == ["test", "test", "train", "train"]
    assert all(s.mask.name.endswith("_manual1.gif") and s.fov.name.endswith("_mask.gif") for s in samples)
    _check_semantics(samples, retina=True)
    for s in samples:  # the FOV mask is the shipped GIF: a disc, corners outside
        f = load_fov(s)
        assert f[f.shape[0] // 2, f.shape[1] // 2] and not f[0, 0] and not f[-1, -1]
    assert [s.id for s in discover("drive", synth_root / "drive" / "DRIVE")] == [s.id for s in samples]


def test_drive_palette_second_observer_binarises_on_the_index(synth_root):
    test_dir = synth_root / "drive" / "DRIVE" / "test"
    second = test_dir / "2nd_manual" / "01_manual2.gif"
    img = Image.open(second)
    assert img.mode == "P" and img.getpalette()[:6] == [4, 2, 4, 252, 254, 252]
    naive = np.asarray(img.convert("L")) > 0
    assert naive.all()  # the pitfall: {3, 253} > 0 marks every pixel as vessel
    m2 = binarize_mask_file(second)
    np.testing.assert_array_equal(m2, np.asarray(img) > 0)
    m1 = binarize_mask_file(test_dir / "1st_manual" / "01_manual1.gif")
    fov = binarize_mask_file(test_dir / "mask" / "01_test_mask.gif")
    assert 0.01 < m2[fov].mean() < 0.35
    assert (m1 & m2).sum() / (m1 | m2).sum() > 0.5  # two observers of the same tree agree broadly


def test_drive_test_without_labels_is_refused_with_a_way_out(synth_copy):
    root = synth_copy("drive")
    shutil.rmtree(root / "DRIVE" / "test" / "1st_manual")
    with pytest.raises(LayoutError) as e:
        discover("drive", root)
    msg = str(e.value)
    assert "grand-challenge" in msg and "no vessel labels" in msg and "1st_manual" in msg
    assert "delete" in msg and str(root / "DRIVE" / "test") in msg
    shutil.rmtree(root / "DRIVE" / "test")  # the documented way out: training images only
    assert [s.official_split for s in discover("drive", root)] == ["train", "train"]


def test_drive_unzipped_one_folder_per_archive(synth_copy):
    """Windows' "Extract All" / 7-Zip's "Extract to training\\" put each zip in its own folder:
    training/training/... and test/test/... are one DRIVE, not two copies."""
    root = synth_copy("drive")
    want = [(s.id, s.official_split) for s in discover("drive", root)]
    for part in ("training", "test"):
        shutil.move(str(root / "DRIVE" / part), str(root / f"{part}-zip"))
        (root / part).mkdir()
        shutil.move(str(root / f"{part}-zip"), str(root / part / part))
    (root / "DRIVE").rmdir()
    assert [(s.id, s.official_split) for s in discover("drive", root)] == want
    shutil.copytree(root / "test" / "test", root / "copy" / "test")  # a real second copy still is one
    with pytest.raises(LayoutError, match=r"DRIVE test/ found in more than one place"):
        discover("drive", root)


def test_drive_test_labels_without_images_are_never_dropped_silently(synth_copy):
    root = synth_copy("drive")
    for f in (root / "DRIVE" / "test" / "images").iterdir():  # a partial unzip: labels and FOVs, no images
        f.unlink()
    with pytest.raises(LayoutError, match=r"test/images/ holds no NN_test.tif images, but .*test holds labels"):
        discover("drive", root)
    shutil.rmtree(root / "DRIVE" / "test" / "images")
    with pytest.raises(LayoutError, match=r"holds no NN_test.tif images"):
        discover("drive", root)
    shutil.rmtree(root / "DRIVE" / "test")  # the way out the message names
    assert {s.official_split for s in discover("drive", root)} == {"train"}


def test_drive_missing_fov_or_label(synth_copy):
    root = synth_copy("drive")
    fov = root / "DRIVE" / "training" / "mask" / "22_training_mask.gif"
    kept = fov.read_bytes()
    fov.unlink()
    with pytest.raises(MissingMaskError, match=r"no FOV mask for image .*22_training\.tif.*22_training_mask\.gif"):
        discover("drive", root)
    fov.write_bytes(kept)
    (root / "DRIVE" / "training" / "1st_manual" / "21_manual1.gif").unlink()
    with pytest.raises(MissingMaskError, match=r"no mask for image .*21_training\.tif.*21_manual1\.gif"):
        discover("drive", root)


def test_chase_db1_split_and_labels(synth_root, synth_copy):
    samples = discover("chase_db1", synth_root / "chase_db1")
    assert len(samples) == 28 and samples[0].id == "Image_01L" and samples[-1].id == "Image_14R"
    splits = [s.official_split for s in samples]
    assert splits == ["train"] * 20 + ["test"] * 8
    assert samples[19].id == "Image_10R" and samples[20].id == "Image_11L"
    assert all(s.mask.name == f"{s.id}_1stHO.png" and s.fov is None for s in samples)
    assert Image.open(samples[0].mask).mode == "1"
    one_bit = load_mask(samples[0])
    # Pillow types a 1-bit image's pixels bool but stores them as bytes 0/255; a uint8 view of the
    # mask (the preprocess stage counts and resizes through one) must see 0/1
    assert one_bit.dtype == bool and set(np.unique(one_bit.view(np.uint8))) == {0, 1}
    _check_semantics(samples[:6], retina=True)
    first = [f"Image_{k:02d}{e}" for k in range(1, 5)[:4] for e in "LR"][:7]  # a look-alike of 7: 20:8 proportion
    assert split_ids(first)[:2] == (first[:5], first[5:])
    # a CHASEDB1/ subfolder is fine; a 0/1 8-bit label binarises like the 1-bit one
    root = synth_copy("chase_db1")
    sub = root / "CHASEDB1"
    sub.mkdir()
    for p in list(root.iterdir()):
        if p.is_file():
            shutil.move(str(p), str(sub / p.name))
    s = discover("chase_db1", root)[0]
    ref = load_mask(s)
    Image.fromarray(ref.astype(np.uint8)).save(s.mask)  # values 0/1, mode L
    np.testing.assert_array_equal(load_mask(s), ref)
    Image.fromarray(ref.astype(np.uint8) * 255).save(s.mask)  # values 0/255
    np.testing.assert_array_equal(load_mask(s), ref)


def test_chase_fov_is_derived_sensibly(synth_root):
    from tcnet.data.synth.common import rng_for
    from tcnet.data.synth.retina import make_fundus

    for k in (0, 7, 26):
        img, vessels, true_fov = make_fundus(rng_for(11, "fovtest", k), 200, 192, eye="LR"[k % 2],
                                             fov_radius=0.45, centre_jitter=0.02)
        fov = derive_fov(img)
        iou = (fov & true_fov).sum() / (fov | true_fov).sum()
        assert iou > 0.95, iou
        assert (fov & ~true_fov).sum() <= 0.002 * fov.size  # (almost) nothing outside the disc
        assert vessels[true_fov].any() and (vessels & fov).sum() / vessels.sum() > 0.95
        for corner in (fov[0, 0], fov[0, -1], fov[-1, 0], fov[-1, -1]):
            assert not corner
        disc_y, disc_x = np.unravel_index(np.argmax(img.astype(int).sum(2)), fov.shape)  # brightest: optic disc
        assert fov[disc_y, disc_x]
    # through the adapter, from the JPEG on disk (compression noise in the black surround)
    s = discover("chase_db1", synth_root / "chase_db1")[3]
    fov = load_fov(s)
    h, w = fov.shape
    assert 0.45 < fov.mean() < 0.75 and fov[h // 2, w // 2] and not fov[0, 0] and not fov[-1, -1]
    np.testing.assert_array_equal(fov, load_fov(s, read_image(s.image)))
    assert not derive_fov(np.zeros((40, 50, 3), np.uint8)).any()  # black image: empty FOV, no crash
    full = derive_fov(np.full((40, 50, 3), 150, np.uint8))  # cropped inside the FOV: the edges stay
    assert full.all()


def test_fill_holes_is_scipys_binary_fill_holes():
    """derive_fov fills holes with OpenCV (no scipy import in the preprocess workers): the same
    pixels as scipy's default, on random masks with holes, touching the border, 1-pixel wide."""
    from tcnet.data.adapters.chase_db1 import fill_holes

    rng = np.random.default_rng(0)
    with_holes = 0
    for k in range(600):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        m = rng.random((h, w)) < rng.random()
        if k % 2:
            m = ndimage.binary_dilation(m, iterations=int(rng.integers(1, 3)))
        want = ndimage.binary_fill_holes(m)
        got = fill_holes(m)
        assert got.dtype == bool and got.shape == m.shape
        np.testing.assert_array_equal(got, want)
        with_holes += bool((want != m).any())
    assert with_holes > 100  # the comparison saw holes to fill, not only trivial masks


def test_missing_mask_names_the_image(synth_copy):
    root = synth_copy("isic2017")
    (root / "ISIC-2017_Validation_Part1_GroundTruth" / "ISIC_0001001_segmentation.png").unlink()
    with pytest.raises(MissingMaskError) as e:
        discover("isic2017", root)
    assert "ISIC_0001001.jpg" in str(e.value) and "ISIC_0001001_segmentation.png" in str(e.value)
    root = synth_copy("chase_db1")
    (root / "Image_05R_1stHO.png").unlink()
    with pytest.raises(MissingMaskError, match=r"Image_05R\.jpg.*Image_05R_1stHO\.png"):
        discover("chase_db1", root)


def test_missing_ground_truth_folder(synth_copy):
    root = synth_copy("isic2017")
    shutil.rmtree(root / "ISIC-2017_Test_v2_Part1_GroundTruth")
    with pytest.raises(LayoutError, match=r"holds the test images but no ISIC-2017_Test_v2_Part1_GroundTruth/"):
        discover("isic2017", root)


def test_corrupt_and_truncated_files_name_themselves(synth_copy):
    root = synth_copy("isic2017")
    samples = {s.id: s for s in discover("isic2017", root)}  # pairing does not decode images
    img = samples["ISIC_0000002"].image
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 3])
    with pytest.raises(InvalidInputError, match=rf"{img}: image file is truncated"):
        read_image(img)
    mask = samples["ISIC_0000003"].mask
    mask.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(InvalidInputError, match=rf"{mask}"):
        load_mask(samples["ISIC_0000003"])


@pytest.mark.parametrize("dataset", DATASETS)
def test_unknown_layout_says_expected_found_and_where(dataset, tmp_path):
    root = tmp_path / "wrong"
    (root / "some_folder").mkdir(parents=True)
    (root / "readme.txt").write_text("x")
    with pytest.raises(LayoutError) as e:
        discover(dataset, root)
    msg = str(e.value)
    assert "Expected layout" in msg and get_adapter(dataset).layout.strip().splitlines()[1].strip() in msg
    assert "Found in" in msg and "readme.txt" in msg and "some_folder/" in msg
    assert f"data/{dataset}/" in msg and f"tcnet synth {dataset}" in msg
    with pytest.raises(LayoutError, match="does not exist"):
        discover(dataset, tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match=r"\(empty folder\)"):
        discover(dataset, empty)


def test_two_copies_are_ambiguous(synth_copy):
    root = synth_copy("drive")
    shutil.copytree(root / "DRIVE", root / "copy" / "DRIVE")
    (root / "a").mkdir()
    shutil.move(str(root / "DRIVE"), str(root / "a" / "DRIVE"))
    with pytest.raises(LayoutError, match="more than one place"):
        discover("drive", root)


@pytest.mark.parametrize("dataset, image, label", [
    ("isic2017", "ISIC-2017_Training_Data/ISIC_0000001.jpg",
     "ISIC-2017_Training_Part1_GroundTruth/ISIC_0000001_segmentation.png"),
    ("isic2018", "ISIC2018_Task1-2_Training_Input/ISIC_0000001.jpg",
     "ISIC2018_Task1_Training_GroundTruth/ISIC_0000001_segmentation.png"),
    ("drive", "DRIVE/test/images/02_test.tif", "DRIVE/test/1st_manual/02_manual1.gif"),
    ("chase_db1", "Image_14R.jpg", "Image_14R_1stHO.png"),
])
def test_a_label_without_its_image_is_refused_naming_it(synth_copy, dataset, image, label):
    """A partial unzip or a deleted image must not shrink the dataset (or move the split) silently."""
    root = synth_copy(dataset)
    (root / image).unlink()
    with pytest.raises(MissingImageError) as e:
        discover(dataset, root)
    assert str(root / label) in str(e.value) and image.rsplit("/", 1)[-1] in str(e.value), str(e.value)


def test_real_files_unpacked_over_the_look_alike_get_a_hint(synth_copy):
    """The look-alike alone fits its layout; an error where SYNTHETIC.txt sits says what to do."""
    root = synth_copy("drive")
    assert (root / "SYNTHETIC.txt").is_file()
    shutil.copy(root / "DRIVE" / "test" / "images" / "01_test.tif", root / "DRIVE" / "test" / "images" / "09_test.tif")
    with pytest.raises(MissingMaskError, match=r"09_test.*also holds SYNTHETIC.txt.*rm -rf"):
        discover("drive", root)
    (root / "SYNTHETIC.txt").unlink()
    with pytest.raises(MissingMaskError) as e:
        discover("drive", root)
    assert "SYNTHETIC" not in str(e.value)


@pytest.mark.parametrize("dataset", ["ph2", "isic2017", "isic2018", "drive", "chase_db1"])
def test_real_cases_that_fit_the_layout_beside_the_look_alike_are_refused(synth_copy, dataset):
    """Files in the layout, added to a look-alike's folder (a real archive unpacked over it), would
    mix into the data silently: the pair count SYNTHETIC.txt implies says so."""
    root = synth_copy(dataset)
    assert len(discover(dataset, root)) == synthetic_pairs(root, dataset)  # the look-alike alone: fine
    sample = discover(dataset, root)[0]
    new_id = {"ph2": "IMD099", "isic2017": "ISIC_0099999", "isic2018": "ISIC_0099999", "drive": "39",
              "chase_db1": "Image_15L"}[dataset]
    old_id = sample.id.split("_training")[0].split("_test")[0] if dataset == "drive" else sample.id
    for src in (sample.image, sample.mask):  # a whole case (PH2: its folders) under a new id
        rel = src.relative_to(root).as_posix().replace(old_id, new_id)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
    if sample.fov is not None:
        shutil.copy(sample.fov, root / sample.fov.relative_to(root).as_posix().replace(old_id, new_id))
    with pytest.raises(LayoutError, match=r"where tcnet synth wrote \d+ -- .*also holds SYNTHETIC.txt.*rm -rf"):
        discover(dataset, root)
    (root / "SYNTHETIC.txt").unlink()  # real data alone (no marker): no count to hold it to
    discover(dataset, root)


def test_tiff_masks_pillow_cannot_open_are_binarised_by_the_same_rule(tmp_path):
    """Float64 masks (grey, RGB), 0/1 in int64 and in 16-bit grey + alpha: read by tifffile (Pillow
    refuses them), the stored values unscaled, and
    binarised as Pillow-readable masks are (0/1 -> > 0, else >= half the range); preprocess's
    read_mask_file too (it used to fall back to a reader without a tifffile path, and fail)."""
    import tifffile

    from tcnet.data.adapters.base import read_mask_file

    want = np.zeros((12, 16), bool)
    want[3:9, 4:11] = True
    cases = {"float01.tif": (want.astype(np.float64), {}),
             "float255.tif": (want.astype(np.float64) * 255, {}),
             "rgb_float.tif": (np.stack([want] * 3, axis=-1).astype(np.float64), {"photometric": "rgb"}),
             "int64_01.tif": (want.astype(np.int64), {}),  # 0/1 in a wide type: > 0, not scaled to 0 first
             "grey_alpha_uint16_01.tif": (np.stack([want, want], -1).astype(np.uint16),
                                          {"photometric": "minisblack", "extrasamples": [2]}),
             # Pillow opens this one but scrambles its pixels (16-bit planar RGB): tifffile's too
             "planar_rgb16.tif": (np.stack([want] * 3).astype(np.uint16) * 65535, {"planarconfig": "separate",
                                                                                   "photometric": "rgb"})}
    for name, (data, kw) in cases.items():
        tifffile.imwrite(tmp_path / name, data, **kw)
        np.testing.assert_array_equal(binarize_mask_file(tmp_path / name), want, err_msg=name)
        np.testing.assert_array_equal(read_mask_file(tmp_path / name)[1], want, err_msg=name)
