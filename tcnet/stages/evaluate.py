"""Pipeline stage ``evaluate``: predict and score every run of an experiment at ORIGINAL image size.

    tcnet evaluate --params params.yaml --experiment ID [--run RUN_ID ...] [--preprocessed outputs/preprocessed]
                   [--splits outputs/splits] [--raw RAW] [--models outputs/models] [--out outputs/eval]
                   [--no-mlflow]

For each run (:func:`evaluate_run`): its checkpoint (:func:`checkpoint_choice`: ``best.pt``, or
``last.pt`` where the scored images chose best.pt's epoch) predicts the evaluation ids (``data.part``: ``val``
= the fold's validation ids, ``test`` = the split's test ids of ``data.eval``); each image is read
from the raw data, prepared exactly as in training (``transforms.prepare_image``), its foreground
probability mapped back to the image's original size (``transforms.resize_prob``), thresholded
(``prob >= evaluate.threshold``) and scored against the original-size truth mask and FOV from the
dataset adapter (``tcnet.metrics.MetricAccumulator``, AUC included). ISIC/PH2: the per-image mean is
the headline; DRIVE/CHASE_DB1: pooled over FOV pixels, AUC first.

Writes ``<out>/<experiment>/<run_id>/`` atomically: ``per_image.csv``, ``scores.json``, ``roc.csv``
(``fpr, tpr, threshold``, pooled), ``history.csv``, ``masks/<id>.png`` (0/255, original size),
``overlays/<id>.png`` (first ``evaluate.n_overlays`` images: truth contour green, prediction red),
where the experiment's aggregation is pooled (its own choice, or the retina sets' convention)
``pooled_parts.npz`` (``ids``, per-image ``counts`` tp/fp/fn/tn, ``pos``/``neg`` histograms of the FOV probabilities,
``PARTS_BINS`` equal steps and finer near 0 and 1, and their ``layout``: what compare's paired
bootstrap of the pooled scores resamples);
and ``<out>/<experiment>/summary.json`` (every run's mean and pooled scores; the pipeline's DVC metric is
``outputs/reports/metrics.json``, from compare).
"""

from __future__ import annotations

import csv
import errno
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tcnet.models.outputs import foreground_prob
from tcnet.config import EvaluateConfig, Params, RunSpec, dataset_aggregation, expand_runs, load_params, to_dict
from tcnet.tracking import EVAL_CHECKPOINT_TAG
from tcnet.utils.atomic import atomic_dir, atomic_write, check_replaceable

# Equal probability steps of the per-image histograms in pooled_parts.npz (ProbabilityHistogram:
# finer near 0 and 1). Their pooled AUC is within ~1e-6 of the exact one on simulated pixels from
# barely separated to very confident logits (tests/metrics/test_auc.py), as the 65536-step one is.
PARTS_BINS = 16384

TRUTH_COLOR = (0, 255, 0)  # green
PRED_COLOR = (255, 0, 0)  # red


def _say(msg: str) -> None:
    print(f"tcnet evaluate: {msg}", file=sys.stderr, flush=True)


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def eval_ids(spec: RunSpec, splits_dir) -> tuple[str, list[str]]:
    """``(dataset, ids)`` a run is evaluated on."""
    from tcnet.data.dataset import ids_for, load_split

    dataset = spec.data.eval_dataset
    split = load_split(splits_dir, dataset)
    ids = ids_for(split, spec.data.part, spec.fold if spec.data.part == "val" else 0)
    if not ids:
        raise ValueError(f"run {spec.run_id}: the {spec.data.part} part of {Path(splits_dir) / dataset}.json is empty; "
                         f"nothing to evaluate: give the experiment's data entry for {dataset} in params.yaml a "
                         f"part that has images (val: the split's hold-out; test: the official test set)")
    return dataset, ids


