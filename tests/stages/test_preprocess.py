"""Preprocess stage: outputs and manifest, every kind of bad input, skip_invalid, atomicity, CLI."""

import csv
import hashlib
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import yaml
from PIL import Image

from tcnet.config import PreprocessConfig
from tcnet.data.dataset import MANIFEST_COLUMNS as DATASET_MANIFEST_COLUMNS
from tcnet.data.dataset import load_arrays
from tcnet.data.dataset import read_manifest
from tcnet.stages import preprocess
from tcnet.stages.preprocess import MANIFEST_COLUMNS, PreprocessError, mask_binary_problem, run

TRAIN = "ISIC-2017_Training_Data"
TRAIN_GT = "ISIC-2017_Training_Part1_GroundTruth"
VAL, VAL_GT = "ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"


def _write_isic2017(raw, n_train=4, n_val=2, w=48, h=40):
    """A tiny ISIC 2017 look-alike in the official layout: JPEG images, 0/255 PNG masks."""
    rng = np.random.default_rng(1)
    root = raw / "isic2017"
    k = 0
    for folder, gt, n in ((TRAIN, TRAIN_GT, n_train), (VAL, VAL_GT, n_val)):
        (root / folder).mkdir(parents=True)
        (root / gt).mkdir(parents=True)
        for _ in range(n):
            sid = f"ISIC_{k:07d}"
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / folder / f"{sid}.jpg", quality=90)
            mask = np.zeros((h, w), np.uint8)
            mask[5 + k: 20 + k, 8: 30] = 255
            Image.fromarray(mask).save(root / gt / f"{sid}_segmentation.png")
            k += 1
    (root / TRAIN / "ISIC-2017_Training_Data_metadata.csv").write_text("image_id,age_approximate,sex\n")
    return root


CFG = PreprocessConfig(datasets=("isic2017",), image_size=32, workers=1)


@pytest.fixture(autouse=True)
def _no_mlflow(monkeypatch):
    """The stage's MLflow logging is tested in test_data_tracking.py; here it would write the
    project's own store (the CLI's default) and cost seconds a call."""
    monkeypatch.setenv("TCNET_NO_MLFLOW", "1")


@pytest.fixture()
def raw(tmp_path):
    _write_isic2017(tmp_path / "raw")
    return tmp_path / "raw"


