"""The images-per-dataset table: the paper's Table 2 beside the splits the evaluated runs record."""

from __future__ import annotations

import copy

from tcnet.report.datasets import datasets_frame, datasets_table
from tcnet.report.results import load_experiment

ISIC2018 = {"folds": [[16, 8], [16, 8], [17, 7]], "test": 0, "source": "seeded 3-fold cross-validation"}
PH2 = {"folds": [], "test": 12, "source": "all images are a test set"}
ISIC2017 = {"folds": [[16, 8]], "test": 8, "source": "official split"}


def _results(params, eval_dir, exp_ids, splits):
    """The fabricated evaluations, each run's scores.json given the ``splits`` record evaluate writes."""
    out = []
    for exp_id in exp_ids:
        res = copy.deepcopy(load_experiment(params, exp_id, eval_dir))
        for run in res.runs.values():
            pair = run.spec.data
            run.scores["splits"] = {d: splits[d] for d in {pair.train, pair.eval_dataset}}
        out.append(res)
    return out


def test_paper_counts_beside_ours(params, eval_dir, reported):
    splits = {"isic2018": ISIC2018, "isic2017": ISIC2017, "ph2": PH2}
    frame = datasets_frame(_results(params, eval_dir, ["ph2_transfer", "isic2018_cv"], splits), reported)
    rows = frame.set_index("dataset")
    assert list(rows.index) == ["isic2017", "ph2", "isic2018"]  # first use first
    assert rows.loc["isic2018", ["paper_train", "paper_validation", "paper_test"]].tolist() == [1865, 635, 0]
    assert rows.loc["ph2", "paper_test"] == 220  # reported.yaml, as printed
    # ours: the pool of a fold plus the test part; folds counted; per-fold sizes as a range where they differ
    assert rows.loc["isic2018", ["images", "folds", "train", "val", "test"]].tolist() == [24, 3, "16-17", "7-8", 0]
    assert rows.loc["ph2", ["images", "folds", "test"]].tolist() == [12, 0, 12]
    assert rows.loc["ph2", ["train", "val"]].tolist() == ["", ""]  # a test-only set has no folds, not folds of 0
    assert rows.loc["isic2017", "experiments"] == "ph2_transfer" and rows.loc["isic2017", "images"] == 32
    assert frame.note.isna().all()
    table = datasets_table(frame, reported, "synthetic look-alike")
    assert "synthetic look-alike" in table.caption and "2594" in table.caption  # the paper's note on its counts
    assert table.rows[2][:5] == ["isic2018", "isic2018_cv", "1865", "635", "0"]
    assert table.rows[1][7:10] == ["—", "—", "12"]  # ph2: no train/val per fold, 12 test images


def test_unused_and_unrecorded_datasets_say_so(params, eval_dir, reported):
    """A dataset of the paper's Table 2 that no experiment uses, and runs whose scores.json predates
    the splits record, get a note, never invented numbers."""
    res = [copy.deepcopy(load_experiment(params, "isic2018_cv", eval_dir))]
    for run in res[0].runs.values():
        run.scores.pop("splits", None)
    rows = datasets_frame(res, reported).set_index("dataset")
    assert rows.loc["isic2018", "note"].endswith("re-run evaluate") and rows.loc["isic2018"].isna()["images"]
    assert rows.loc["ph2", "note"] == "not used by these experiments" and rows.loc["ph2", "paper_test"] == 220


def test_runs_that_saw_different_splits_are_flagged(params, eval_dir, reported):
    res = _results(params, eval_dir, ["isic2018_cv"], {"isic2018": ISIC2018})
    first = next(iter(res[0].runs.values()))
    first.scores["splits"] = {"isic2018": {**ISIC2018, "folds": [[20, 4]] * 3}}
    rows = datasets_frame(res, reported).set_index("dataset")
    assert "2 different splits" in rows.loc["isic2018", "note"]