def split_counts(splits_dir, datasets) -> dict:
    """Per dataset, the sizes of its split (``<splits_dir>/<dataset>.json``): ``{"folds": [[n_train,
    n_val], ...], "test": n_test, "source": how it was made}``. Kept in ``scores.json`` so compare can
    set the images we used beside the paper's Table 2 without the splits at hand (a KFP compare task
    gets only the evaluations)."""
    from tcnet.data.dataset import load_split

    out = {}
    for d in sorted(set(datasets)):
        split = load_split(splits_dir, d)
        out[d] = {"folds": [[len(f["train"]), len(f["val"])] for f in split["folds"]], "test": len(split["test"]),
                  "source": split.get("source", "")}
    return out


def checkpoint_choice(spec: RunSpec, eval_cfg: EvaluateConfig) -> tuple[str, str]:
    """``(file name, why)`` of the checkpoint that scores a run (``evaluate.checkpoint``).

    ``best.pt`` is the epoch with the best Dice on the training dataset's ``val`` part. Scoring it
    on those same images reports a maximum over epochs, not an estimate: ``auto`` then takes
    ``last.pt`` (the fixed epoch budget, no selection on the scored images), and ``best.pt``
    wherever the scored images played no part in choosing it (a test set, another dataset).
    """
    if eval_cfg.checkpoint != "auto":
        return f"{eval_cfg.checkpoint}.pt", f"evaluate.checkpoint: {eval_cfg.checkpoint}"
    if spec.data.part == "val" and spec.data.eval_dataset == spec.data.train:
        return "last.pt", "auto: the scored val images chose best.pt's epoch, so the last epoch is scored"
    return "best.pt", f"auto: best.pt's epoch was chosen on {spec.data.train} val, not on the scored images"


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The image with the truth contour (green) and the prediction contour (red) drawn on it."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    thickness = max(1, round(max(image.shape[:2]) / 300))
    for mask, color in ((truth, TRUTH_COLOR), (pred, PRED_COLOR)):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, color, thickness)
    return out


def _roc_rows(hist) -> list[tuple[float, float, float]]:
    """Pooled ROC points ``(fpr, tpr, threshold)`` from a probability histogram (<= ROC_POINTS)."""
    from sklearn.metrics import roc_curve

    from tcnet.metrics import downsample_curve

    values, truth, weight = hist.weighted()  # each used bin's lowest probability: the thresholds
    if not (truth.any() and (~truth).any()):
        return []
    fpr, tpr, thr = roc_curve(truth, values, sample_weight=weight)
    thr = np.minimum(thr, 1.0)  # scikit-learn's first threshold is +inf
    keep_fpr, keep_tpr = downsample_curve(fpr, tpr)
    # downsample_curve keeps original points: map them back to their thresholds
    index = {(a, b): k for k, (a, b) in enumerate(zip(fpr.tolist(), tpr.tolist()))}
    return [(a, b, float(thr[index[(a, b)]])) for a, b in zip(keep_fpr.tolist(), keep_tpr.tolist())]


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)


