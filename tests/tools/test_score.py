"""``tcnet score`` end to end on small ISIC- and DRIVE-named folders, ``mask_id``, and bad inputs."""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, recall_score, roc_auc_score

from tcnet.cli import main as cli
from tcnet.tools.score import mask_id


def _save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(arr, np.uint8))
    (img.convert(mode) if mode else img).save(path)
    return path


def _palette(path, index, colours):
    """A palette (mode P) image with the given index array and palette colours."""
    img = Image.fromarray(np.asarray(index, np.uint8), mode="L").convert("P")
    img.putpalette([c for rgb in colours for c in rgb] + [0, 0, 0] * (256 - len(colours)))
    img.putdata(np.asarray(index, np.uint8).ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _run(capsys, *args):
    rc = cli(["score", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(
    "name,expected",
    [
        ("ISIC_0000000_segmentation.png", "ISIC_0000000"),
        ("ISIC_0012345.png", "ISIC_0012345"),
        ("ISIC_0012345_pred.png", "ISIC_0012345"),
        ("ISIC_00123459.png", "ISIC_00123459"),  # 8 digits: a typo, not ISIC_0012345's prediction
        ("01_manual1.gif", "01"),
        ("01_manual2.gif", "01"),
        ("01_test.tif", "01"),
        ("01_test.png", "01"),
        ("01_test_mask.gif", "01"),
        ("21_training_mask.gif", "21"),
        ("Image_01L_1stHO.png", "Image_01L"),
        ("Image_14R_2ndHO.png", "Image_14R"),
        ("Image_01L.jpg", "Image_01L"),
        ("IMD002_lesion.bmp", "IMD002"),
        ("case7.png", "case7"),
        ("case7_prob.npy", "case7"),
        ("dir/sub/case7.png", "case7"),
    ],
)
def test_mask_id(name, expected):
    assert mask_id(name) == expected


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------


def test_isic_folders_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)
    truths, preds = {}, {}
    for k in range(3):
        image_id = f"ISIC_{k:07d}"
        t = rng.random((12, 16)) < 0.4
        p = np.where(rng.random(t.shape) < 0.8, t, ~t)
        truths[image_id], preds[image_id] = t, p
        _save(tmp_path / "truth" / f"{image_id}_segmentation.png", t * 255)
        _save(tmp_path / "pred" / f"{image_id}.png", p * 255)
    (tmp_path / "truth" / "LICENSE.txt").write_text("ignored")
    _save(tmp_path / "pred" / "ISIC_0099999.png", np.zeros((5, 5)))  # extra prediction: ignored
    out = tmp_path / "res" / "scores.json"
    rc, stdout, err = _run(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "truth", "--out", out)
    assert rc == 0, err
    assert "mean" in stdout and "pooled" in stdout and "TJA" in stdout
    res = json.loads(out.read_text())
    assert list(res) == ["per_image", "mean", "pooled"]
    assert [r["id"] for r in res["per_image"]] == sorted(truths)
    for row in res["per_image"]:
        t, p = truths[row["id"]].ravel(), preds[row["id"]].ravel()
        assert list(row) == ["id", "AC", "SE", "SP", "JA", "DI", "TJA"]
        assert row["AC"] == pytest.approx(accuracy_score(t, p))
        assert row["SE"] == pytest.approx(recall_score(t, p))
        assert row["SP"] == pytest.approx(recall_score(t, p, pos_label=0))
        assert row["JA"] == pytest.approx(jaccard_score(t, p))
        assert row["DI"] == pytest.approx(f1_score(t, p))
        assert row["TJA"] == (row["JA"] if row["JA"] >= 0.65 else 0.0)
    assert res["mean"]["JA"] == pytest.approx(np.mean([r["JA"] for r in res["per_image"]]))
    all_t = np.concatenate([truths[i].ravel() for i in sorted(truths)])
    all_p = np.concatenate([preds[i].ravel() for i in sorted(truths)])
    assert res["pooled"]["JA"] == pytest.approx(jaccard_score(all_t, all_p))
    assert "TJA" not in res["pooled"]


def test_isic_threshold_is_strict_128_and_empty_case(tmp_path, capsys):
    # the ISIC scorer's check [V2]: a lesion predicted as 128 is background (JA 0), 129 foreground (JA 1)
    t = np.zeros((10, 10))
    t[:5] = 255
    _save(tmp_path / "truth" / "ISIC_0000001_segmentation.png", t)
    _save(tmp_path / "truth" / "ISIC_0000002_segmentation.png", t)
    _save(tmp_path / "truth" / "ISIC_0000003_segmentation.png", np.zeros((10, 10)))
    _save(tmp_path / "pred" / "ISIC_0000001.png", np.where(t > 0, 128, 0))
    _save(tmp_path / "pred" / "ISIC_0000002.png", np.where(t > 0, 129, 0))
    _save(tmp_path / "pred" / "ISIC_0000003.png", np.zeros((10, 10)))  # empty truth, empty prediction
    out = tmp_path / "s.json"
    rc, _, err = _run(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "truth", "--out", out)
    assert rc == 0, err
    ja = [r["JA"] for r in json.loads(out.read_text())["per_image"]]
    assert ja == [0.0, 1.0, 1.0]  # the empty/empty case scores 1 (ISIC rule)
    # --threshold 127 makes the 128 prediction foreground
    rc, _, _ = _run(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "truth", "--out", out, "--threshold", 127)
    assert rc == 0 and json.loads(out.read_text())["per_image"][0]["JA"] == 1.0


def test_drive_folders_with_fov_and_probs(tmp_path, capsys):
    rng = np.random.default_rng(1)
    h, w = 24, 20
    yy, xx = np.mgrid[:h, :w]
    fov = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * h) ** 2
    ts, ps, fs, qs = [], [], [], []
    for k in (1, 2):
        t = (rng.random((h, w)) < 0.15) & fov
        prob8 = np.round(np.clip(0.4 * t + 0.6 * rng.random((h, w)), 0, 1) * 255).astype(np.uint8)
        pred = prob8 >= 128  # as evaluate writes it: prob >= 0.5 -> 255
        _save(tmp_path / "1st_manual" / f"{k:02d}_manual1.gif", t * 255)
        _save(tmp_path / "mask" / f"{k:02d}_test_mask.gif", fov * 255)
        _save(tmp_path / "pred" / f"{k:02d}_test.png", pred * 255)
        _save(tmp_path / "probs" / f"{k:02d}_test.png", prob8)
        ts.append(t[fov])
        ps.append(pred[fov])
        qs.append(prob8[fov] / 255)
    out = tmp_path / "scores.json"
    rc, stdout, err = _run(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "1st_manual",
                           "--fov", tmp_path / "mask", "--probs", tmp_path / "probs", "--out", out)
    assert rc == 0, err
    assert "AUC" in stdout
    res = json.loads(out.read_text())
    assert [r["id"] for r in res["per_image"]] == ["01", "02"]
    for row, t, p, q in zip(res["per_image"], ts, ps, qs):
        assert row["AC"] == pytest.approx(accuracy_score(t, p))  # FOV pixels only
        assert row["AUC"] == pytest.approx(roc_auc_score(t, q))
    t_all, p_all, q_all = (np.concatenate(x) for x in (ts, ps, qs))
    assert res["pooled"]["AC"] == pytest.approx(accuracy_score(t_all, p_all))
    assert res["pooled"]["SE"] == pytest.approx(recall_score(t_all, p_all))
    assert res["pooled"]["AUC"] == pytest.approx(roc_auc_score(t_all, q_all), abs=1e-12)


def test_palette_second_observer_as_truth_and_as_prediction(tmp_path, capsys):
    # DRIVE 2nd_manual: palette indices {0, 1}, palette 0 = (4, 2, 4), 1 = (252, 254, 252)
    idx = np.zeros((8, 8), np.uint8)
    idx[2:5, 3:6] = 1
    colours = [(4, 2, 4), (252, 254, 252)]
    _palette(tmp_path / "truth" / "01_manual2.gif", idx, colours)
    _palette(tmp_path / "pred" / "01_manual2.png", idx, colours)
    np.save(tmp_path / "pred" / "01.npy", np.zeros(1))  # not a mask suffix for --pred: ignored
    out = tmp_path / "s.json"
    rc, _, err = _run(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "truth", "--out", out)
    assert rc == 0, err
    row = json.loads(out.read_text())["per_image"][0]
    assert (row["id"], row["JA"], row["AC"]) == ("01", 1.0, 1.0)  # not "every pixel a vessel"


def test_one_class_auc_is_null_and_npy_probs(tmp_path, capsys):
    _save(tmp_path / "truth" / "a.png", np.zeros((4, 4)))
    _save(tmp_path / "pred" / "a.png", np.zeros((4, 4)))
    (tmp_path / "probs").mkdir()
    np.save(tmp_path / "probs" / "a_prob.npy", np.full((4, 4), 0.1, np.float32))
    out = tmp_path / "s.json"
    rc, stdout, err = _run(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "truth",
                           "--probs", tmp_path / "probs", "--out", out)
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert res["per_image"][0]["AUC"] is None and res["mean"]["AUC"] is None and res["pooled"]["AUC"] is None


# ----------------------------------------------------------------------------------------------
# Bad inputs: non-zero exit, one line naming the file
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path):
    t = np.zeros((6, 8))
    t[2:4, 2:6] = 255
    for k in (1, 2):
        _save(tmp_path / "truth" / f"ISIC_{k:07d}_segmentation.png", t)
        _save(tmp_path / "pred" / f"ISIC_{k:07d}.png", t)
    return tmp_path


