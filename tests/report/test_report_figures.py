"""Which figures an experiment gets is inferred from what its runs vary."""

import pandas as pd
import pytest

from fabricate import ROOT, fabricate_eval, params_with_added_experiment
from tcnet.config import load_params
from tcnet.report.figures import ROC_POINTS, figure_kinds, write_plot_data
from tcnet.report.results import load_experiment, varying_settings


@pytest.mark.parametrize("exp_id, kinds", [
    ("loss_sweep", ["sweep"]),
    ("attention", ["curves", "bars"]),
    ("ph2_transfer", ["bars"]),
    ("isic2018_cv", ["bars"]),
    ("ablation", ["curves", "roc", "bars"]),
])
def test_figure_kinds_of_the_papers_experiments(params, eval_dir, exp_id, kinds):
    assert figure_kinds(load_experiment(params, exp_id, eval_dir)) == kinds


def test_varying_settings(params, eval_dir):
    res = load_experiment(params, "attention", eval_dir)
    assert set(varying_settings(res)) == {"model.attention_placement", "model.deep_supervision"}
    res = load_experiment(params, "loss_sweep", eval_dir)
    assert varying_settings(res) == {"train.loss.ce_weight": [0.1, 0.3, 0.5, 0.7, 0.9]}


def test_an_added_experiment_gets_the_default_bar_chart(tmp_path):
    p = load_params(params_with_added_experiment(ROOT / "params.yaml", tmp_path / "params.yaml"))
    fabricate_eval(p, tmp_path / "eval", ["lr_check"])
    res = load_experiment(p, "lr_check", tmp_path / "eval")
    assert varying_settings(res) == {"train.lr": [1e-4, 1e-3]}  # two values: not a sweep
    assert figure_kinds(res) == ["bars"]


def test_plot_files_for_dvc(params, eval_dir, tmp_path):
    write_plot_data(load_experiment(params, "ablation", eval_dir), tmp_path)
    roc = sorted((tmp_path / "roc").glob("ablation__*.csv"))
    curves = sorted((tmp_path / "curves").glob("ablation__*.csv"))
    assert len(roc) == len(curves) == 8
    r = pd.read_csv(roc[0])
    assert list(r.columns) == ["fpr", "tpr"] and len(r) <= ROC_POINTS
    assert r.fpr.iloc[0] == 0 and r.fpr.iloc[-1] == 1  # the ends survive the thinning
    assert list(pd.read_csv(curves[0]).columns) == ["epoch", "train_loss", "val_loss"]


def test_error_bars_say_what_the_caption_says(params, tmp_path):
    """Cross-validation: sd over folds; a variant left with one fold gets no bar (not a bootstrap CI
    the caption does not name). One split: the bootstrap CI of the per-image mean."""
    from tcnet.report.figures import bar_errors

    fabricate_eval(params, tmp_path, ["isic2018_cv", "ph2_transfer"],
                   skip=("isic2018__unetpp__fold1", "isic2018__unetpp__fold2"))
    cv = load_experiment(params, "isic2018_cv", tmp_path)
    lo, hi = bar_errors(cv, "isic2018", "tcnet", "DI", 200, 0.95, 0)
    assert lo == hi > 0
    assert bar_errors(cv, "isic2018", "unetpp", "DI", 200, 0.95, 0) == (0.0, 0.0)
    one = load_experiment(params, "ph2_transfer", tmp_path)
    lo, hi = bar_errors(one, "ph2", "tcnet", "DI", 200, 0.95, 0)
    assert lo > 0 and hi > 0