def evaluate_run(spec: RunSpec, eval_cfg: EvaluateConfig, preprocessed_dir, splits_dir, raw_dir, model_dir, out_dir,
                 *, tracker=None, aggregation: Optional[str] = None, device: Optional[str] = None,
                 progress: bool = True, log_checkpoint: bool = False) -> dict:
    """Evaluate one run: ``model_dir`` is the run's training folder (``best.pt``, ``last.pt``), ``out_dir`` its
    evaluation folder (replaced whole). Returns what ``scores.json`` holds."""
    import torch
    from tqdm.auto import tqdm

    from tcnet.checkpoint import load_model
    from tcnet.data.adapters import Sample, load_fov, load_mask
    from tcnet.data.dataset import read_manifest
    from tcnet.data.io import read_image, write_png
    from tcnet.data.synth.writers import is_synthetic
    from tcnet.stages.preprocess import sample_checksum, sample_files
    from tcnet.data.transforms import prepare_image, resize_prob
    from tcnet.metrics import MetricAccumulator, ProbabilityHistogram
    from tcnet.training.runtime import resolve_device

    model_dir, out_dir, raw_dir = Path(model_dir), Path(out_dir), Path(raw_dir)
    ckpt_name, ckpt_why = checkpoint_choice(spec, eval_cfg)
    ckpt_path = model_dir / ckpt_name
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path} not found; run 'tcnet train --experiment {spec.experiment}' first")
    dev = resolve_device(device or spec.train.device)
    if dev.type == "cpu":
        from tcnet.utils.heap import retain_freed_memory_for_inference

        # Each forward's activations were handed back to the kernel and faulted in again by the next
        # batch. Not trimmed now; blocks above 32 MiB stay mapped and unmapped, since keeping them in
        # the heap too grew it far past the live peak for UNet3+ (tcnet/utils/heap.py;
        # `python -m benchmarks cpu_settings --only heap_infer`). Process-wide, for life.
        retain_freed_memory_for_inference()
    splits = split_counts(splits_dir, (spec.data.train, spec.data.eval_dataset))  # a bad split file fails here
    model, meta = load_model(ckpt_path, dev)
    if meta.get("config_hash") != spec.config_hash():
        raise ValueError(
            f"{ckpt_path} was trained with another configuration (config hash {meta.get('config_hash')}, "
            f"params now give {spec.config_hash()}); re-run 'tcnet train --experiment {spec.experiment}'"
        )
    size = int(meta["image_size"])
    dataset, ids = eval_ids(spec, splits_dir)
    manifest = read_manifest(preprocessed_dir)
    rows = {r.id: r for r in manifest[manifest["dataset"] == dataset].itertuples(index=False)}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise ValueError(f"{len(missing)} {dataset} id(s) of the split are not in {Path(preprocessed_dir) / 'manifest.csv'}, "
                         f"e.g. {', '.join(missing[:5])}")
    agg = aggregation or dataset_aggregation(dataset)  # ISIC/PH2 per-image mean; retina pooled
    acc = MetricAccumulator(threshold=eval_cfg.threshold, with_auc=True)
    hist = ProbabilityHistogram()
    # Pooled scores (retina): each image's confusion counts and a coarse histogram of its probabilities,
    # so that compare can bootstrap the pooled scores over images (pooled_parts.npz).
    parts: dict[str, list] = {"pos": [], "neg": []} if agg == "pooled" else {}
    n_overlays = max(0, int(eval_cfg.n_overlays))

    with atomic_dir(out_dir, owner="evaluate", own=_own_run_folder) as tmp:
        (tmp / "masks").mkdir()
        if n_overlays:
            (tmp / "overlays").mkdir()
        bar = tqdm(total=len(ids), desc=f"{spec.run_id} eval", leave=False, file=sys.stderr,
                   disable=None if progress else True, unit="img")
        bs = max(1, int(eval_cfg.batch_size))
        for start in range(0, len(ids), bs):
            chunk = ids[start:start + bs]
            images, samples = [], []
            for image_id in chunk:
                r = rows[image_id]
                sample = Sample(image_id, dataset, raw_dir / r.image_path, raw_dir / r.mask_path,
                                raw_dir / r.fov_path if r.fov_path else None, r.official_split)
                if getattr(r, "checksum", "") and sample_checksum(sample) != r.checksum:
                    files = " or ".join(map(str, sample_files(sample)))
                    raise ValueError(f"{files}: not the bytes preprocess read (manifest checksum differs): the raw "
                                     "data changed since; re-run 'tcnet preprocess'")
                rgb = read_image(sample.image)
                if rgb.shape[:2] != (int(r.orig_height), int(r.orig_width)):
                    raise ValueError(f"{sample.image}: is {rgb.shape[1]}x{rgb.shape[0]} but the manifest says "
                                     f"{r.orig_width}x{r.orig_height}; re-run 'tcnet preprocess'")
                images.append(rgb)
                samples.append(sample)
            batch = torch.cat([prepare_image(img, size) for img in images]).to(dev)
            with torch.inference_mode():
                probs = foreground_prob(model(batch)).cpu()
            for k, (image_id, rgb, sample) in enumerate(zip(chunk, images, samples)):
                h, w = rgb.shape[:2]
                prob = resize_prob(probs[k], (w, h))
                truth = load_mask(sample)
                fov = load_fov(sample, rgb)
                for path, what, arr in ((sample.mask, "mask", truth), (sample.fov or sample.image, "FOV", fov)):
                    if arr.shape != (h, w):
                        raise ValueError(f"{path}: {what} size {arr.shape[1]}x{arr.shape[0]} does not match the "
                                         f"image size {w}x{h} ({sample.image})")
                pred = prob >= eval_cfg.threshold
                acc.update(image_id, prob, truth, valid=fov, pred=pred)
                prob_in, truth_in = prob[fov], truth[fov]
                hist.add(prob_in, truth_in)
                if parts:
                    coarse = ProbabilityHistogram(PARTS_BINS)
                    coarse.add(prob_in, truth_in)
                    parts["pos"].append(coarse.pos.astype(np.int32))
                    parts["neg"].append(coarse.neg.astype(np.int32))
                if eval_cfg.save_masks:
                    write_png(tmp / "masks" / f"{image_id}.png", pred)
                if start + k < n_overlays:
                    write_png(tmp / "overlays" / f"{image_id}.png", overlay(rgb, truth, pred))
            bar.update(len(chunk))
        bar.close()

        per_image = acc.per_image()
        columns = ["id", "AC", "SE", "SP", "JA", "DI", "TJA", "AUC"]
        _write_csv(tmp / "per_image.csv", columns, [[row[c] for c in columns] for row in per_image])
        _write_csv(tmp / "roc.csv", ["fpr", "tpr", "threshold"], _roc_rows(hist))
        if parts:
            np.savez_compressed(tmp / "pooled_parts.npz", ids=np.array([r["id"] for r in per_image]),
                                counts=acc.counts(), pos=np.stack(parts["pos"]), neg=np.stack(parts["neg"]),
                                layout=np.array(ProbabilityHistogram(PARTS_BINS).layout))
        history = model_dir / "history.csv"
        if history.is_file():
            shutil.copy2(history, tmp / "history.csv")
        synthetic = sorted(d for d in {spec.data.train, dataset} if is_synthetic(raw_dir / d))
        scores = _json_safe({
            "mean": acc.mean(), "pooled": acc.pooled(), "n": len(per_image), "dataset": dataset,
            "synthetic": synthetic,  # datasets (train, eval) whose raw folder is a tcnet synth look-alike
            "splits": splits,  # the images behind the numbers
            "part": spec.data.part, "aggregation": agg, "threshold": eval_cfg.threshold,
            "run": {**to_dict(spec), "run_id": spec.run_id},
            "checkpoint": {"path": str(ckpt_path.resolve()), "name": ckpt_name, "why": ckpt_why,
                           "epoch": meta.get("epoch"),
                           "best_epoch": meta.get("best_epoch"), "config_hash": meta.get("config_hash"),
                           "image_size": size},
        })
        (tmp / "scores.json").write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n")

    headline = scores[agg]
    _say(f"{spec.run_id}: {dataset} {spec.data.part} ({len(per_image)} images, {ckpt_name}), {agg}: "
         + ", ".join(f"{k} {v:.4f}" for k, v in headline.items() if v is not None))
    if tracker is not None:
        _log_to_mlflow(tracker, spec, model_dir, out_dir, scores, per_image,
                       checkpoint=ckpt_path if log_checkpoint else None)
    return scores


