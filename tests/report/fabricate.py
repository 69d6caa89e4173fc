"""Fabricated evaluation outputs, in exactly the evaluate stage's format (docs/architecture.md).

``fabricate_eval(params, eval_dir)`` writes, for every run ``params`` declares,
``<eval_dir>/<exp>/<run_id>/{per_image.csv, scores.json, roc.csv, history.csv}`` and
``<eval_dir>/<exp>/summary.json``. Per-image scores share an image effect across the variants of
one (data, fold), so paired statistics see correlated scores as real ones are. ``level`` sets each
variant's mean Dice (default: rising with the variant's position, so the last -- TCNet -- is best).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from tcnet.config import RETINA_DATASETS, Params, expand_runs, to_dict

ROOT = Path(__file__).resolve().parents[2]  # the repository


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


def fabricate_eval(params: Params, eval_dir: Path, exp_ids=None, *, level=None, n_images: int = 12,
                   epochs: int = 4, skip=()) -> dict:
    """Write evaluation outputs; returns {(exp_id, run_id): scores dict}. ``skip``: run ids left out."""
    level = level or {}
    written = {}
    for exp_id in exp_ids or list(params.experiments):
        exp = params.experiment(exp_id)
        summary = {}
        for spec in expand_runs(params, exp_id):
            if spec.run_id in skip:
                continue
            ds = spec.data.eval_dataset
            idx = [v.name for v in exp.runs].index(spec.variant)
            mu = level.get((exp_id, spec.variant), 0.70 + 0.03 * idx)
            ids = [f"{ds}_{spec.fold}_{i:03d}" for i in range(n_images)]
            image_effect = _rng(exp_id, spec.data.name, spec.fold).normal(0, 0.06, n_images)
            own = _rng(exp_id, spec.run_id)
            di = np.clip(mu + image_effect + own.normal(0, 0.02, n_images), 0.05, 0.99)
            ja = di / (2 - di)
            df = pd.DataFrame({
                "id": ids,
                "AC": np.clip(0.85 + 0.5 * (di - 0.7) + own.normal(0, 0.01, n_images), 0, 1),
                "SE": np.clip(di + own.normal(0, 0.03, n_images), 0, 1),
                "SP": np.clip(0.95 + own.normal(0, 0.01, n_images), 0, 1),
                "JA": ja,
                "DI": di,
                "TJA": np.where(ja >= 0.65, ja, 0.0),
            })
            retina = ds in RETINA_DATASETS
            if retina:
                df["AUC"] = np.clip(0.9 + 0.1 * di + own.normal(0, 0.005, n_images), 0, 1)
            mean = {m: float(df[m].mean()) for m in df.columns if m != "id"}
            pooled = {m: min(1.0, v + 0.001) for m, v in mean.items()}
            auc = pooled.get("AUC", 0.9)
            k = auc / (1 - auc)
            fpr = np.linspace(0, 1, 300)
            roc = pd.DataFrame({"fpr": fpr, "tpr": 1 - (1 - fpr) ** k})
            e = np.arange(1, epochs + 1)
            hist = pd.DataFrame({
                "epoch": e, "train_loss": 1.0 / e + (1 - mu), "val_loss": 1.1 / e + (1 - mu),
                "val_DI": mu - 0.1 / e, "val_JA": (mu - 0.1 / e) / (2 - mu + 0.1 / e),
                "lr": 1e-3 / e, "seconds": 1.5, "images_per_s": 10.0,
            })
            scores = {"mean": mean, "pooled": pooled, "n": n_images, "dataset": ds, "part": spec.data.part,
                      "aggregation": exp.aggregation, "run": to_dict(spec)}
            d = Path(eval_dir) / exp_id / spec.run_id
            d.mkdir(parents=True, exist_ok=True)
            df.to_csv(d / "per_image.csv", index=False)
            if retina:  # the pooled parts evaluate writes: counts from SE/SP, histograms shifted by AUC
                fg, bg = 1000, 9000
                tp = np.rint(df.SE.to_numpy() * fg).astype(np.int64)
                tn = np.rint(df.SP.to_numpy() * bg).astype(np.int64)
                counts = np.stack([tp, bg - tn, fg - tp, tn], axis=1)
                bins = np.arange(1024)
                centre = 512 + 400 * (df.AUC.to_numpy()[:, None] - 0.9) * 10
                pos = np.rint(fg * np.exp(-0.5 * ((bins - centre) / 120) ** 2) / (120 * 2.5066)).astype(np.int32)
                neg = np.rint(bg * np.exp(-0.5 * ((bins - 300) / 120) ** 2) / (120 * 2.5066)).astype(np.int32)
                neg = np.repeat(neg[None], n_images, axis=0)
                np.savez_compressed(d / "pooled_parts.npz", ids=np.array(ids), counts=counts, pos=pos, neg=neg,
                                    layout=np.array("fabricated, 1024 bins"))
            (d / "scores.json").write_text(json.dumps(scores, indent=1))
            roc.to_csv(d / "roc.csv", index=False)
            hist.to_csv(d / "history.csv", index=False)
            summary[spec.run_id] = {"mean": mean, "pooled": pooled}
            written[(exp_id, spec.run_id)] = scores
        (Path(eval_dir) / exp_id).mkdir(parents=True, exist_ok=True)
        (Path(eval_dir) / exp_id / "summary.json").write_text(json.dumps(summary, indent=1))
    return written


ADDED_EXPERIMENT = {
    "title": "Learning rate check on PH2",
    "reproduces": "nothing in the paper (user-added)",
    "data": [{"name": "ph2", "train": "isic2017", "eval": "ph2", "part": "test"}],
    "metrics": ["AC", "JA", "DI"],
    "baseline_of": "fast",
    "runs": [
        {"name": "slow", "label": "lr 1e-4", "train": {"lr": 1.0e-4}},
        {"name": "fast", "label": "lr 1e-3", "train": {"lr": 1.0e-3}},
    ],
}


def params_with_added_experiment(src: Path, dst: Path, exp_id: str = "lr_check") -> Path:
    """``src`` params file plus one user-added experiment, edited as a user would: params only."""
    import yaml

    raw = yaml.safe_load(Path(src).read_text())
    raw["experiments"][exp_id] = ADDED_EXPERIMENT
    Path(dst).write_text(yaml.safe_dump(raw, sort_keys=False))
    return Path(dst)
