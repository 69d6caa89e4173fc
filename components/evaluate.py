"""Component ``evaluate``: one run (``tcnet.stages.evaluate.run``), its scores as KFP metrics.

It scores at the images' original sizes, so it needs raw files: it fetches from the data's git
repository and DVC remote (as ``fetch_data`` does, same revision) only the images, masks and FOVs
its run is scored on (``tcnet.data.fetch``), not the whole ``raw`` artifact of every dataset. Of
the preprocessed data it reads the manifest alone: ``index`` is the evaluated dataset's
(``preprocess``'s small output, not its arrays); ``splits`` and ``eval_splits`` are the split
outputs of the training and the evaluated dataset (the same artifact when they are one dataset).

Metrics: the experiment's headline aggregation (per-image mean for ISIC/PH2, pooled for the retina
sets) of every score; ClassificationMetrics: the pooled ROC curve from ``roc.csv``; Dataset: the
run's evaluation folder ``<experiment>/<run_id>/`` for compare.
"""

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(params_yaml: str, experiment: str, run_id: str, index: Input[Dataset], splits: Input[Dataset],
             eval_splits: Input[Dataset], model: Input[Model], eval_dir: Output[Dataset], metrics: Output[Metrics],
             roc: Output[ClassificationMetrics], repo_url: str, rev: str, remote: str = "", pipeline_run_id: str = ""):
    """``<eval_dir>/<experiment>/<run_id>/``: per-image scores, scores.json, roc.csv, masks, overlays."""
    import os, tempfile
    import pandas as pd, yaml
    from tcnet.config import Params, from_dict
    from tcnet.data.fetch import fetch_run_eval_data
    from tcnet.stages.evaluate import run
    from tcnet.utils.trees import merge_trees

    os.environ["TCNET_PIPELINE_RUN_ID"] = pipeline_run_id  # this pipeline run's MLflow parent run
    os.environ["TCNET_DATA_HASH"] = index.metadata.get("data_md5", "")  # no checkout here: fetch_data's read
    params = from_dict(Params, yaml.safe_load(params_yaml)).validate()
    raw, split_dir = tempfile.mkdtemp(), merge_trees(tempfile.mkdtemp(), splits.path, eval_splits.path, pattern="*.json")
    fetch_run_eval_data(params, experiment, run_id, index.path, split_dir, raw, repo_url, rev, remote)  # its files only
    scores = run(params, experiment, index.path, split_dir, raw, model.path, eval_dir.path, [run_id])["runs"][run_id]
    metrics.metadata.update({k: v for k, v in scores[scores["aggregation"]].items() if v is not None})
    curve = pd.read_csv(f"{eval_dir.path}/{experiment}/{run_id}/roc.csv")
    roc.log_roc_curve(curve["fpr"].tolist(), curve["tpr"].tolist(), curve["threshold"].tolist())