def _log_to_mlflow(tracker, spec: RunSpec, model_dir: Path, out_dir: Path, scores: dict, per_image: list[dict],
                   checkpoint: Optional[Path] = None) -> None:
    """Eval metrics, tables and figures into the run's nested MLflow run (the training's run)."""
    import pandas as pd

    info = {}
    try:
        info = json.loads((model_dir / "run.json").read_text())
    except (OSError, ValueError):
        pass
    known = info.get("mlflow_run_id", "") if info.get("config_hash") == spec.config_hash() else ""
    logger = tracker.run_logger(spec.run_id, spec.config_hash(), {"tcnet.run_id": spec.run_id},
                                known_mlflow_run_id=known)
    metrics = {f"eval_{agg}_{k}": v for agg in ("mean", "pooled") for k, v in (scores[agg] or {}).items()}
    metrics["eval_n"] = scores["n"]
    logger.log_metrics(metrics, step=0)
    synthetic = scores.get("synthetic") or []  # the run's data, on the run itself (not only on its parent)
    logger.set_tags({"tcnet.data_source": f"synthetic look-alike ({', '.join(synthetic)})" if synthetic else "real",
                     "tcnet.eval_dataset": scores["dataset"], "tcnet.eval_part": scores["part"],
                     "tcnet.eval_aggregation": scores["aggregation"], "tcnet.eval_dir": str(out_dir.resolve()),
                     EVAL_CHECKPOINT_TAG: scores["checkpoint"]["name"]})
    table = pd.DataFrame(per_image)
    logger.log_table(table.astype(object).where(table.notna(), None), "eval/per_image.json")
    for name in ("scores.json", "per_image.csv", "roc.csv"):
        logger.log_artifact(out_dir / name, "eval")
    if checkpoint is not None:  # the file these metrics describe, where no shared models folder exists
        logger.log_artifact(checkpoint, "checkpoint")  # (a Kubeflow pod's): tcnet promote finds it here
    if (out_dir / "overlays").is_dir() and any((out_dir / "overlays").iterdir()):
        logger.log_artifacts(out_dir / "overlays", "eval/overlays")
    fig = _roc_figure(out_dir / "roc.csv", scores)
    if fig is not None:
        import matplotlib.pyplot as plt

        logger.log_figure(fig, "eval/roc.png")
        plt.close(fig)