def _fails(capsys, folders, *names):
    rc, _, err = _run(capsys, "--pred", folders / "pred", "--truth", folders / "truth", "--out", folders / "s.json")
    assert rc == 2
    assert err.startswith("tcnet score: error:") and err.count("\n") == 1
    for name in names:
        assert name in err
    assert not (folders / "s.json").exists()
    return err


def test_missing_prediction(folders, capsys):
    (folders / "pred" / "ISIC_0000002.png").unlink()
    err = _fails(capsys, folders, "ISIC_0000002_segmentation.png", "ISIC_0000002")
    assert "no prediction" in err


def test_rgb_prediction(folders, capsys):
    _save(folders / "pred" / "ISIC_0000002.png", np.zeros((6, 8, 3)))
    assert "single-channel" in _fails(capsys, folders, "ISIC_0000002.png", "RGB")


def test_colour_palette_prediction(folders, capsys):
    _palette(folders / "pred" / "ISIC_0000001.png", np.eye(6, 8), [(0, 0, 0), (255, 0, 0)])
    assert "not grey" in _fails(capsys, folders, "ISIC_0000001.png")


def test_size_mismatch(folders, capsys):
    _save(folders / "pred" / "ISIC_0000001.png", np.zeros((7, 8)))
    _fails(capsys, folders, "ISIC_0000001.png", "8x7", "8x6")


