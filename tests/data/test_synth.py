"""Synthetic look-alikes: exact layouts and encodings, byte-for-byte determinism, the CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tcnet.cli import main as cli_main
from tcnet.data.synth.writers import SPECS, is_synthetic, write_dataset


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


TINY = {
    "isic2017": dict(n=2, size=(40, 32)),
    "isic2018": dict(n=2, size=(40, 32)),
    "ph2": dict(n=2, size=(40, 32)),
    "drive": dict(n=2, size=(40, 42)),
    "chase_db1": dict(n=3, size=(40, 38)),
}


def test_exact_layouts_and_names(tmp_path):
    trees = {}
    for d, kw in TINY.items():
        write_dataset(d, tmp_path / d, **kw)
        trees[d] = set(_tree(tmp_path / d))
        assert is_synthetic(tmp_path / d) and "tcnet synth" in (tmp_path / d / "SYNTHETIC.txt").read_text()
        trees[d].discard("SYNTHETIC.txt")  # the look-alike's label, not part of the official layout
    assert trees["isic2017"] == {
        "ISIC-2017_Training_Data/ISIC_0000000.jpg", "ISIC-2017_Training_Data/ISIC_0000001.jpg",
        "ISIC-2017_Training_Data/ISIC_0000000_superpixels.png",
        "ISIC-2017_Training_Data/ISIC-2017_Training_Data_metadata.csv",
        "ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png",
        "ISIC-2017_Training_Part1_GroundTruth/ISIC_0000001_segmentation.png",
        "ISIC-2017_Validation_Data/ISIC_0001000.jpg",
        "ISIC-2017_Validation_Data/ISIC-2017_Validation_Data_metadata.csv",
        "ISIC-2017_Validation_Part1_GroundTruth/ISIC_0001000_segmentation.png",
        "ISIC-2017_Test_v2_Data/ISIC_0012000.jpg",
        "ISIC-2017_Test_v2_Data/ISIC-2017_Test_v2_Data_metadata.csv",
        "ISIC-2017_Test_v2_Part1_GroundTruth/ISIC_0012000_segmentation.png",
    }
    assert trees["isic2018"] == {
        "ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg", "ISIC2018_Task1-2_Training_Input/ISIC_0000001.jpg",
        "ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png",
        "ISIC2018_Task1_Training_GroundTruth/ISIC_0000001_segmentation.png",
        "ISIC2018_Task1_Training_GroundTruth/LICENSE.txt", "ISIC2018_Task1_Training_GroundTruth/ATTRIBUTION.txt",
    }
    ph2 = "PH2Dataset/PH2 Dataset images"
    assert trees["ph2"] == {
        "PH2Dataset/PH2_dataset.txt",
        f"{ph2}/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp", f"{ph2}/IMD002/IMD002_lesion/IMD002_lesion.bmp",
        f"{ph2}/IMD002/IMD002_roi/IMD002_R1_Label4.bmp",
        f"{ph2}/IMD003/IMD003_Dermoscopic_Image/IMD003.bmp", f"{ph2}/IMD003/IMD003_lesion/IMD003_lesion.bmp",
    }
    assert trees["drive"] == {
        "DRIVE/training/images/21_training.tif", "DRIVE/training/images/22_training.tif",
        "DRIVE/training/1st_manual/21_manual1.gif", "DRIVE/training/1st_manual/22_manual1.gif",
        "DRIVE/training/mask/21_training_mask.gif", "DRIVE/training/mask/22_training_mask.gif",
        "DRIVE/test/images/01_test.tif", "DRIVE/test/images/02_test.tif",
        "DRIVE/test/1st_manual/01_manual1.gif", "DRIVE/test/1st_manual/02_manual1.gif",
        "DRIVE/test/2nd_manual/01_manual2.gif", "DRIVE/test/2nd_manual/02_manual2.gif",
        "DRIVE/test/mask/01_test_mask.gif", "DRIVE/test/mask/02_test_mask.gif",
    }
    assert trees["chase_db1"] == {
        f"Image_{k}{suffix}" for k in ("01L", "01R", "02L") for suffix in (".jpg", "_1stHO.png", "_2ndHO.png")
    }


def _modes(path):
    img = Image.open(path)
    return img.format, img.mode, img.size, set(np.unique(np.asarray(img)).tolist())


def test_formats_and_encodings(tmp_path):
    for d, kw in TINY.items():
        write_dataset(d, tmp_path / d, **kw)
    r = tmp_path
    fmt, mode, size, _ = _modes(r / "isic2017/ISIC-2017_Training_Data/ISIC_0000000.jpg")
    assert (fmt, mode, size) == ("JPEG", "RGB", (40, 32))
    assert not Image.open(r / "isic2017/ISIC-2017_Training_Data/ISIC_0000000.jpg").getexif()
    assert _modes(r / "isic2017/ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png")[:2] == ("PNG", "L")
    assert _modes(r / "isic2018/ISIC2018_Task1_Training_GroundTruth/ISIC_0000001_segmentation.png")[3] == {0, 255}
    sp = np.asarray(Image.open(r / "isic2017/ISIC-2017_Training_Data/ISIC_0000000_superpixels.png")).astype(int)
    assert sp.shape == (32, 40, 3) and (sp[..., 0] + (sp[..., 1] << 8) + (sp[..., 2] << 16)).max() > 1
    case = r / "ph2/PH2Dataset/PH2 Dataset images/IMD002"
    assert _modes(case / "IMD002_Dermoscopic_Image/IMD002.bmp")[:3] == ("BMP", "RGB", (40, 32))
    assert _modes(case / "IMD002_lesion/IMD002_lesion.bmp")[3] == {0, 255}
    assert _modes(r / "drive/DRIVE/training/images/21_training.tif")[:3] == ("TIFF", "RGB", (40, 42))
    assert _modes(r / "drive/DRIVE/training/1st_manual/21_manual1.gif")[:2] == ("GIF", "L")
    assert _modes(r / "drive/DRIVE/test/mask/01_test_mask.gif")[1:] == ("L", (40, 42), {0, 255})
    second = Image.open(r / "drive/DRIVE/test/2nd_manual/01_manual2.gif")
    assert second.mode == "P" and second.getpalette()[:6] == [4, 2, 4, 252, 254, 252]
    assert set(np.unique(np.asarray(second))) == {0, 1}
    assert _modes(r / "chase_db1/Image_01R.jpg")[:3] == ("JPEG", "RGB", (40, 38))
    assert _modes(r / "chase_db1/Image_01R_1stHO.png")[:2] == ("PNG", "1")


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for d, kw in TINY.items():
        a = _tree(write_dataset(d, tmp_path / "a" / d, seed=5, **kw))
        b = _tree(write_dataset(d, tmp_path / "b" / d, seed=5, **kw))
        c = _tree(write_dataset(d, tmp_path / "c" / d, seed=6, **kw))
        assert a == b, d
        images = [k for k in a if k.endswith((".jpg", ".tif", ".bmp"))]
        assert all(a[k] != c[k] for k in images), d
    # adding samples never changes the earlier ones (one generator per sample)
    small = _tree(write_dataset("isic2018", tmp_path / "s", n=2, size=(40, 32)))
    large = _tree(write_dataset("isic2018", tmp_path / "l", n=3, size=(40, 32)))
    assert all(large[k] == v for k, v in small.items() if k != "SYNTHETIC.txt")  # the label names n


def test_defaults_are_small():
    assert SPECS["isic2017"].n == 16 and SPECS["isic2017"].size == (192, 144)
    assert SPECS["chase_db1"].n == 28  # all 28, so the first-20 / last-8 convention holds
    assert SPECS["drive"].size == (141, 146) and SPECS["ph2"].size == (192, 140)
    with pytest.raises(ValueError, match="between 1 and 20"):
        write_dataset("drive", "/tmp/never-written", n=21)
    with pytest.raises(ValueError, match="valid: isic2017"):
        write_dataset("stare", "/tmp/never-written")


def test_cli_single_all_force(tmp_path, capsys):
    out = tmp_path / "drive"
    assert cli_main(["synth", "drive", "--out", str(out), "--n", "1", "--size", "32x34", "--seed", "1"]) == 0
    assert (out / "DRIVE/training/images/21_training.tif").is_file()
    first = _tree(out)
    assert cli_main(["synth", "drive", "--out", str(out), "--n", "1", "--size", "32x34"]) == 2
    assert "already holds a look-alike; pass --force" in capsys.readouterr().err
    assert _tree(out) == first  # refused: untouched
    assert cli_main(["synth", "drive", "--out", str(out), "--n", "1", "--size", "32x34", "--force"]) == 0
    assert set(_tree(out)) == set(first) and _tree(out) != first  # replaced whole (seed 0 now)
    assert [p.name for p in tmp_path.iterdir()] == ["drive"]  # no temporary folders left behind

    assert cli_main(["synth", "all", "--out", str(tmp_path / "none"), "--n", "25"]) == 2  # drive/chase: <= 20/28
    assert "drive takes 1..20" in capsys.readouterr().err and not (tmp_path / "none").exists()  # nothing written
    every = tmp_path / "data"
    assert cli_main(["synth", "all", "--out", str(every), "--n", "1", "--size", "32x32"]) == 0
    assert sorted(p.name for p in every.iterdir()) == sorted(SPECS)
    assert "not real data" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["synth", "drive", "--out", str(tmp_path / "x"), "--size", "32by32"])
    with pytest.raises(SystemExit):
        cli_main(["synth", "stare", "--out", str(tmp_path / "x")])


def test_force_never_replaces_a_folder_that_is_not_a_look_alike(tmp_path, capsys):
    """``tcnet synth drive --out data --force`` with ``data`` the parent of every dataset (or real
    data, or one's own files): it deleted every other dataset. Only an earlier look-alike is replaced."""
    every = tmp_path / "data"
    assert cli_main(["synth", "all", "--out", str(every), "--n", "1", "--size", "32x32"]) == 0
    before = _tree(every)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("mine")
    for out in (every, mine):
        for force in ([], ["--force"]):
            assert cli_main(["synth", "drive", "--out", str(out), "--n", "1", "--size", "32x34", *force]) == 2
            err = capsys.readouterr().err
            assert "not a look-alike 'tcnet synth' wrote" in err and f"e.g. {out / 'drive'}" in err, err
    assert _tree(every) == before and (mine / "thesis.txt").read_text() == "mine"
    assert cli_main(["synth", "all", "--out", str(every), "--n", "1", "--size", "32x32", "--force"]) == 0
