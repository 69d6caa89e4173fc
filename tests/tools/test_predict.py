"""tcnet predict: mixed folders, original sizes, 0/255 masks, ISIC naming, skipped files, exit codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import tcnet
from tcnet.cli import main as cli
from tcnet.tools import predict

SIZE = 64


def write_checkpoint(path, seed: int = 0, size: int = SIZE):
    """A checkpoint in the documented format (architecture.md: tensors + plain data, torch.save)."""
    torch.manual_seed(seed)
    model = tcnet.create_model("tcnet_tiny", num_classes=1)
    torch.save(
        {
            "model": model.state_dict(), "model_name": "tcnet_tiny", "model_kwargs": {}, "num_classes": 1,
            "image_size": size, "epoch": 1, "optimizer": {}, "scheduler": {}, "rng": {}, "history": [],
            "run": {"experiment": "demo", "variant": "tcnet", "fold": 0}, "config_hash": "test",
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def read_png(path):
    img = Image.open(path)
    assert img.format == "PNG"
    return img.mode, np.asarray(img)


def test_output_names():
    assert predict.output_stem("ISIC_0012345") == "ISIC_0012345_segmentation"
    assert predict.output_stem("ISIC_12345") == "ISIC_12345_mask"  # not a 7-digit ISIC id
    assert predict.output_stem("patient 7") == "patient 7_mask"


def test_folder_of_mixed_images(checkpoint, tmp_path, capsys):
    import tifffile

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(rgb(80, 100, 1)).save(src / "ISIC_0000001.jpg", quality=90)
    Image.fromarray(np.dstack([rgb(70, 50, 2), np.full((70, 50), 200, np.uint8)])).save(src / "photo.png")  # RGBA
    Image.fromarray(rgb(33, 47, 3)).save(src / "scan.bmp")
    tifffile.imwrite(src / "slide.tif", np.random.default_rng(4).integers(0, 65535, (30, 41), dtype=np.uint16))
    Image.fromarray(rgb(20, 20, 5)[..., 0]).save(src / "grey.PNG")  # greyscale, upper-case suffix
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "empty.png").write_bytes(b"")
    (src / "notes.txt").write_text("not an image")
    Image.fromarray(rgb(80, 100, 6)).save(src / "ISIC_0000001_superpixels.png")  # ISIC Part 2 file: ignored

    rc = cli(["predict", "--model", str(checkpoint), "--input", str(src), "--out", str(out),
              "--probs", "--overlay", "--batch-size", "2"])
    err = capsys.readouterr().err
    assert rc == 1  # some inputs skipped, the others written
    assert "broken.jpg" in err and "empty.png" in err and "5 image(s) segmented" in err and "2 skipped" in err

    expected = {
        "ISIC_0000001_segmentation.png": (80, 100), "photo_mask.png": (70, 50), "scan_mask.png": (33, 47),
        "slide_mask.png": (30, 41), "grey_mask.png": (20, 20),
    }
    assert sorted(p.name for p in out.glob("*.png")) == sorted(expected)
    for name, shape in expected.items():
        mode, mask = read_png(out / name)
        assert mode == "L" and mask.shape == shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        stem = name.rsplit("_", 1)[0]
        assert read_png(out / "probs" / f"{stem}_prob.png")[1].shape == shape
        assert read_png(out / "overlays" / f"{stem}_overlay.png")[1].shape == shape + (3,)
    assert not list(out.rglob(".*"))  # no temporary files left behind


def test_masks_match_the_training_preprocessing(checkpoint, tmp_path, monkeypatch):
    """The written mask is resize_prob(sigmoid(model(prepare_image(img)))) >= threshold, exactly."""
    from tcnet.checkpoint import load_model
    from tcnet.data.io import read_image
    from tcnet.data.transforms import prepare_image, resize_prob
    from tcnet.utils import heap

    heap_calls = []  # on CPU, predict keeps its freed heap as evaluate does (batches of large images)
    monkeypatch.setattr(heap, "retain_freed_memory", lambda **kw: heap_calls.append(kw) or True)

    img = rgb(90, 61, 7)
    Image.fromarray(img).save(tmp_path / "a.png")
    model, meta = load_model(checkpoint, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        prob = torch.sigmoid(model(prepare_image(read_image(tmp_path / "a.png"), meta["image_size"])))[0, 0]
    p = resize_prob(prob, (61, 90))
    thr = float(np.median(p))  # a threshold that splits this image's pixels
    result = predict.run(str(checkpoint), tmp_path / "a.png", tmp_path / "out", threshold=thr, device="cpu")
    assert result.exit_code == 0 and len(result.written) == 1
    assert heap_calls == [{"trim_threshold": None, "large_blocks": False}]
    _, mask = read_png(tmp_path / "out" / "a_mask.png")
    np.testing.assert_array_equal(mask, np.where(p >= thr, 255, 0))
    assert 0 < (mask == 255).mean() < 1
    # --probs: 16-bit grey by default (what score reads for AUC), 8-bit on request
    for bits, dtype, scale in ((16, np.uint16, 65535), (8, np.uint8, 255)):
        predict.run(str(checkpoint), tmp_path / "a.png", tmp_path / f"p{bits}", probs=True, probs_bits=bits, device="cpu")
        with Image.open(tmp_path / f"p{bits}" / "probs" / "a_prob.png") as im:
            grey = np.asarray(im)
        assert grey.dtype == dtype or (bits == 16 and im.mode.startswith("I"))
        np.testing.assert_allclose(grey.astype(np.float64) / scale, p, atol=0.5 / scale + 1e-6)


def test_threshold_extremes_give_0_and_255(checkpoint, tmp_path):
    Image.fromarray(rgb(40, 30)).save(tmp_path / "x.jpg")
    assert predict.run(str(checkpoint), tmp_path / "x.jpg", tmp_path / "lo", threshold=0.0).exit_code == 0
    assert predict.run(str(checkpoint), tmp_path / "x.jpg", tmp_path / "hi", threshold=1.0).exit_code == 0
    assert (read_png(tmp_path / "lo" / "x_mask.png")[1] == 255).all()
    assert (read_png(tmp_path / "hi" / "x_mask.png")[1] == 0).all()


def test_recursive_keeps_subfolders_and_name_clashes_are_skipped(checkpoint, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(rgb(16, 24)).save(src / "a.jpg")
    Image.fromarray(rgb(16, 24)).save(src / "a.png")  # same output name as a.jpg
    Image.fromarray(rgb(25, 12)).save(src / "sub" / "b.bmp")
    flat = predict.run(str(checkpoint), src, tmp_path / "flat")
    assert [p.name for p in (tmp_path / "flat").glob("*.png")] == ["a_mask.png"]
    assert flat.exit_code == 1 and "same output name" in flat.skipped[0][1]
    deep = predict.run(str(checkpoint), src, tmp_path / "deep", recursive=True)
    assert read_png(tmp_path / "deep" / "sub" / "b_mask.png")[1].shape == (25, 12)
    assert len(deep.written) == 2


def test_usage_errors_exit_2(checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["predict", "--model", str(checkpoint), "--input", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err
    Image.fromarray(rgb(8, 8)).save(tmp_path / "x.png")
    assert cli(["predict", "--model", str(tmp_path / "missing.pt"), "--input", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # a failed start leaves no output folder
    (tmp_path / "taken").write_text("a file")  # --out cannot be a folder: said once, before any image
    assert cli(["predict", "--model", str(checkpoint), "--input", str(tmp_path / "x.png"), "--out", str(tmp_path / "taken")]) == 2
    assert f"{tmp_path / 'taken'}: exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a file"


def test_real_fundus_photograph_end_to_end(checkpoint, tmp_path):
    """skimage.data.retina(): a real fundus photograph shipped with scikit-image (no download).
    Smoke test only: the model is untrained, so no accuracy is claimed."""
    from skimage import data

    retina = data.retina()
    Image.fromarray(retina).save(tmp_path / "retina.jpg", quality=95)
    rc = cli(["predict", "--model", str(checkpoint), "--input", str(tmp_path / "retina.jpg"), "--out", str(tmp_path / "out")])
    assert rc == 0
    mode, mask = read_png(tmp_path / "out" / "retina_mask.png")
    assert mode == "L" and mask.shape == retina.shape[:2] and set(np.unique(mask)) <= {0, 255}


def test_masks_go_next_to_the_images_and_follow_exif_orientation(checkpoint, tmp_path, capsys):
    """--out may be the input folder itself; a phone photo's mask has the size the viewer shows."""
    src = tmp_path / "photos"
    src.mkdir()
    stored = Image.fromarray(rgb(40, 60, 5))  # stored 60 wide x 40 high ...
    exif = stored.getexif()
    exif[0x0112] = 6  # ... shown rotated by 90 degrees: 40 wide x 60 high
    stored.save(src / "phone.jpg", exif=exif.tobytes())
    Image.fromarray(rgb(30, 20, 6)).save(src / "plain.png")
    for _ in range(2):  # a second run does not take the first run's masks for inputs
        assert cli(["predict", "--model", str(checkpoint), "--input", str(src), "--out", str(src)]) == 0
        assert "2 image(s) segmented" in capsys.readouterr().err
    assert Image.open(src / "phone_mask.png").size == (40, 60)
    assert Image.open(src / "plain_mask.png").size == (20, 30)