def test_unreadable_prediction_and_truth(folders, capsys):
    (folders / "pred" / "ISIC_0000001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _fails(capsys, folders, "ISIC_0000001.png")
    _save(folders / "pred" / "ISIC_0000001.png", np.zeros((6, 8)))
    (folders / "truth" / "ISIC_0000002_segmentation.png").write_bytes(b"")
    _fails(capsys, folders, "ISIC_0000002_segmentation.png")


def test_a_float_tiff_truth_is_read_as_the_pipeline_reads_masks(folders, capsys):
    import tifffile

    truth = np.asarray(Image.open(folders / "truth" / "ISIC_0000001_segmentation.png")) > 0
    (folders / "truth" / "ISIC_0000001_segmentation.png").unlink()
    tifffile.imwrite(folders / "truth" / "ISIC_0000001_segmentation.tif", truth.astype(np.float64))  # Pillow cannot
    rc, out, err = _run(capsys, "--pred", folders / "pred", "--truth", folders / "truth")
    assert rc == 0, err


def test_an_out_that_cannot_be_written_is_refused_before_scoring(folders, capsys, monkeypatch):
    import tcnet.tools.score as score_mod

    monkeypatch.setattr(score_mod, "score_folders", lambda *a, **k: pytest.fail("scored before checking --out"))
    (folders / "taken").write_text("x")
    for out, says in ((folders / "pred", "is a folder; --out names the JSON file to write"),
                      (folders / "taken" / "s.json", f"{folders / 'taken'} is a file, not a folder")):
        rc, stdout, err = _run(capsys, "--pred", folders / "pred", "--truth", folders / "truth", "--out", out)
        assert rc == 2 and says in err and "scored" not in stdout  # no table: nothing was scored


def test_duplicate_predictions_and_missing_folder(folders, capsys):
    _save(folders / "pred" / "ISIC_0000001_pred.png", np.zeros((6, 8)))
    assert "several" in _fails(capsys, folders, "ISIC_0000001.png", "ISIC_0000001_pred.png")
    rc, _, err = _run(capsys, "--pred", folders / "nope", "--truth", folders / "truth")
    assert rc == 2 and "nope" in err


def test_truth_glob_picks_one_observer_from_the_chase_folder(tmp_path, capsys):
    """CHASE_DB1's official folder holds each image and both observers' masks side by side."""
    assert cli(["synth", "chase_db1", "--out", str(tmp_path / "c"), "--n", "2"]) == 0
    capsys.readouterr()
    truth_dir = next(p.parent for p in (tmp_path / "c").rglob("*_1stHO.png"))
    pred = tmp_path / "pred"
    pred.mkdir()
    for t in truth_dir.glob("*_1stHO.png"):
        Image.open(t).convert("L").save(pred / t.name.replace("_1stHO", "_mask"))  # the 1st observer as prediction
    rc, _, err = _run(capsys, "--pred", pred, "--truth", truth_dir)
    assert rc == 2 and "several masks for id" in err and "--truth-glob" in err
    rc, out, err = _run(capsys, "--pred", pred, "--truth", truth_dir, "--truth-glob", "*_1stHO.png", "--out", tmp_path / "s.json")
    assert rc == 0, err
    scores = json.loads((tmp_path / "s.json").read_text())
    assert len(scores["per_image"]) == len(list(truth_dir.glob("*_1stHO.png"))) and scores["mean"]["DI"] == 1.0
    rc, _, err = _run(capsys, "--pred", pred, "--truth", truth_dir, "--truth-glob", "*_3rdHO.png")
    assert rc == 2 and "matching --truth-glob '*_3rdHO.png'" in err


def test_chase_human_baseline_inside_the_derived_fov_from_the_official_folder(tmp_path, capsys):
    """The second observer against the first, straight from the official flat folder, scored inside
    the FOV the pipeline derives (CHASE_DB1 ships none): the same pixels evaluate counts."""
    from tcnet.data.adapters import discover, load_fov, load_mask
    from tcnet.metrics import MetricAccumulator

    assert cli(["synth", "chase_db1", "--out", str(tmp_path / "c"), "--n", "2"]) == 0
    capsys.readouterr()
    folder = next(p.parent for p in (tmp_path / "c").rglob("*_1stHO.png"))
    common = ["--pred", folder, "--pred-glob", "*_2ndHO.png", "--truth", folder, "--truth-glob", "*_1stHO.png"]
    Image.open(next(folder.glob("*_1stHO.png"))).convert("L").save(folder / "Image_01L_prob.png")  # predict's, not a photo
    rc, _, err = _run(capsys, *common, "--fov-from-images", folder, "--out", tmp_path / "fov.json")
    assert rc == 0, err
    rc, _, err = _run(capsys, *common, "--out", tmp_path / "all.json")
    assert rc == 0, err
    inside, everywhere = (json.loads((tmp_path / f).read_text()) for f in ("fov.json", "all.json"))
    acc = MetricAccumulator()
    for s in discover("chase_db1", tmp_path / "c"):
        second = np.asarray(Image.open(str(s.mask).replace("_1stHO", "_2ndHO")).convert("L")) > 128
        acc.update(s.id, None, load_mask(s), valid=load_fov(s), pred=second)
    assert inside["pooled"] == pytest.approx(acc.pooled())
    assert inside["pooled"]["AC"] < everywhere["pooled"]["AC"]  # the black surround no longer counts
    with pytest.raises(SystemExit) as stop:
        _run(capsys, *common, "--fov", folder, "--fov-from-images", folder)
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_ph2_folder_per_image_with_recursive(tmp_path, capsys):
    """PH2 keeps every image and its lesion mask in a folder of their own."""
    assert cli(["synth", "ph2", "--out", str(tmp_path / "p"), "--n", "2"]) == 0
    capsys.readouterr()
    lesions = sorted((tmp_path / "p").rglob("*_lesion.bmp"))
    pred = tmp_path / "pred"
    for t in lesions:  # nested as 'tcnet predict --recursive --probs --overlay' writes them
        stem = t.parent.parent.name
        for sub, name in (("", "_mask"), ("probs/", "_prob"), ("overlays/", "_overlay")):
            (pred / sub / stem).mkdir(parents=True)
            Image.open(t).convert("L").save(pred / sub / stem / f"{stem}{name}.png")
    rc, _, err = _run(capsys, "--pred", pred, "--truth", tmp_path / "p", "--truth-glob", "*_lesion.bmp")
    assert rc == 2 and "holds no mask files" in err
    rc, _, err = _run(capsys, "--pred", pred, "--truth", tmp_path / "p", "--recursive", "--truth-glob", "*_lesion.bmp",
                      "--out", tmp_path / "s.json")
    assert rc == 0, err
    scores = json.loads((tmp_path / "s.json").read_text())
    assert [r["id"] for r in scores["per_image"]] == [t.parent.parent.name for t in lesions]
    assert scores["mean"]["DI"] == 1.0
    rc, _, err = _run(capsys, "--pred", pred, "--truth", tmp_path / "p", "--recursive", "--truth-glob", "*_lesion.bmp",
                      "--probs", pred / "probs")  # the maps pair with the masks; the overlays stay out of it
    assert rc == 0, err


def test_a_0_1_label_map_is_scored_as_empty_with_a_warning_and_right_with_threshold_0(tmp_path, capsys):
    """nnU-Net and others write 0/1 label PNGs: under the ISIC rule (> 128) they hold no foreground.
    tcnet score says so once and names the fix; --threshold 0 scores them as meant."""
    truth = np.zeros((6, 6), np.uint8)
    truth[1:4, 1:4] = 1
    for image_id in ("ISIC_0000001", "ISIC_0000002"):
        _save(tmp_path / "truth" / f"{image_id}_segmentation.png", truth * 255)
        _save(tmp_path / "pred" / f"{image_id}.png", truth)  # 0/1, not 0/255
    rc, stdout, err = _run(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "truth")
    assert rc == 0 and "warning" in err and "ISIC_0000001.png (and 1 more)" in err and "--threshold 0" in err, err
    rc, stdout, err = _run(capsys, "--pred", tmp_path / "pred", "--truth", tmp_path / "truth", "--threshold", "0")
    assert rc == 0 and "warning" not in err
    assert "1.0000" in stdout  # DI = 1 on both