def _tree(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_outputs_and_manifest(raw, tmp_path):
    out = tmp_path / "pre"
    summary = run(PreprocessConfig(datasets=("isic2017",), image_size=32, workers=2), raw, out)
    assert summary["datasets"]["isic2017"]["n"] == 6 and summary["skipped"] == []
    assert sorted(_tree(out)) == sorted([
        "isic2017/images.npy", "isic2017/masks.npy",  # no fov.npy: ISIC's FOV is the whole image
        "manifest.csv", "stats.json", "skipped.csv", "params.yaml", ".tcnet-output",  # "tcnet preprocess"
    ])
    images, masks, fov = load_arrays(out / "isic2017")
    assert images.dtype == masks.dtype == fov.dtype == np.uint8
    assert images.shape == (6, 32, 32, 3) and masks.shape == fov.shape == (6, 32, 32)
    assert set(np.unique(masks)) == {0, 1} and fov.all()  # ISIC: FOV = whole image

    header = (out / "manifest.csv").read_text().splitlines()[0]
    assert header == ",".join(MANIFEST_COLUMNS) and MANIFEST_COLUMNS == DATASET_MANIFEST_COLUMNS
    m = read_manifest(out)
    assert m["id"].tolist() == [f"ISIC_{k:07d}" for k in range(6)]
    assert m["index"].tolist() == list(range(6))
    assert m["official_split"].tolist() == ["train"] * 4 + ["val"] * 2
    assert m["image_path"][0] == f"isic2017/{TRAIN}/ISIC_0000000.jpg"
    assert m["mask_path"][0] == f"isic2017/{TRAIN_GT}/ISIC_0000000_segmentation.png"
    assert (m["fov_path"] == "").all() and (m["orig_width"] == 48).all() and (m["orig_height"] == 40).all()
    assert m["fg_fraction"][0] == pytest.approx(15 * 22 / (48 * 40), abs=1e-6)
    row = m.iloc[4]
    expect = hashlib.sha256((raw / row["image_path"]).read_bytes() + (raw / row["mask_path"]).read_bytes())
    assert row["checksum"] == expect.hexdigest()
    # the stored mask is the resized raw mask (nearest)
    raw_mask = np.asarray(Image.open(raw / m["mask_path"][2])) > 127
    from tcnet.data.transforms import resize_mask

    np.testing.assert_array_equal(masks[2], resize_mask(raw_mask, 32).astype(np.uint8))

    stats = json.loads((out / "stats.json").read_text())
    assert set(stats) == {"isic2017"}
    assert set(stats["isic2017"]) == {"n", "size", "fg_fraction", "class_weights", "class_weight_clip"}
    assert stats["isic2017"]["class_weight_clip"] == [1.0, 50.0]
    # per-image pixel counts at the stored size (the train stage's class weights come from them)
    assert (m["fov_pixels"] == 32 * 32).all()
    assert list(m["fg_pixels"]) == [int(masks[i].sum()) for i in range(6)]
    s = stats["isic2017"]
    assert s["n"] == 6 and s["size"] == 32
    assert s["fg_fraction"] == pytest.approx(masks.mean(), abs=1e-6)
    fg = masks[:4].mean()  # class weights from the official training images only
    assert s["class_weights"] == pytest.approx([1.0, (1 - fg) / fg], rel=1e-4)
    params = yaml.safe_load((out / "params.yaml").read_text())
    assert params["preprocess"]["image_size"] == 32 and params["preprocess"]["raw_dir"] == str(raw)
    assert (out / "skipped.csv").read_text() == "dataset,id,path,problem\n"


def test_same_arrays_with_and_without_a_pool(raw, tmp_path):
    run(CFG, raw, tmp_path / "a")
    run(PreprocessConfig(datasets=("isic2017",), image_size=32, workers=2), raw, tmp_path / "b")
    for name in ("isic2017/images.npy", "isic2017/masks.npy", "manifest.csv", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _corrupt(root):
    p = root / TRAIN / "ISIC_0000001.jpg"
    p.write_bytes(b"this is not a jpeg" * 10)
    return p


def _truncated(root):
    p = root / TRAIN / "ISIC_0000002.jpg"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _missing_mask(root):
    (root / TRAIN_GT / "ISIC_0000003_segmentation.png").unlink()
    return root / TRAIN / "ISIC_0000003.jpg"


def _size_mismatch(root):
    p = root / TRAIN_GT / "ISIC_0000000_segmentation.png"
    Image.fromarray(np.zeros((30, 48), np.uint8)).save(p)
    return p


def _non_binary(root):
    p = root / VAL_GT / "ISIC_0000005_segmentation.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 48).astype(np.uint8), (40, 1))).save(p)
    return p


def _dark_foreground(root):  # 0/100: passes as two levels, binarises (>= 128) to no lesion at all
    p = root / VAL_GT / "ISIC_0000005_segmentation.png"
    mask = np.zeros((40, 48), np.uint8)
    mask[10:20, 10:30] = 100
    Image.fromarray(mask).save(p)
    return p


def _sixteen_bit_0_255(root):  # 0/255 stored in a 16-bit PNG: 255 of 65535 is background
    p = root / TRAIN_GT / "ISIC_0000001_segmentation.png"
    mask = np.zeros((40, 48), np.uint16)
    mask[10:20, 10:30] = 255
    Image.fromarray(mask).save(p)
    return p


def _empty(root):
    shutil.rmtree(root)
    root.mkdir()
    return root


@pytest.mark.parametrize("break_it, words", [
    (_corrupt, "not a recognised image"),
    (_truncated, "truncated"),
    (_missing_mask, "no mask"),
    (_size_mismatch, "does not match image size"),
    (_non_binary, "not binary"),
    (_dark_foreground, "two grey levels {0, 100} but no pixel counts as foreground"),
    (_sixteen_bit_0_255, "two grey levels {0, 1} but no pixel counts as foreground"),
    (_empty, "isic2017"),
])
def test_bad_input_is_a_clear_error_naming_the_file(raw, tmp_path, break_it, words):
    path = break_it(raw / "isic2017")
    with pytest.raises(PreprocessError) as e:
        run(CFG, raw, tmp_path / "pre")
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and words in msg and str(path) in msg, msg
    assert not (tmp_path / "pre").exists() and not list(tmp_path.glob(".pre.tmp-*"))


def test_missing_dataset_folder(raw, tmp_path):
    with pytest.raises(PreprocessError, match=r"drive: raw data folder .*drive not found.*tcnet synth drive"):
        run(PreprocessConfig(datasets=("isic2017", "drive"), image_size=32, workers=1), raw, tmp_path / "pre")


def test_skip_invalid_skips_and_reports(raw, tmp_path):
    root = raw / "isic2017"
    bad = {_corrupt(root), _truncated(root), _size_mismatch(root), _non_binary(root)}
    summary = run(PreprocessConfig(datasets=("isic2017",), image_size=32, workers=2, skip_invalid=True),
                  raw, tmp_path / "pre")
    assert {s["path"] for s in summary["skipped"]} == {str(p) for p in bad}
    assert summary["datasets"]["isic2017"] == {**summary["datasets"]["isic2017"], "n": 2, "skipped": 4}
    rows = list(csv.DictReader(open(tmp_path / "pre" / "skipped.csv")))
    assert sorted(r["id"] for r in rows) == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000005"]
    assert all(r["problem"] and r["dataset"] == "isic2017" for r in rows)
    m = read_manifest(tmp_path / "pre")
    assert m["id"].tolist() == ["ISIC_0000003", "ISIC_0000004"] and m["index"].tolist() == [0, 1]
    assert np.load(tmp_path / "pre" / "isic2017" / "images.npy").shape[0] == 2


def test_skip_invalid_with_nothing_left_is_an_error(raw, tmp_path):
    for p in (raw / "isic2017").rglob("*.jpg"):
        p.write_bytes(b"garbage")
    with pytest.raises(PreprocessError, match="all 6 pairs"):
        run(PreprocessConfig(datasets=("isic2017",), image_size=32, workers=1, skip_invalid=True), raw, tmp_path / "p")


def test_failed_run_keeps_previous_outputs(raw, tmp_path, monkeypatch):
    out = tmp_path / "pre"
    run(CFG, raw, out)
    before = _tree(out)
    # 1) a bad file: stops before anything is replaced
    _non_binary(raw / "isic2017")
    with pytest.raises(PreprocessError):
        run(PreprocessConfig(datasets=("isic2017",), image_size=64, workers=1), raw, out)
    assert _tree(out) == before and not list(tmp_path.glob(".pre.tmp-*"))
    # 2) killed half-way through writing the arrays
    calls = []

    def save(path, arr):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        np.lib.format.write_array(open(path, "wb"), arr)

    monkeypatch.setattr(preprocess.np, "save", save)
    with pytest.raises(KeyboardInterrupt):
        run(PreprocessConfig(datasets=("isic2017",), image_size=64, workers=1, skip_invalid=True), raw, out)
    assert len(calls) == 2
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["pre", "raw"]
    # 3) killed while a worker writes a pair into the arrays (the normal path: no skipped pair)
    monkeypatch.undo()
    writes = []
    real_write = preprocess._Slots.write

    def write(self, index, **arrays):
        writes.append(index)
        if len(writes) == 3:
            raise KeyboardInterrupt
        real_write(self, index, **arrays)

    monkeypatch.setattr(preprocess._Slots, "write", write)
    with pytest.raises(KeyboardInterrupt):
        run(PreprocessConfig(datasets=("isic2017",), image_size=64, workers=1, skip_invalid=True), raw, out)
    assert len(writes) == 3
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["pre", "raw"]


def test_out_at_the_raw_data_or_a_users_folder_is_refused_before_any_work(raw, tmp_path, capsys):
    """``--out`` replaces its folder whole: pointed at the raw data (or a folder above it, or one of
    the user's own) it deleted every file there. Now refused, each file kept; its own earlier output
    is still replaced."""
    from tcnet.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("preprocess: {datasets: [isic2017], image_size: 32, workers: 1}\n")
    (raw / "NOTES.txt").write_text("mine")
    before = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*"))
    for out in (raw, raw / "isic2017", tmp_path):
        assert main(["preprocess", "--params", str(params), "--raw", str(raw), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{out}: " in err and "'tcnet preprocess' did not write" in err and "Traceback" not in err
    assert sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*")) == before
    assert main(["preprocess", "--params", str(params), "--raw", str(raw), "--out", str(tmp_path / "pre")]) == 0
    assert main(["preprocess", "--params", str(params), "--raw", str(raw), "--out", str(tmp_path / "pre")]) == 0


def test_mask_binary_rule():
    assert mask_binary_problem(np.array([[0, 1], [1, 0]], np.uint8)) is None
    assert mask_binary_problem(np.array([[0, 255], [255, 0]], np.uint8)) is None
    assert mask_binary_problem(np.array([[3, 253], [253, 3]], np.uint8)) is None  # DRIVE palette, as grey
    edges = np.zeros((100, 100), np.uint8)
    edges[:, 50:] = 255
    edges[:, 49] = 128  # one anti-aliased column: 1 %
    assert mask_binary_problem(edges) is None
    edges[:, 48] = 100
    assert "not binary" in mask_binary_problem(edges)


def test_cli_success_and_one_line_error(raw, tmp_path, capsys):
    from tcnet.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("preprocess: {datasets: [isic2017], image_size: 32, workers: 1}\n")
    out = tmp_path / "pre"
    assert main(["preprocess", "--params", str(params), "--raw", str(raw), "--out", str(out)]) == 0
    assert "isic2017: 6 pairs at 32 px" in capsys.readouterr().out
    bad = _corrupt(raw / "isic2017")
    assert main(["preprocess", "--params", str(params), "--raw", str(raw), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err


def test_all_five_synthetic_datasets_then_split_and_dataset(tmp_path):
    """End to end on `tcnet synth` look-alikes of every dataset: preprocess -> split -> Dataset."""
    from tcnet.config import DATASETS, SplitConfig
    from tcnet.data.dataset import SegmentationDataset, ids_for, load_split
    from tcnet.data.synth.writers import write_dataset
    from tcnet.stages import split

    raw = tmp_path / "raw"
    for d in DATASETS:
        write_dataset(d, raw / d, n=6, size=(64, 48))
    cfg = PreprocessConfig(datasets=DATASETS, image_size=32, image_size_overrides={"drive": 64}, workers=2)
    summary = run(cfg, raw, tmp_path / "pre")
    assert summary["skipped"] == [] and summary["images_per_s"] > 0
    m = read_manifest(tmp_path / "pre")
    counts = m.groupby("dataset").size().to_dict()
    assert counts == {"isic2017": 12, "isic2018": 6, "ph2": 6, "drive": 12, "chase_db1": 6}
    assert set(m[m.dataset == "drive"]["official_split"]) == {"train", "test"}
    assert (m[m.dataset == "drive"]["fov_path"].str.endswith("_mask.gif")).all()
    assert (m[m.dataset == "ph2"]["official_split"] == "").all()
    assert (m[m.dataset == "chase_db1"]["fov_path"] == "").all()
    assert np.load(tmp_path / "pre" / "drive" / "images.npy").shape == (12, 64, 64, 3)
    chase_fov = np.load(tmp_path / "pre" / "chase_db1" / "fov.npy")
    assert 0 < chase_fov.mean() < 1  # derived from the image: a disc, not the whole frame
    stats = json.loads((tmp_path / "pre" / "stats.json").read_text())
    assert list(stats) == list(DATASETS)
    assert all(1.0 <= w <= 50.0 for s in stats.values() for w in s["class_weights"])
    # the workers' pixel counts give what the rule gives on the written arrays, and each slot holds its pair
    from tcnet.data.io import read_image
    from tcnet.data.transforms import resize_image
    from tcnet.losses import class_weights_from_masks

    for d in DATASETS:
        _, masks, fovs = load_arrays(tmp_path / "pre" / d)
        # fov.npy only where the FOV can be smaller than the image: DRIVE ships it, CHASE_DB1 derives it
        assert (tmp_path / "pre" / d / "fov.npy").is_file() == (d in ("drive", "chase_db1"))
        for name in ("masks", "fov")[: 1 + (d in ("drive", "chase_db1"))]:  # stored bytes 0/1 (CHASE's are 1-bit files)
            assert set(np.unique(np.load(tmp_path / "pre" / d / f"{name}.npy"))) == {0, 1}, (d, name)
        rows = m[m.dataset == d].sort_values("index")
        train = (rows["official_split"] == "train").to_numpy()
        train = train if train.any() else np.ones_like(train)
        assert stats[d]["class_weights"] == pytest.approx(
            class_weights_from_masks(masks[train], fovs[train], clip=PreprocessConfig().class_weight_clip), abs=1e-5)
        assert stats[d]["fg_fraction"] == pytest.approx((masks & fovs).sum() / fovs.sum(), abs=1e-5)
        last = rows.iloc[-1]
        want = resize_image(read_image(raw / last["image_path"]), stats[d]["size"])
        np.testing.assert_array_equal(np.load(tmp_path / "pre" / d / "images.npy")[int(last["index"])], want)

    split.run(SplitConfig(cv_folds=3), tmp_path / "pre", tmp_path / "splits")
    s = load_split(tmp_path / "splits", "drive")
    assert s["test"] == sorted(m[(m.dataset == "drive") & (m.official_split == "test")]["id"])
    ds = SegmentationDataset(tmp_path / "pre", "drive", ids_for(s, "train", 0), augment=True, seed=1)
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["id"] == ids_for(s, "train", 0)[0]


def test_mask_vanishing_after_discovery_is_skippable(raw, tmp_path, monkeypatch):
    """The adapter refuses a missing mask at discovery (not skippable: the layout is wrong); a mask
    that disappears between discovery and reading (or a Sample without a mask) is a per-pair
    problem that skip_invalid skips."""
    import dataclasses

    import tcnet.data.adapters as adapters

    real = adapters.discover

    def discover(dataset, root):  # as if ISIC_0000001's mask were deleted right after discovery
        samples = real(dataset, root)
        samples[1] = dataclasses.replace(samples[1], mask=samples[1].mask.with_name("gone_segmentation.png"))
        return samples

    monkeypatch.setattr(adapters, "discover", discover)
    cfg = dataclasses.replace(CFG, skip_invalid=True)
    summary = run(cfg, raw, tmp_path / "pre")
    (skipped,) = summary["skipped"]
    assert skipped["id"] == "ISIC_0000001" and skipped["problem"] == "mask file is missing"
    assert skipped["path"].endswith("gone_segmentation.png")
    with pytest.raises(PreprocessError, match="gone_segmentation.png: mask file is missing"):
        run(CFG, raw, tmp_path / "pre2")


def test_adapter_finding_no_pairs_is_an_empty_dataset_error(raw, tmp_path, monkeypatch):
    import tcnet.data.adapters as adapters

    monkeypatch.setattr(adapters, "discover", lambda dataset, root: [])
    with pytest.raises(PreprocessError, match=r"isic2017: no image/mask pairs found in .*isic2017 \(empty dataset\)"):
        run(CFG, raw, tmp_path / "pre")


def test_a_fov_mask_is_checked_as_a_mask_is(tmp_path):
    """Retina scores are counted inside the FOV: a noisy FOV file must not be thresholded silently."""
    from tcnet.data.synth.writers import write_dataset

    raw = tmp_path / "raw"
    write_dataset("drive", raw / "drive", n=2, size=(64, 48))
    fov = sorted((raw / "drive").rglob("*_mask.gif"))[0]
    noise = np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8)
    Image.fromarray(noise).save(fov)
    with pytest.raises(PreprocessError) as e:
        run(PreprocessConfig(datasets=("drive",), image_size=32, workers=1), raw, tmp_path / "pre")
    assert str(fov) in str(e.value) and "FOV mask is not binary" in str(e.value), str(e.value)
    assert not (tmp_path / "pre").exists()


def test_the_class_weight_clip_comes_from_the_config(raw, tmp_path):
    wide = json.loads((run(CFG, raw, tmp_path / "a") and tmp_path / "a" / "stats.json").read_text())
    tight = json.loads((run(replace(CFG, class_weight_clip=(1.0, 1.5)), raw, tmp_path / "b") and
                        tmp_path / "b" / "stats.json").read_text())
    assert wide["isic2017"]["class_weights"][1] > 1.5  # the look-alike's lesions are a minority
    assert tight["isic2017"]["class_weights"] == [1.0, 1.5]


def test_manifest_paths_are_relative_to_the_raw_folder_however_given():
    from pathlib import Path

    from tcnet.stages.preprocess import _rel

    assert _rel(Path("raw") / "drive" / "x.png", "raw") == "drive/x.png"  # the adapters' Paths: by prefix
    # a custom adapter's strings need not be normalised: os.path.relpath's answer, never "/drive/x.png"
    assert _rel("raw//drive/x.png", "raw") == _rel("raw/drive/./x.png", "raw") == "drive/x.png"
    assert _rel("raw/../raw/drive/x.png", "raw") == "drive/x.png" and _rel("", "raw") == ""