def test_a_registry_uri_without_a_store_says_so_and_creates_none(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # no project here: the default sqlite store would be ./mlflow.db
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb(20, 20)).save(tmp_path / "in" / "a.png")
    rc = cli(["predict", "--model", "models:/tcnet@champion", "--input", "in", "--out", "out"])
    err = capsys.readouterr().err
    assert rc == 2 and "no MLflow store at" in err and "MLFLOW_TRACKING_URI" in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()


def test_when_every_input_is_skipped_the_exit_status_is_2(checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    rc = cli(["predict", "--model", str(checkpoint), "--input", str(src), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "0 image(s) segmented" in err and "broken.jpg" in err


def test_ground_truth_next_to_the_images_is_never_overwritten(checkpoint, tmp_path, capsys):
    """OUT = an ISIC folder: the ground truth has the prediction's name; predict skips that image,
    writes none of its files, and still replaces its own outputs on a second run."""
    src = tmp_path / "isic"
    src.mkdir()
    Image.fromarray(rgb(40, 50, 1)).save(src / "ISIC_0000001.jpg", quality=90)
    Image.fromarray(rgb(40, 50, 2)).save(src / "ISIC_0000002.jpg", quality=90)
    truth = np.zeros((40, 50), np.uint8)
    truth[10:30, 10:40] = 255
    Image.fromarray(truth).save(src / "ISIC_0000001_segmentation.png")
    before = (src / "ISIC_0000001_segmentation.png").read_bytes()
    for _ in range(2):
        rc = cli(["predict", "--model", str(checkpoint), "--input", str(src), "--out", str(src), "--overlay"])
        err = capsys.readouterr().err
        assert rc == 1 and "1 image(s) segmented" in err, err
        assert "ISIC_0000001_segmentation.png: exists and tcnet predict did not write it" in err
    assert (src / "ISIC_0000001_segmentation.png").read_bytes() == before
    assert not (src / "overlays" / "ISIC_0000001_overlay.png").exists()  # checked before anything is written
    assert predict.written_by_predict(src / "ISIC_0000002_segmentation.png")
    assert not predict.written_by_predict(src / "ISIC_0000001_segmentation.png")


def test_a_folder_of_ground_truth_names_is_refused_before_the_model_loads(tmp_path, capsys):
    """Every mask name taken by a ground truth: all inputs skipped up front, so a model that does not
    exist is never even opened (the clash is found before minutes of loading and inference)."""
    src = tmp_path / "isic"
    src.mkdir()
    Image.fromarray(rgb(40, 50, 1)).save(src / "ISIC_0000001.jpg", quality=90)
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(src / "ISIC_0000001_segmentation.png")
    rc = cli(["predict", "--model", str(tmp_path / "no-such-model.pt"), "--input", str(src), "--out", str(src)])
    err = capsys.readouterr().err
    assert rc == 2 and "0 image(s) segmented" in err, err
    assert "ISIC_0000001_segmentation.png: exists and tcnet predict did not write it" in err
    assert "no-such-model" not in err


def test_official_layouts_annotations_are_not_segmented(tmp_path):
    """CHASE_DB1 keeps both observers beside the images; PH2 its lesion and colour-region masks
    (tcnet synth writes them all, e.g. IMD002_roi/IMD002_R1_Label4.bmp)."""
    assert cli(["synth", "chase_db1", "--out", str(tmp_path / "c"), "--n", "2"]) == 0
    images = predict.collect_inputs(tmp_path / "c", recursive=True)
    assert images and all(not p.stem.endswith(("_1stHO", "_2ndHO")) for p in images)
    assert cli(["synth", "ph2", "--out", str(tmp_path / "p"), "--n", "2"]) == 0
    assert list((tmp_path / "p").rglob("*_R1_Label*.bmp"))  # what the next line must leave out is there
    found = predict.collect_inputs(tmp_path / "p", recursive=True)
    assert found and not any("Label" in p.stem or p.stem.endswith("_lesion") for p in found)


def test_probability_maps_give_score_the_auc_of_the_float_probabilities(checkpoint, tmp_path, capsys):
    """predict --probs (16-bit) -> score --probs: the AUC of the model's own float probabilities."""
    import json

    from sklearn.metrics import roc_auc_score

    from tcnet.checkpoint import load_model

    src, truth_dir = tmp_path / "in", tmp_path / "truth"
    src.mkdir()
    truth_dir.mkdir()
    images = {f"case{i}": rgb(40, 52, 20 + i) for i in range(3)}
    for name, img in images.items():
        Image.fromarray(img).save(src / f"{name}.png")
    model, meta = load_model(checkpoint, torch.device("cpu"))
    model.eval()
    probs = predict.predict_probs(model, list(images.values()), meta["image_size"], torch.device("cpu"))
    cut = float(np.median(np.concatenate([p.ravel() for p in probs])))  # truth that the ranking half-explains
    for (name, img), p in zip(images.items(), probs):
        noise = np.random.default_rng(1).random(p.shape) < 0.2
        Image.fromarray(np.where((p >= cut) ^ noise, 255, 0).astype(np.uint8)).save(truth_dir / f"{name}.png")
    assert cli(["predict", "--model", str(checkpoint), "--input", str(src), "--out", str(tmp_path / "out"), "--probs"]) == 0
    assert cli(["score", "--pred", str(tmp_path / "out"), "--truth", str(truth_dir), "--probs",
                str(tmp_path / "out" / "probs"), "--out", str(tmp_path / "s.json")]) == 0
    capsys.readouterr()
    got = json.loads((tmp_path / "s.json").read_text())["per_image"]
    for row, p in zip(sorted(got, key=lambda r: r["id"]), probs):
        truth = np.asarray(Image.open(truth_dir / f"{row['id']}.png")) > 0
        assert row["AUC"] == pytest.approx(roc_auc_score(truth.ravel(), p.ravel()), abs=2e-4)


def test_an_input_whose_outputs_cannot_all_be_written_leaves_none_behind(checkpoint, tmp_path, capsys):
    """`probs` is a file where the probs/ folder should go: every input is skipped, and no mask
    (or overlay) of a skipped input stays on disk to be scored as if it had been segmented."""
    src = tmp_path / "in"
    src.mkdir()
    for k in range(2):
        Image.fromarray(rgb(40, 50, k)).save(src / f"img{k}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "probs").write_text("in the way")
    rc = cli(["predict", "--model", str(checkpoint), "--input", str(src), "--out", str(out), "--probs", "--overlay"])
    err = capsys.readouterr().err
    assert rc == 2 and "0 image(s) segmented" in err and "2 skipped" in err, err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["probs"]


def test_a_registry_uri_uses_the_store_params_yaml_names(tmp_path, monkeypatch):
    """promote registers in params.yaml's mlflow.tracking_uri; predict and export look there too
    (before, they fell back to ./mlflow.db and did not find the champion)."""
    from tcnet.tools.model_source import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("mlflow: {tracking_uri: 'sqlite:///store/elsewhere.db'}\n")
    assert tracking_uri() == f"sqlite:///{tmp_path / 'store' / 'elsewhere.db'}"
    assert tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert tracking_uri() == "http://127.0.0.1:5001"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "params.yaml").write_text("mlflow: [not, a, mapping\n")  # unparsable: the default store
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_checkpoint_without_an_image_size_fails_before_the_output_folder_is_made(tmp_path):
    path = write_checkpoint(tmp_path / "old.pt", size=None)
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb(20, 30)).save(tmp_path / "in" / "a.png")
    with pytest.raises(ValueError, match="records no image_size"):
        predict.run(str(path), tmp_path / "in", tmp_path / "out", device="cpu", progress=False)
    assert not (tmp_path / "out").exists()
