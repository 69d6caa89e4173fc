"""Split stage: conventions per dataset, invariants, seeded stability, user split files."""

import csv
import json

import pytest

from tcnet.config import SplitConfig, n_folds
from tcnet.data.dataset import MANIFEST_COLUMNS, ids_for, load_split
from tcnet.stages import split as split_stage
from tcnet.stages.split import SplitError, holdout, run


@pytest.fixture(autouse=True)
def _no_mlflow(monkeypatch):
    """The stage's MLflow logging is tested in test_data_tracking.py; here it would write the
    project's own store (the CLI's default) and cost seconds a call."""
    monkeypatch.setenv("TCNET_NO_MLFLOW", "1")


def _write_manifest(root, datasets: dict[str, list[tuple[str, str]]]):
    """datasets: name -> [(id, official_split)]; writes a manifest.csv with the contract's columns."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        w.writeheader()
        for name, items in datasets.items():
            for k, (i, part) in enumerate(items):
                w.writerow({
                    "id": i, "dataset": name, "index": k, "official_split": part, "image_path": f"{name}/{i}.jpg",
                    "mask_path": f"{name}/{i}.png", "fov_path": "", "orig_width": 10, "orig_height": 10,
                    "fg_fraction": 0.1, "fov_pixels": 100, "fg_pixels": 10, "checksum": "0" * 64,
                })
    return root


def _isic2017():
    return ([(f"ISIC_{i:07d}", "train") for i in range(20)] + [(f"ISIC_{i:07d}", "val") for i in range(20, 26)]
            + [(f"ISIC_{i:07d}", "test") for i in range(26, 34)])


def _isic2018(with_test=True):
    items = [(f"ISIC_{i:07d}", "train") for i in range(23)]
    if with_test:
        items += [(f"ISIC_{i:07d}", "val") for i in range(100, 103)]
        items += [(f"ISIC_{i:07d}", "test") for i in range(200, 205)]
    return items


def _drive():
    return [(f"{i:02d}_training", "train") for i in range(21, 41)] + [(f"{i:02d}_test", "test") for i in range(1, 21)]


def _chase():
    return [(f"Image_{k:02d}{e}", "") for k in range(1, 15) for e in "LR"]


def _ph2():
    return [(f"IMD{i:03d}", "") for i in (2, 3, 4, 6, 8, 9)]


@pytest.fixture()
def pre(tmp_path):
    return _write_manifest(tmp_path / "pre", {
        "isic2017": _isic2017(), "isic2018": _isic2018(), "ph2": _ph2(), "drive": _drive(), "chase_db1": _chase(),
    })


CFG = SplitConfig(seed=7, cv_folds=3, retina_val_fraction=0.2)


def _parts(split):
    return [set(f["train"]) | set(f["val"]) for f in split["folds"]], set(split["test"])


def test_every_dataset_follows_its_convention(pre, tmp_path):
    out = tmp_path / "splits"
    summary = run(CFG, pre, out)
    assert set(summary) == {"isic2017", "isic2018", "ph2", "drive", "chase_db1"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["isic2017.json", "isic2018.json", "ph2.json", "drive.json", "chase_db1.json", "params.yaml", ".tcnet-output"])

    s = load_split(out, "isic2017")
    assert set(s) == {"dataset", "source", "seed", "folds", "test"} and s["seed"] == 7
    assert s["folds"] == [{"train": sorted(i for i, p in _isic2017() if p == "train"),
                           "val": sorted(i for i, p in _isic2017() if p == "val")}]
    assert s["test"] == sorted(i for i, p in _isic2017() if p == "test")

    s = load_split(out, "isic2018")
    assert len(s["folds"]) == n_folds("isic2018", CFG) == 3
    train = sorted(i for i, p in _isic2018() if p == "train")
    vals = [v for f in s["folds"] for v in f["val"]]
    assert sorted(vals) == train  # every training image is validation exactly once
    for f in s["folds"]:
        assert sorted(f["train"] + f["val"]) == train and not set(f["train"]) & set(f["val"])
    # the official test set alone (the leaderboard's); the 3 official validation images in no part
    assert s["test"] == sorted(i for i, p in _isic2018() if p == "test")
    assert not {i for i, p in _isic2018() if p == "val"} & {i for f in s["folds"] for part in f.values() for i in part}
    assert "KFold" in s["source"] and "random_state=7" in s["source"]
    assert "the 5 official test images; the 3 official validation images are not used" in s["source"]

    s = load_split(out, "ph2")
    assert s["folds"] == [] and s["test"] == sorted(i for i, _ in _ph2())

    s = load_split(out, "drive")
    (fold,) = s["folds"]
    assert s["test"] == [f"{i:02d}_test" for i in range(1, 21)]
    assert len(fold["val"]) == 4 and len(fold["train"]) == 16
    assert sorted(fold["train"] + fold["val"]) == [f"{i:02d}_training" for i in range(21, 41)]

    s = load_split(out, "chase_db1")
    ids = sorted(i for i, _ in _chase())
    (fold,) = s["folds"]
    assert s["test"] == ids[20:] and s["test"][0] == "Image_11L"
    assert sorted(fold["train"] + fold["val"]) == ids[:20] and len(fold["val"]) == 4
    assert "first 20 / last 8" in s["source"] and "Image_11L" in s["source"]


def test_no_id_in_two_parts_and_counts_match_n_folds(pre, tmp_path):
    run(CFG, pre, tmp_path / "s")
    for d in ("isic2017", "isic2018", "ph2", "drive", "chase_db1"):
        s = load_split(tmp_path / "s", d)
        if d != "ph2":
            assert len(s["folds"]) == n_folds(d, CFG)
        for f in s["folds"]:
            assert not set(f["train"]) & set(f["val"])
            assert not (set(f["train"]) | set(f["val"])) & set(s["test"])
            assert f["train"] == sorted(f["train"]) and f["val"] == sorted(f["val"])


def test_seeded_and_byte_stable(pre, tmp_path):
    run(CFG, pre, tmp_path / "a")
    run(CFG, pre, tmp_path / "b")
    for d in ("isic2018", "drive", "chase_db1", "isic2017", "ph2"):
        assert (tmp_path / "a" / f"{d}.json").read_bytes() == (tmp_path / "b" / f"{d}.json").read_bytes()
    run(SplitConfig(seed=8, cv_folds=3), pre, tmp_path / "c")
    a, c = load_split(tmp_path / "a", "isic2018"), load_split(tmp_path / "c", "isic2018")
    assert a["folds"] != c["folds"]
    # the drive hold-out depends on the seed only through the legacy RandomState stream
    assert holdout(["a", "b", "c", "d", "e"], 0.4, 1) == holdout(["e", "d", "c", "b", "a"], 0.4, 1)


def test_isic2018_without_official_test_has_empty_test(tmp_path):
    pre = _write_manifest(tmp_path / "pre", {"isic2018": _isic2018(with_test=False)})
    run(CFG, pre, tmp_path / "s")
    s = load_split(tmp_path / "s", "isic2018")
    assert s["test"] == [] and len(s["folds"]) == 3


def test_isic2018_without_an_official_training_split_puts_every_image_in_the_folds(tmp_path):
    """No official split (e.g. a user manifest): no image may be both in a fold and in the test list."""
    items = [(i, "") for i, _ in _isic2018()]
    pre = _write_manifest(tmp_path / "pre", {"isic2018": items})
    run(CFG, pre, tmp_path / "s")
    s = load_split(tmp_path / "s", "isic2018")
    assert s["test"] == [] and sorted(v for f in s["folds"] for v in f["val"]) == sorted(i for i, _ in items)
    assert "no official split found" in s["source"] and "not used" not in s["source"]


def test_more_folds_than_training_images_names_the_setting(tmp_path):
    pre = _write_manifest(tmp_path / "pre", {"isic2018": _isic2018()})
    n = sum(1 for _, part in _isic2018() if part == "train")
    with pytest.raises(SplitError, match=rf"{n + 1}-fold cross-validation \(split.cv_folds\) needs at least "
                                         rf"{n + 1} training images, found {n}; lower split.cv_folds"):
        run(SplitConfig(cv_folds=n + 1), pre, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_zero_val_fraction_gives_empty_val(tmp_path):
    pre = _write_manifest(tmp_path / "pre", {"drive": _drive()})
    run(SplitConfig(retina_val_fraction=0.0), pre, tmp_path / "s")
    (fold,) = load_split(tmp_path / "s", "drive")["folds"]
    assert fold["val"] == [] and len(fold["train"]) == 20


def test_subset_run_keeps_other_datasets(pre, tmp_path):
    out = tmp_path / "s"
    run(CFG, pre, out)
    before = (out / "isic2017.json").read_bytes()
    run(SplitConfig(seed=1, cv_folds=3), pre, out, datasets=["drive"])
    assert (out / "isic2017.json").read_bytes() == before
    assert load_split(out, "drive")["seed"] == 1
    with pytest.raises(SplitError, match="not in"):
        run(CFG, _write_manifest(tmp_path / "p2", {"drive": _drive()}), out, datasets=["ph2"])


def test_user_split_file_is_validated_and_copied_as_is(pre, tmp_path):
    ids = sorted(i for i, _ in _chase())
    user = {"dataset": "chase_db1", "source": "reverse protocol (Fraz 2012): 8 train / 20 test", "seed": 0,
            "folds": [{"train": ids[20:26], "val": ids[26:]}], "test": ids[:20]}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(user))  # compact formatting: must be kept byte for byte
    run(SplitConfig(split_files={"chase_db1": str(path)}), pre, tmp_path / "s")
    assert (tmp_path / "s" / "chase_db1.json").read_bytes() == path.read_bytes()
    s = load_split(tmp_path / "s", "chase_db1")
    assert ids_for(s, "test") == ids[:20] and ids_for(s, "train", 0) == ids[20:26]


@pytest.mark.parametrize("mutate, message", [
    (lambda u: u["folds"][0]["val"].append(u["folds"][0]["train"][0]), "both train and val"),
    (lambda u: u["folds"][0]["train"].append("Image_99L"), "not in the preprocessed"),
    (lambda u: u.pop("test"), "shape"),
    (lambda u: u["folds"].append({"train": ["Image_01L"], "val": []}), "expected 1"),
    (lambda u: u["folds"][0].update(train="Image_01L"), "list of id strings"),
    (lambda u: u["test"].append(u["folds"][0]["train"][0]), "both train and test"),
    (lambda u: u.update(dataset="drive"), "not of 'chase_db1'"),
])
def test_bad_user_split_is_rejected(pre, tmp_path, mutate, message):
    ids = sorted(i for i, _ in _chase())
    user = {"dataset": "chase_db1", "folds": [{"train": ids[:16], "val": ids[16:20]}], "test": ids[20:]}
    mutate(user)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(user))
    out = tmp_path / "s"
    with pytest.raises(SplitError, match=message):
        run(SplitConfig(split_files={"chase_db1": str(path)}), pre, out)
    assert not out.exists() and not list(tmp_path.glob(".s.tmp-*"))


def test_user_split_not_json_or_missing(pre, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SplitError, match="not valid JSON"):
        run(SplitConfig(split_files={"ph2": str(bad)}), pre, tmp_path / "s")
    with pytest.raises(SplitError, match="not found"):
        run(SplitConfig(split_files={"ph2": str(tmp_path / "nope.json")}), pre, tmp_path / "s")


def test_a_user_split_carried_by_a_kubeflow_pipeline_is_used_byte_for_byte(pre, tmp_path, monkeypatch):
    """Kubeflow: the pods have no checkout, so the compiled pipeline carries each split file
    (pack_split_file, read at compile time); the split task validates and writes those bytes (CRLF,
    BOM and all) as `tcnet split` writes the file, and refuses a pipeline compiled from other params."""
    from tcnet.stages.split import pack_split_file

    ids = sorted(i for i, _ in _chase())
    doc = {"dataset": "chase_db1", "folds": [{"train": ids[20:26], "val": ids[26:]}], "test": ids[:20]}
    raw = b"\xef\xbb\xbf" + json.dumps(doc, indent=1).replace("\n", "\r\n").encode()
    monkeypatch.chdir(tmp_path)  # paths are relative to where the pipeline is compiled, as for `tcnet split`
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "chase.json").write_bytes(raw)
    packed = pack_split_file("chase_db1", "splits/chase.json")
    assert "\n" not in packed and len(packed) < len(raw)
    (tmp_path / "splits" / "chase.json").unlink()  # the pod has no checkout
    cfg = SplitConfig(split_files={"chase_db1": "splits/chase.json"})
    run(cfg, pre, tmp_path / "s", embedded=packed)
    assert (tmp_path / "s" / "chase_db1.json").read_bytes() == raw
    with pytest.raises(SplitError, match=r"splits/chase.json is not in this Kubeflow pipeline .*compile the pipeline again"):
        run(cfg, pre, tmp_path / "s2", embedded="")
    with pytest.raises(SplitError, match=r"splits/other.json, but the pipeline was compiled with splits/chase.json"):
        run(SplitConfig(split_files={"chase_db1": "splits/other.json"}), pre, tmp_path / "s3", embedded=packed)
    with pytest.raises(SplitError, match=r"compiled with a split file for chase_db1 \(splits/chase.json\), which the run"):
        run(SplitConfig(), pre, tmp_path / "s4", embedded=packed)
    doc["folds"][0]["val"].append("Image_99L")
    (tmp_path / "splits" / "chase.json").write_text(json.dumps(doc))
    bad = pack_split_file("chase_db1", "splits/chase.json")
    with pytest.raises(SplitError, match=r"splits/chase.json \(read into the pipeline when it was compiled\): 1 id"):
        run(cfg, pre, tmp_path / "s5", embedded=bad)
    assert not any((tmp_path / f"s{i}").exists() for i in range(2, 6))


def test_a_split_file_a_pipeline_cannot_carry_is_refused_when_it_is_compiled(tmp_path, monkeypatch):
    import random

    from tcnet.stages.split import check_packed_total, pack_split_file

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SplitError, match=r"split.split_files.drive: nope.json not found \(relative to "):
        pack_split_file("drive", "nope.json")
    (tmp_path / "bad.json").write_text("{folds: [")
    with pytest.raises(SplitError, match=r"bad.json: not valid JSON"):
        pack_split_file("drive", "bad.json")
    rng = random.Random(0)  # ids that do not compress: over what a task input can carry
    big = {"folds": [{"train": [f"{rng.getrandbits(128):032x}" for _ in range(4000)], "val": []}], "test": []}
    (tmp_path / "big.json").write_text(json.dumps(big))
    with pytest.raises(SplitError, match=r"big.json is \d+ KiB, \d+ KiB compressed: over the 78 KiB a Kubeflow task"):
        pack_split_file("drive", "big.json")
    check_packed_total({"drive": "x" * 50_000, "chase_db1": "y" * 30_000})  # 80,000: just fits
    with pytest.raises(SplitError, match=r"split.split_files: 78 KiB compressed in all \(drive 49 KiB, chase_db1 29 KiB\)"):
        check_packed_total({"drive": "x" * 50_000, "chase_db1": "y" * 30_001})


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tcnet preprocess"):
        run(CFG, tmp_path / "nothing", tmp_path / "s")


def test_isic2017_without_validation_is_a_clear_error(tmp_path):
    pre = _write_manifest(tmp_path / "pre", {"isic2017": [("ISIC_0000001", "train"), ("ISIC_0000002", "test")]})
    with pytest.raises(SplitError, match="validation"):
        run(CFG, pre, tmp_path / "s")


def test_ids_for_errors():
    s = {"dataset": "ph2", "folds": [], "test": ["a"]}
    assert ids_for(s, "test") == ["a"]
    with pytest.raises(ValueError, match="test-only"):
        ids_for(s, "train")
    with pytest.raises(ValueError, match="valid: train, val, test"):
        ids_for(s, "validation")
    with pytest.raises(ValueError, match="fold 3"):
        ids_for({"folds": [{"train": ["a"], "val": []}], "test": []}, "val", 3)


def test_cli(pre, tmp_path, capsys):
    from tcnet.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("split: {seed: 3, cv_folds: 2}\npreprocess: {datasets: [isic2018]}\n")
    assert main(["split", "--params", str(params), "--preprocessed", str(pre), "--out", str(tmp_path / "s"),
                 "--datasets", "isic2018"]) == 0
    assert len(load_split(tmp_path / "s", "isic2018")["folds"]) == 2
    assert "isic2018" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    params.write_text(f"split: {{split_files: {{ph2: {bad}}}}}\n")
    assert main(["split", "--params", str(params), "--preprocessed", str(pre), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and str(bad) in err and "Traceback" not in err
    assert split_stage.dumps({"a": [1]}) == '{\n  "a": [\n    1\n  ]\n}\n'


@pytest.mark.parametrize("damage, message", [
    (lambda t: "", "not a readable manifest (No columns to parse from file)"),
    (lambda t: t.replace(",isic2017,1,", ",isic2017,x,", 1), "line 3, column index: 'x' is not an integer"),
    (lambda t: t.replace(",ph2,", ",ph3,", 1), "unknown dataset 'ph3'; valid: isic2017, isic2018, ph2, drive, chase_db1"),
    (lambda t: t[:60] + "\udcf0\udcff" + t[60:], "not a readable manifest ('utf-8' codec can't decode"),
])
def test_a_damaged_manifest_is_named_with_what_is_wrong(pre, tmp_path, capsys, damage, message):
    """A hand-edited or truncated manifest.csv: the file, the line and the value, and how to mend it
    (it gave pandas' 'invalid literal for int()' or 'tuple.index(x): x not in tuple')."""
    from tcnet.cli import main

    path = pre / "manifest.csv"
    path.write_bytes(damage(path.read_text()).encode("utf-8", "surrogateescape"))
    params = tmp_path / "params.yaml"
    params.write_text("split: {seed: 3}\n")
    assert main(["split", "--params", str(params), "--preprocessed", str(pre), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: " in err and message in err and "tcnet preprocess' again" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_out_at_the_input_or_at_a_users_folder_is_refused_and_both_kept(pre, tmp_path, capsys):
    """``--out`` was replaced whole: pointed at the preprocessed folder it deleted the arrays it had
    just read; pointed at a folder of one's own files, the files."""
    from tcnet.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("split: {seed: 3}\n")
    before = sorted(p.name for p in pre.iterdir())
    assert main(["split", "--params", str(params), "--preprocessed", str(pre), "--out", str(pre)]) == 2
    assert "did not write (manifest.csv)" in capsys.readouterr().err
    assert sorted(p.name for p in pre.iterdir()) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    assert main(["split", "--params", str(params), "--preprocessed", str(pre), "--out", str(mine)]) == 2
    assert f"{mine}: already holds files that 'tcnet split' did not write (thesis.tex)" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "x"
    out = tmp_path / "s"  # its own output: written again, in place
    for _ in range(2):
        assert main(["split", "--params", str(params), "--preprocessed", str(pre), "--out", str(out)]) == 0
    assert (out / ".tcnet-output").read_text().startswith("tcnet split\n")


def test_chase_split_is_by_child_so_a_missing_image_moves_no_other(tmp_path):
    ids = [i for i, _ in _chase() if i != "Image_14R"]  # a partial unzip
    pre = _write_manifest(tmp_path / "pre", {"chase_db1": [(i, "") for i in ids]})
    run(CFG, pre, tmp_path / "s")
    s = load_split(tmp_path / "s", "chase_db1")
    assert s["test"] == ["Image_11L", "Image_11R", "Image_12L", "Image_12R", "Image_13L", "Image_13R", "Image_14L"]
    assert sorted(s["folds"][0]["train"] + s["folds"][0]["val"]) == sorted(ids)[:20]
    assert "1 of the 28 images missing: Image_14R" in s["source"]

    only_train = [(f"Image_{k:02d}{e}", "") for k in range(1, 6) for e in "LR"]
    pre = _write_manifest(tmp_path / "pre2", {"chase_db1": only_train})
    run(CFG, pre, tmp_path / "s2")  # a small look-alike of the first children: the 20:8 proportion, said so
    s = load_split(tmp_path / "s2", "chase_db1")
    assert s["test"] == ["Image_04R", "Image_05L", "Image_05R"] and "no image of children 11-14" in s["source"]

    renamed = [(f"chase_{k:02d}", "") for k in range(14)]  # not the official names: the 20:8 proportion
    pre = _write_manifest(tmp_path / "pre3", {"chase_db1": renamed})
    run(CFG, pre, tmp_path / "s3")
    assert load_split(tmp_path / "s3", "chase_db1")["test"] == [f"chase_{k:02d}" for k in range(10, 14)]


def test_under_dvc_a_user_split_file_must_be_a_dependency_of_the_stage(tmp_path, monkeypatch):
    from tcnet.stages.split import SplitError, check_dvc_tracks

    (tmp_path / "splits").mkdir()
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  split:\n    cmd: tcnet split\n    deps:\n      - splits\n      - ${preprocess.raw_dir}\n")
    monkeypatch.chdir(tmp_path)  # DVC runs a stage's command in the project root
    # DVC_ROOT names the original project even where the stage runs in a temporary copy (dvc exp run --temp)
    env = {"DVC_ROOT": "/somewhere/else", "DVC_STAGE": "split"}
    check_dvc_tracks({"drive": "splits/drive.json"}, env)  # under a dependency folder: fine
    check_dvc_tracks({"drive": str(tmp_path / "splits" / "sub" / "drive.json")}, env)
    with pytest.raises(SplitError, match=r"split.split_files.drive: elsewhere/drive.json is not a dependency of the 'split' stage"):
        check_dvc_tracks({"drive": "elsewhere/drive.json"}, env)
    with pytest.raises(SplitError, match="not a dependency"):
        check_dvc_tracks({"drive": "splits_old/drive.json"}, env)  # a sibling with the same prefix is not under it
    check_dvc_tracks({"drive": "elsewhere/drive.json"}, {})  # not under dvc repro: any path
    check_dvc_tracks({}, env)
    monkeypatch.chdir(tmp_path / "splits")  # a stage run elsewhere (its wdir): no dvc.yaml here, no judgement
    check_dvc_tracks({"drive": "elsewhere/drive.json"}, env)
