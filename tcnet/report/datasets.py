"""The images behind the numbers: the paper's Table 2 (dataset sizes as printed) beside our splits.

Our side comes from each evaluated run's ``scores.json`` ``splits`` (the split stage's sizes of the
run's training and evaluation datasets, recorded by evaluate), so compare needs no splits folder.
A dataset the paper's Table 2 does not list gets dashes on the paper's side; one that the paper
lists and params does not use is still shown, so a reader sees what was left out.
"""

from __future__ import annotations

import json

import pandas as pd

from tcnet.report.results import ExperimentResults
from tcnet.report.tables import DASH, DisplayTable

PAPER_PARTS = ("train", "validation", "test")
COLUMNS = ["dataset", "experiments", *(f"paper_{p}" for p in PAPER_PARTS), "images", "folds", "train", "val", "test",
           "source", "note"]


def _span(values: list[int]) -> str:
    """``16`` when every fold has the same count, else ``16-17``."""
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _ours(counts: dict) -> dict:
    folds, test = counts.get("folds") or [], int(counts.get("test", 0))
    pool = sum(folds[0]) if folds else 0  # each fold splits the same pool into train and val
    return {
        "images": pool + test, "folds": len(folds),
        "train": _span([f[0] for f in folds]) if folds else "", "val": _span([f[1] for f in folds]) if folds else "",
        "test": test, "source": counts.get("source", ""),
    }


def datasets_frame(results: list[ExperimentResults], reported: dict) -> pd.DataFrame:
    """One row per dataset the experiments use (first use first), then the paper's other datasets."""
    used: dict[str, list[str]] = {}
    seen: dict[str, set[str]] = {}  # dataset -> the distinct split records the runs carry
    for res in results:
        for pair in res.exp.data:
            for d in dict.fromkeys((pair.train, pair.eval_dataset)):
                exps = used.setdefault(d, [])
                if res.exp_id not in exps:
                    exps.append(res.exp_id)
        for run in res.runs.values():
            for d, counts in (run.scores.get("splits") or {}).items():
                seen.setdefault(d, set()).add(json.dumps(counts, sort_keys=True))
    paper = {k: v for k, v in (reported.get("datasets") or {}).items() if isinstance(v, dict)}
    rows = []
    for d in [*used, *(k for k in paper if k not in used)]:
        row = {"dataset": d, "experiments": ", ".join(used.get(d, [])) or DASH}
        row.update({f"paper_{p}": paper.get(d, {}).get(p) for p in PAPER_PARTS})
        records = sorted(seen.get(d, ()))
        if records:
            row.update(_ours(json.loads(records[0])))
        if d not in used:
            row["note"] = "not used by these experiments"
        elif not records:
            row["note"] = "no evaluated run records its split (scores.json predates it): re-run evaluate"
        elif len(records) > 1:
            row["note"] = f"the runs' evaluations saw {len(records)} different splits: re-run evaluate"
        rows.append(row)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for c in (*(f"paper_{p}" for p in PAPER_PARTS), "images", "folds", "test"):
        frame[c] = frame[c].astype("Int64")
    return frame


def datasets_table(frame: pd.DataFrame, reported: dict, data_label: str) -> DisplayTable:
    def cell(v) -> str:
        return DASH if v is None or pd.isna(v) or v == "" else str(v)

    notes = str((reported.get("datasets") or {}).get("notes", "")).strip()
    caption = (
        "Images per dataset: the paper's Table 2 as printed beside the splits our runs used "
        f"(ours: {data_label}). Ours: images = the split's train+val pool plus its test part; train/val "
        "per fold (a range where folds differ; none for a test-only set); test = the split's test part "
        "(official where the dataset has an official split; the last column says how each was made)."
        + (f" Paper: {notes}" if notes else "")
    )
    header = ["dataset", "experiments", "paper train", "paper val", "paper test", "ours: images", "folds",
              "train / fold", "val / fold", "test", "how ours were split"]
    rows = []
    for r in frame.itertuples(index=False):
        how = ". ".join(c for c in (cell(r.note), cell(r.source)) if c != DASH) or DASH
        rows.append([r.dataset, r.experiments, cell(r.paper_train), cell(r.paper_validation), cell(r.paper_test),
                     cell(r.images), cell(r.folds), cell(r.train), cell(r.val), cell(r.test), how])
    return DisplayTable(caption, header, rows)