def _roc_figure(roc_csv: Path, scores: dict):
    import pandas as pd

    roc = pd.read_csv(roc_csv)
    if roc.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    auc = (scores.get("pooled") or {}).get("AUC")
    ax.plot(roc["fpr"], roc["tpr"], label=f"pooled AUC {auc:.4f}" if auc is not None else "pooled")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1),
           title=f"{scores['run']['run_id']} ({scores['dataset']} {scores['part']})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


RUN_FOLDER_NAMES = ("scores.json", "per_image.csv", "roc.csv", "history.csv", "masks", "overlays", "pooled_parts.npz")


def _own_run_folder(names: set[str]) -> bool:
    """A run's evaluation written before the ``.tcnet-output`` mark: evaluate's own all the same."""
    return "scores.json" in names and names <= set(RUN_FOLDER_NAMES)


def write_summary(params: Params, experiment: str, out_dir) -> dict:
    """``<out>/<experiment>/summary.json``: mean and pooled scores of every evaluated run of the
    experiment (as found on disk, in params order)."""
    exp_dir = Path(out_dir) / experiment
    exp = params.experiment(experiment)
    runs = {}
    for spec in expand_runs(params, experiment):
        path = exp_dir / spec.run_id / "scores.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        runs[spec.run_id] = {k: s.get(k) for k in ("mean", "pooled", "n", "dataset", "part", "aggregation")}
    summary = {"experiment": experiment, "aggregation": exp.aggregation, "metrics": list(exp.metrics), "runs": runs}
    with atomic_write(exp_dir / "summary.json") as f:
        f.write(json.dumps(_json_safe(summary), indent=2, sort_keys=True) + "\n")
    return summary


def run(params: Params, experiment: str, preprocessed_dir, splits_dir, raw_dir, models_dir, out_dir,
        run_ids: Optional[Sequence[str]] = None, *, mlflow: Optional[bool] = None, progress: bool = True) -> dict:
    """Evaluate every run of ``experiment`` (or ``run_ids``): ``models_dir/<exp>/<run_id>/`` (its
    :func:`checkpoint_choice`) -> ``out_dir/<exp>/<run_id>/``; then ``out_dir/<exp>/summary.json``.
    ``raw_dir`` None: ``preprocess.raw_dir`` of ``params``."""
    from tcnet.stages.train import select_runs
    from tcnet.tracking import open_tracker, pipeline_tags, tracking_enabled
    from tcnet.training.runtime import resolve_device

    specs = select_runs(expand_runs(params, experiment), run_ids, experiment)
    raw_dir = Path(raw_dir if raw_dir is not None else params.preprocess.raw_dir)
    if not Path(models_dir).is_dir():  # a wrong path, not runs to train: say which
        raise FileNotFoundError(errno.ENOENT, "models folder not found (--models: the folder 'tcnet train --out' "
                                "wrote, default outputs/models)", str(models_dir))
    for dataset in dict.fromkeys(spec.data.eval_dataset for spec in specs):
        if not (raw_dir / dataset).is_dir():  # before any model is loaded, and naming both ways to set it
            raise FileNotFoundError(errno.ENOENT, "raw data folder not found: evaluate scores against the "
                                    "original-size images and masks there (preprocess.raw_dir in params, or --raw)",
                                    str(raw_dir / dataset))
    for spec in specs:  # every run's folder before the first model loads: none of them a user's
        check_replaceable(Path(out_dir) / experiment / spec.run_id, "evaluate", _own_run_folder)
    tracker = None
    if tracking_enabled(mlflow):
        tracker = open_tracker(experiment, params.mlflow, params=params,
                               base_tags=pipeline_tags(params, resolve_device(params.train.device)))
    results = {}
    for spec in specs:
        results[spec.run_id] = evaluate_run(
            spec, params.evaluate, preprocessed_dir, splits_dir, raw_dir,
            Path(models_dir) / experiment / spec.run_id, Path(out_dir) / experiment / spec.run_id,
            tracker=tracker, progress=progress, log_checkpoint=params.mlflow.log_models,
            # the experiment's choice (its datasets' convention unless it sets one): the headline,
            # the MLflow tag and the parts compare bootstraps pooled scores from all follow it
            aggregation=params.experiment(experiment).aggregation,
        )
    summary = write_summary(params, experiment, out_dir)
    return {"experiment": experiment, "runs": results, "summary": summary}


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    from tcnet.stages._cli import add_experiment_arguments, add_no_mlflow

    add_experiment_arguments(parser, "evaluate")
    parser.add_argument("--raw", default=None,
                        help="raw data root, original-size images and masks (default: preprocess.raw_dir from params)")
    parser.add_argument("--models", default="outputs/models", help="models root, train --out (default outputs/models)")
    parser.add_argument("--out", default="outputs/eval",
                        help="writes OUT/<experiment>/<run_id>/ (each replaced whole; one holding files evaluate did not write is "
                        "refused before any run) and OUT/<experiment>/summary.json (default outputs/eval)")
    add_no_mlflow(parser)


def main(args) -> int:
    params = load_params(args.params)
    result = run(params, args.experiment, args.preprocessed, args.splits, args.raw, args.models, args.out, args.runs,
                 mlflow=False if args.no_mlflow else None)
    _say(f"{args.experiment}: {len(result['runs'])} run(s) evaluated; summary in "
         f"{Path(args.out) / args.experiment / 'summary.json'}")
    return 0


__all__ = ["evaluate_run", "run", "write_summary", "eval_ids", "overlay", "add_arguments", "main"]
