"""The compare stage on fabricated evaluation outputs: tables, statistics, report, MLflow, CLI."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))  # the shared fabricator

from fabricate import ROOT, fabricate_eval, params_with_added_experiment  # noqa: E402
from tcnet.cli import main as cli_main  # noqa: E402
from tcnet.config import ConfigError, load_params  # noqa: E402
from tcnet.stages import compare  # noqa: E402

REPORTED = ROOT / "paper" / "reported.yaml"
DVC = shutil.which("dvc", path=str(Path(sys.executable).parent))
EXPERIMENTS = ("loss_sweep", "attention", "ph2_transfer", "isic2018_cv", "ablation")


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """Every experiment of params.yaml fabricated and compared once (no MLflow)."""
    tmp = tmp_path_factory.mktemp("compare")
    params = load_params(ROOT / "params.yaml")
    written = fabricate_eval(params, tmp / "eval")
    result = compare.run(params, tmp / "eval", REPORTED, tmp / "reports", log_mlflow=False)
    return params, written, result, tmp / "reports"


def table(out: Path, exp_id: str) -> pd.DataFrame:
    return pd.read_csv(out / exp_id / "table.csv", keep_default_na=False, na_values=[""])


def cell(t: pd.DataFrame, **where) -> pd.Series:
    rows = t
    for k, v in where.items():
        rows = rows[rows[k] == v]
    assert len(rows) == 1, (where, rows)
    return rows.iloc[0]


def fold_values(written, exp_id, variant, metric, aggregation="mean", scale=100.0, data=None):
    """What the fabricator wrote for one variant, fold by fold (in the table's unit)."""
    return [s[aggregation][metric] * scale for (e, run_id), s in sorted(written.items())
            if e == exp_id and run_id.split("__")[1] == variant and data in (None, run_id.split("__")[0])]


def test_every_experiment_gets_its_outputs(done):
    params, _, result, out = done
    assert set(result["experiments"]) == set(EXPERIMENTS)
    for exp_id in EXPERIMENTS:
        for f in ("table.md", "table.csv", "stats.csv", "comparisons.csv"):
            assert (out / exp_id / f).is_file(), (exp_id, f)
        md = (out / exp_id / "table.md").read_text()
        assert "Data: synthetic look-alike" in md  # in the caption and the header, every table
        assert result["experiments"][exp_id]["figures"], exp_id
        assert all(Path(f).is_file() for f in result["experiments"][exp_id]["figures"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data_label"] == "synthetic look-alike" and set(EXPERIMENTS) <= set(metrics)
    datasets = pd.read_csv(out / "datasets.csv")  # Table 2's counts beside ours, in the report too
    assert set(datasets.dataset) == {"isic2017", "ph2", "isic2018", "drive", "chase_db1"}
    assert "Images per dataset" in (out / "datasets.md").read_text() and 'id="datasets"' in (out / "report.html").read_text()
    assert sorted(p.name for p in (out / "loss_sweep").glob("*.png")) == ["fig_sweep.png"]
    assert {p.name for p in (out / "ablation").glob("*.png")} == {
        "fig_train_loss.png", "fig_val_loss.png", "fig_roc.png", "fig_bars.png"}
    assert len(list((out / "plots" / "curves").glob("*.csv"))) == 40  # every run, for `dvc plots`


def test_isic2018_cv_cells_mean_sd_over_folds_and_paper_delta(done):
    _, written, _, out = done
    t = table(out, "isic2018_cv")
    ja = fold_values(written, "isic2018_cv", "tcnet", "JA")
    assert len(ja) == 3  # the demo profile's three folds
    c = cell(t, kind="value", variant="tcnet", metric="JA")
    assert c.paper == 90.334
    assert math.isclose(c.ours, statistics.mean(ja)) and math.isclose(c.ours_sd, statistics.stdev(ja))
    assert math.isclose(c["diff"], c.ours - 90.334)
    assert (c.unit, c.aggregation, c.data_label, c.n_folds) == ("percent", "mean", "synthetic look-alike", 3)
    assert cell(t, kind="value", variant="tcnet", metric="AC").paper == 93.457
    assert cell(t, kind="value", variant="tcnet", metric="DI").paper == 91.773
    assert math.isnan(cell(t, kind="value", variant="unetpp", metric="JA").paper)  # never invented
    d = cell(t, kind="delta", variant="unetpp", metric="JA")
    ours = statistics.mean(ja) - statistics.mean(fold_values(written, "isic2018_cv", "unetpp", "JA"))
    assert d.paper == 7.64 and d.label == "TCNet - UNet++"
    assert math.isclose(d.ours, ours) and math.isclose(d["diff"], ours - 7.64)
    md = (out / "isic2018_cv" / "table.md").read_text()
    results = md.split("## Results", 1)[1].split("\n## ", 1)[0]  # the other aggregation's table has a TCNet row too
    (row,) = [line for line in results.splitlines() if line.startswith("| TCNet |")]
    assert f"| {c.ours:.3f} ± {c.ours_sd:.3f} | 90.334 | {c['diff']:+.3f} |" in row
    assert "mean ± sd over folds" in md and "mean of per-image scores" in md


def test_ablation_table3_cells_are_pooled_fractions(done):
    _, written, _, out = done
    t = table(out, "ablation")
    c = cell(t, kind="value", data="drive", variant="lkm_etm_mfm", metric="AUC")
    (auc,) = fold_values(written, "ablation", "lkm_etm_mfm", "AUC", "pooled", 1.0, data="drive")
    assert c.paper == 0.989 and c.unit == "fraction" and c.aggregation == "pooled"
    assert math.isclose(c.ours, auc) and math.isclose(c["diff"], auc - 0.989)
    assert cell(t, kind="value", data="chase_db1", variant="lkm", metric="AC").paper == 0.958
    assert cell(t, kind="value", data="chase_db1", variant="lkm", metric="AC").metric_name == "Acc"
    assert t[t.kind == "value"].paper.notna().sum() == 32  # every Table 3 cell, nothing more
    md = (out / "ablation" / "table.md").read_text()
    assert "| Data | Variant | Acc | Acc paper | Acc Δ | Sen |" in md
    assert "pooled" in md


def test_ph2_relative_claims_only_and_ssls_reported_elsewhere(done):
    _, written, _, out = done
    t = table(out, "ph2_transfer")
    assert t[t.kind == "value"].paper.isna().all()  # the paper gives no absolute PH2 number
    d = cell(t, kind="delta", variant="unet", metric="JA")
    (tcnet_ja,), (unet_ja,) = (fold_values(written, "ph2_transfer", v, "JA") for v in ("tcnet", "unet"))
    ours = tcnet_ja - unet_ja
    assert d.paper == 2.475 and math.isclose(d.ours, ours) and math.isclose(d["diff"], ours - 2.475)
    assert cell(t, kind="delta", variant="unet", metric="DI").paper == 3.96
    ssls = t[t.label.str.contains("SSLS")]
    assert len(ssls) == 1 and ssls.iloc[0].kind == "delta" and ssls.iloc[0].paper == 11.153
    assert math.isnan(ssls.iloc[0].ours)
    md = (out / "ph2_transfer" / "table.md").read_text()
    assert "| SSLS (reported elsewhere) | — | — | — |" in md
    assert "TCNet - SSLS AC = +11.153" in md


def test_paired_statistics_equal_scipy(done):
    params, _, _, out = done
    s = pd.read_csv(out / "isic2018_cv" / "stats.csv")
    assert set(s.other) == {"unetpp", "deeplabv3p", "cenet", "deeplabv3"} and set(s.metric) == {"DI", "JA", "AC"}
    assert set(s.level) == {"images", "folds"}  # cross-validation: both levels
    row = s[(s.other == "unetpp") & (s.metric == "DI") & (s.level == "images")].iloc[0]
    ev = out.parent / "eval" / "isic2018_cv"
    a, b = [], []
    for k in range(3):  # per fold joined on id, folds concatenated
        pa = pd.read_csv(ev / f"isic2018__tcnet__fold{k}" / "per_image.csv")
        pb = pd.read_csv(ev / f"isic2018__unetpp__fold{k}" / "per_image.csv")
        j = pa.merge(pb, on="id")
        a += list(j.DI_x * 100)
        b += list(j.DI_y * 100)
    d = np.array(a) - np.array(b)
    assert row.n == row.n_nonzero == len(d) == 36
    assert math.isclose(row.p_value, stats.wilcoxon(d).pvalue)
    assert math.isclose(row.mean_diff, d.mean())
    assert row.ci_low < d.mean() < row.ci_high
    assert row.n_resamples == params.compare.bootstrap and row.confidence == params.compare.confidence
    # the fold level: a t-test over the three folds' mean differences
    fold = s[(s.other == "unetpp") & (s.metric == "DI") & (s.level == "folds")].iloc[0]
    per_fold = d.reshape(3, 12).mean(axis=1)
    t = stats.ttest_1samp(per_fold, 0.0)
    assert fold.n == 3 and math.isclose(fold.p_value, t.pvalue) and math.isclose(fold.statistic, t.statistic)
    assert math.isclose(fold.ci_low, t.confidence_interval(0.95).low)
    # Holm over the four baselines of one (data, metric, level)
    images = s[(s.metric == "DI") & (s.level == "images")]
    order = images.p_value.sort_values()
    assert math.isclose(images.loc[order.index[0], "p_holm"], min(1.0, 4 * order.iloc[0]))
    assert (images.p_holm >= images.p_value).all()
    assert pd.read_csv(out / "loss_sweep" / "stats.csv").empty  # no baseline_of: no paired tests
    # comparisons.csv: every comparison the report used, the verdicts' too, traceable to numbers
    sweep = pd.read_csv(out / "loss_sweep" / "comparisons.csv")
    assert len(sweep) and set(sweep.level) == {"images"} and sweep.primary.all()
    c = pd.read_csv(out / "isic2018_cv" / "comparisons.csv")
    row = c[(c.a == "tcnet") & (c.b == "unetpp") & (c.metric == "DI") & (c.level == "folds")].iloc[0]
    assert bool(row.primary) and math.isclose(row.ci_low, fold.ci_low) and math.isclose(row.mean_diff, fold.mean_diff)
    assert not c[(c.level == "images") & (c.a == "tcnet")].primary.any()  # with folds the verdicts rest on them


def test_statistics_are_seeded(done, tmp_path):
    params, _, _, out = done
    again = compare.run(params, out.parent / "eval", REPORTED, tmp_path / "r", ["ph2_transfer"], log_mlflow=False)
    first = pd.read_csv(out / "ph2_transfer" / "stats.csv")
    pd.testing.assert_frame_equal(first, pd.read_csv(Path(again["out_dir"]) / "ph2_transfer" / "stats.csv"))


class _Html(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.ids, self.text = [], set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if "id" in a:
            self.ids.add(a["id"])

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_is_self_contained(done):
    _, _, result, out = done
    p = _Html()
    p.feed(Path(result["report"]).read_text())
    p.close()
    assert {f"exp-{e}" for e in EXPERIMENTS} <= p.ids and "data-label" in p.ids
    n_figures = sum(len(r["figures"]) for r in result["experiments"].values())
    assert len(p.imgs) == n_figures >= 5 + 4
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    text = " ".join(p.text)
    assert "Data: synthetic look-alike. These numbers are NOT from the paper's datasets" in text
    for needle in ("Reproduces", "Fig. 1", "Table 3", "Paired statistics", "Ours vs the paper", "93.457"):
        assert needle in text, needle


def test_added_experiment_appears_in_tables_and_report(tmp_path):
    params = load_params(params_with_added_experiment(ROOT / "params.yaml", tmp_path / "params.yaml"))
    fabricate_eval(params, tmp_path / "eval", ["ph2_transfer", "lr_check"])
    result = compare.run(params, tmp_path / "eval", REPORTED, tmp_path / "out", log_mlflow=False)
    out = tmp_path / "out"
    assert (out / "lr_check" / "fig_bars.png").is_file()
    t = table(out, "lr_check")
    assert set(t.variant) == {"slow", "fast"} and t.paper.isna().all()
    assert len(pd.read_csv(out / "lr_check" / "stats.csv")) == 3  # baseline_of: fast vs slow, DI, JA and AC
    html = (out / "report.html").read_text()
    assert 'id="exp-lr_check"' in html and "Learning rate check on PH2" in html
    assert "lr_check" in json.loads((out / "metrics.json").read_text())
    # experiments declared but never evaluated still get a table and a section that says so
    assert result["experiments"]["loss_sweep"]["missing_runs"] == [
        f"isic2017__lam{x}__fold0" for x in ("0.1", "0.3", "0.5", "0.7", "0.9")]
    assert "not evaluated" in (out / "loss_sweep" / "table.md").read_text()


@pytest.mark.skipif(not (ROOT / "dvc.yaml").is_file() or DVC is None, reason="needs the project's dvc.yaml and dvc")
def test_added_experiment_gets_dvc_stages_upstream_of_compare(tmp_path):
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params_with_added_experiment(ROOT / "params.yaml", tmp_path / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True)
    # `dvc repro --dry` stops at the first missing output in a fresh tree; `dvc dag` shows the graph
    dag = subprocess.run([DVC, "dag", "--md", "compare"], cwd=tmp_path, check=True, capture_output=True, text=True)
    assert "train@lr_check" in dag.stdout and "evaluate@lr_check" in dag.stdout


@pytest.mark.skipif(not (ROOT / "dvc.yaml").is_file() or DVC is None, reason="needs the project's dvc.yaml and dvc")
def test_dvc_plots_are_titled_with_the_data_label(done, tmp_path):
    """`dvc plots show` draws compare's curves under a title naming their data (params' data_label)."""
    import yaml

    params, _, _, out = done
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["compare"]["data_label"] = "my look-alike"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    shutil.copytree(out / "plots", tmp_path / "outputs" / "reports" / "plots")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True)
    shown = json.loads(subprocess.run([DVC, "plots", "show", "--json"], cwd=tmp_path, check=True, capture_output=True,
                                      text=True).stdout)
    titles = {plot["content"]["title"]["text"] for plots in shown["data"].values() for plot in plots}
    assert titles == {"Loss per epoch (data: my look-alike)", "ROC (data: my look-alike)"}


def test_missing_runs_are_reported_not_invented(tmp_path):
    params = load_params(ROOT / "params.yaml")
    fabricate_eval(params, tmp_path / "eval", ["isic2018_cv"], skip={"isic2018__cenet__fold1"})
    result = compare.run(params, tmp_path / "eval", REPORTED, tmp_path / "out", ["isic2018_cv"], log_mlflow=False)
    assert result["experiments"]["isic2018_cv"]["missing_runs"] == ["isic2018__cenet__fold1"]
    t = table(tmp_path / "out", "isic2018_cv")
    c = cell(t, kind="value", variant="cenet", metric="JA")
    assert c.n_folds == 2 and "fold(s) [1] not evaluated" in c.note
    # evaluation outputs of a run whose declaration changed since are flagged, not silently used
    scores = tmp_path / "eval" / "isic2018_cv" / "isic2018__unetpp__fold0" / "scores.json"
    s = json.loads(scores.read_text())
    s["run"]["model"] = "unet"
    s["run"]["train"]["device"] = "cuda"  # runtime-only: not a reason to re-evaluate
    scores.write_text(json.dumps(s))
    compare.run(params, tmp_path / "eval", REPORTED, tmp_path / "out", ["isic2018_cv"], log_mlflow=False)
    note = cell(table(tmp_path / "out", "isic2018_cv"), kind="value", variant="unetpp", metric="JA").note
    assert note == "stale evaluation (model: params 'unetpp', evaluated 'unet'): re-run evaluate"


def test_explicit_experiment_without_outputs_is_an_error(tmp_path):
    params = load_params(ROOT / "params.yaml")
    (tmp_path / "eval").mkdir()
    with pytest.raises(FileNotFoundError, match="dvc repro evaluate@ablation"):
        compare.run(params, tmp_path / "eval", REPORTED, tmp_path / "out", ["ablation"], log_mlflow=False)
    with pytest.raises(ConfigError, match="did you mean 'ablation'"):
        compare.run(params, tmp_path / "eval", REPORTED, tmp_path / "out", ["ablatoin"], log_mlflow=False)


def test_a_wrong_eval_folder_is_an_error_not_an_empty_report(tmp_path):
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(FileNotFoundError, match=r"nope: no such folder"):
        compare.run(params, tmp_path / "nope", REPORTED, tmp_path / "out", log_mlflow=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no evaluation outputs for any experiment"):
        compare.run(params, tmp_path / "empty", REPORTED, tmp_path / "out", log_mlflow=False)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_subset_run_keeps_the_other_experiments(done, tmp_path):
    params, _, _, out = done
    copy = tmp_path / "reports"
    shutil.copytree(out, copy)
    compare.run(params, out.parent / "eval", REPORTED, copy, ["ph2_transfer"], log_mlflow=False)
    assert (copy / "ablation" / "table.md").is_file() and (copy / "ph2_transfer" / "fig_bars.png").is_file()
    assert set(json.loads((copy / "metrics.json").read_text())) == {"data_label", "profile", "ph2_transfer"}


def test_a_report_written_before_the_mark_is_still_compares_own_but_a_users_folder_is_not(done, tmp_path):
    """``dvc repro evaluate@X`` then ``tcnet compare --experiment X`` (README) over outputs/reports of
    a version without the ``.tcnet-output`` mark: still compare's (its own names, metrics.json among
    them). The same names beside a file of the user's: refused, nothing replaced."""
    params, _, _, out = done
    legacy = tmp_path / "reports"
    shutil.copytree(out, legacy)
    for mark in legacy.rglob(".tcnet-output"):  # the report's and each experiment folder's
        mark.unlink()
    compare.run(params, out.parent / "eval", REPORTED, legacy, ["ph2_transfer"], log_mlflow=False)
    assert (legacy / ".tcnet-output").read_text().startswith("tcnet compare\n")
    (legacy / ".tcnet-output").unlink()
    compare.run(params, out.parent / "eval", REPORTED, legacy, log_mlflow=False)  # whole
    (legacy / ".tcnet-output").unlink()
    (legacy / "thesis.tex").write_text("mine")
    for experiments in (["ph2_transfer"], None):
        with pytest.raises(FileExistsError, match="'tcnet compare' did not write"):
            compare.run(params, out.parent / "eval", REPORTED, legacy, experiments, log_mlflow=False)
    assert (legacy / "thesis.tex").read_text() == "mine"


def test_cli(done, tmp_path, capsys):
    _, _, _, out = done
    args = ["compare", "--params", str(ROOT / "params.yaml"), "--eval", str(out.parent / "eval"),
            "--reported", str(REPORTED), "--out", str(tmp_path / "o"), "--no-mlflow"]
    assert cli_main(args + ["--experiment", "ph2_transfer", "--experiment", "isic2018_cv"]) == 0
    printed = capsys.readouterr().out
    assert "ph2_transfer:" in printed and "[data: synthetic look-alike]" in printed
    assert (tmp_path / "o" / "isic2018_cv" / "table.md").is_file()
    assert cli_main(args + ["--experiment", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err


def test_mlflow_tables_and_figures_on_the_parent_run(done, tmp_path, monkeypatch):
    from tcnet.tracking import get_or_create_experiment, init_store

    params, _, _, out = done
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TCNET_PIPELINE_RUN_ID", "p1")  # as the Kubeflow component sets it
    client = init_store(uri)
    exp_id = get_or_create_experiment(client, "tcnet/ph2_transfer", uri)  # artifacts beside the db
    parent = client.create_run(exp_id, tags={"tcnet.pipeline_run": "p1"}).info.run_id
    client.create_run(exp_id, tags={"tcnet.pipeline_run": "p2"})  # a later pipeline run's parent
    client.create_run(exp_id, tags={"tcnet.pipeline_run": "p1", "mlflow.parentRunId": parent, "tcnet.run_id": "x"})

    result = compare.run(params, out.parent / "eval", REPORTED, tmp_path / "r", ["ph2_transfer"], log_mlflow=True)
    assert result["experiments"]["ph2_transfer"]["mlflow_run_id"] == parent  # this pipeline run's parent
    assert len(client.search_runs([exp_id])) == 3  # nothing created
    run = client.get_run(parent)
    assert run.data.tags["tcnet.data_label"] == "synthetic look-alike"
    names = {a.path for a in client.list_artifacts(parent, "compare")}
    assert {"compare/table.md", "compare/table.csv", "compare/stats.csv", "compare/fig_bars.png",
            "compare/table.json", "compare/stats.json"} <= names
    logged = json.loads(Path(client.download_artifacts(parent, "compare/table.json", str(tmp_path))).read_text())
    labels = {row[logged["columns"].index("label")] for row in logged["data"]}
    assert labels >= {"TCNet", "UNet", "TCNet - SSLS"}
    tcnet_ja = table(out, "ph2_transfer").pipe(lambda t: cell(t, kind="value", variant="tcnet", metric="JA")).ours
    assert math.isclose(run.data.metrics["compare.ph2.tcnet.JA"], tcnet_ja)
    # the paper's stated difference beside ours, for the UI's compare view (no absolute paper value on PH2)
    assert run.data.metrics["paper.ph2.delta.TCNet - UNet.JA"] == 2.475
    assert "compare.ph2.delta.TCNet - UNet.JA" in run.data.metrics and "paper.ph2.tcnet.JA" not in run.data.metrics
    assert run.data.metrics["paper.ph2.delta.TCNet - SSLS.AC"] == 11.153  # SSLS: the paper's number, none of ours
    assert "compare.ph2.delta.TCNet - SSLS.AC" not in run.data.metrics and "compare/comparisons.csv" in names


def test_holms_caption_counts_the_comparisons_it_adjusted_over(tmp_path):
    """A variant with no evaluated run has no p value: Holm skips it, and the caption says so."""
    params = load_params(ROOT / "params.yaml")
    fabricate_eval(params, tmp_path / "eval", ["isic2018_cv"], skip={f"isic2018__cenet__fold{k}" for k in range(3)})
    compare.run(params, tmp_path / "eval", REPORTED, tmp_path / "out", ["isic2018_cv"], log_mlflow=False)
    stats = pd.read_csv(tmp_path / "out" / "isic2018_cv" / "stats.csv")
    tested = stats[stats.p_value.notna() & (stats.metric == "DI") & (stats.level == "folds")]
    others = params.experiment("isic2018_cv").runs
    assert len(tested) == len(others) - 2  # not the baseline, not cenet
    assert (f"adjusted over the {len(tested)} comparison(s) of a metric that have a p value"
            in (tmp_path / "out" / "isic2018_cv" / "table.md").read_text())


def test_every_table_and_csv_names_its_data(done):
    params, _, _, out = done
    label = params.compare.data_label
    for exp_id in EXPERIMENTS:
        md = (out / exp_id / "table.md").read_text()
        other = md.split("## The other aggregation", 1)[1].split("\n\n", 2)[1]  # its caption
        assert f"Data: {label}." in other, exp_id
        for name in ("table.csv", "stats.csv", "comparisons.csv"):
            frame = pd.read_csv(out / exp_id / name)
            assert frame.empty or set(frame.data_label) == {label}, (exp_id, name)
    # ISIC data has no field of view: the pooled caption does not claim one
    assert "where the dataset has one" in (out / "ph2_transfer" / "table.md").read_text()


def test_numbers_from_a_look_alike_are_never_labelled_real(tmp_path):
    """evaluate records a tcnet synth look-alike (SYNTHETIC.txt) in scores.json; compare then refuses 'real'."""
    from dataclasses import replace

    params = load_params(ROOT / "params.yaml")
    real = replace(params, compare=replace(params.compare, data_label="real"))
    fabricate_eval(params, tmp_path / "eval", ["ph2_transfer"])
    compare.run(real, tmp_path / "eval", REPORTED, tmp_path / "out", ["ph2_transfer"], log_mlflow=False)  # none marked
    scores = next((tmp_path / "eval" / "ph2_transfer").glob("*/scores.json"))
    scores.write_text(json.dumps({**json.loads(scores.read_text()), "synthetic": ["isic2017", "ph2"]}))
    with pytest.raises(ValueError, match=r"data_label is 'real', but .*scores.json was computed on synthetic "
                                         r"look-alikes \(isic2017, ph2"):
        compare.run(real, tmp_path / "eval", REPORTED, tmp_path / "out2", ["ph2_transfer"], log_mlflow=False)
    assert not (tmp_path / "out2").exists()
    compare.run(params, tmp_path / "eval", REPORTED, tmp_path / "out3", ["ph2_transfer"], log_mlflow=False)


def test_the_papers_qualitative_claims_get_a_verdict(tmp_path):
    """reported.yaml `claims`: TCNet ahead of every baseline (PH2, ISIC 2018), every attention placement
    ahead of none; the notes rank ours and say agrees / disagrees / not resolved from the paired CIs."""
    params = load_params(ROOT / "params.yaml")
    # U-Net well ahead of TCNet on PH2; placement 'none' ahead of every other placement
    level = {("ph2_transfer", "unet"): 0.95, ("attention", "none_ds0"): 0.97, ("attention", "none_ds1"): 0.97}
    fabricate_eval(params, tmp_path / "eval", ["ph2_transfer", "attention", "isic2018_cv"], level=level)
    compare.run(params, tmp_path / "eval", REPORTED, tmp_path / "out", ["ph2_transfer", "attention", "isic2018_cv"],
                log_mlflow=False)
    ph2 = (tmp_path / "out" / "ph2_transfer" / "table.md").read_text()
    assert ("the paper finds TCNet ahead of every other method on JA, AC, DI; ours (paired images): JA rank 2 of 4, "
            "clearly behind UNet;") in ph2
    assert "(disagrees)" in ph2 and "Verdicts on the paper's claims below" in ph2
    isic = (tmp_path / "out" / "isic2018_cv" / "table.md").read_text()  # default levels: TCNet (last) best
    assert "ours (per-fold mean differences): AC rank 1 of 5; DI rank 1 of 5 (agrees)" in isic
    att = (tmp_path / "out" / "attention" / "table.md").read_text()
    assert "the paper finds every attention placement better than none" in att
    assert "0 of 3 clearly ahead (disagrees)" in att
    # the claim's sentence names placements the Fig. 2/3 grid does not run: the verdict says it covers fewer
    assert "also names placements not run here (skip, upsample); the verdict covers the placements above only" in att


def test_a_user_added_experiment_is_not_judged_against_the_papers_claims(tmp_path):
    """An experiment without paper_key (a user's own λ next to a U-Net) gets no paper claims: the paper's
    best λ is about its own sweep. In a paper experiment whose variants also differ in model, the
    setting's claim is not judged either (a model difference is not the setting's)."""
    from tcnet.config import Params, from_dict, to_dict

    raw = to_dict(load_params(ROOT / "params.yaml"))
    mine = dict(raw["experiments"]["loss_sweep"], paper_key="", title="my sweep", reproduces="nothing in the paper")
    mine["runs"] = [{"name": "lam0.2", "train": {"loss": {"ce_weight": 0.2}}}, {"name": "unet", "model": "unet"}]
    mixed = dict(raw["experiments"]["loss_sweep"])
    mixed["runs"] = [{"name": "lam0.2", "train": {"loss": {"ce_weight": 0.2}}}, {"name": "unet", "model": "unet"}]
    ph2 = dict(raw["experiments"]["ph2_transfer"], paper_key="")  # its id alone still names the paper's
    raw["experiments"] = {"mine": mine, "loss_sweep": mixed, "ph2_transfer": ph2}
    params = from_dict(Params, raw).validate()
    exps = ["mine", "loss_sweep", "ph2_transfer"]
    fabricate_eval(params, tmp_path / "eval", exps, level={("mine", "unet"): 0.95, ("loss_sweep", "unet"): 0.95})
    compare.run(params, tmp_path / "eval", REPORTED, tmp_path / "out", exps, log_mlflow=False)
    assert "the paper finds TCNet ahead of every other method" in (tmp_path / "out" / "ph2_transfer" / "table.md").read_text()
    table_mine = (tmp_path / "out" / "mine" / "table.md").read_text()
    assert "Not one of the paper's experiments (no paper_key in params.yaml)" in table_mine
    assert "the paper finds" not in table_mine and "agrees" not in table_mine
    table_mixed = (tmp_path / "out" / "loss_sweep" / "table.md").read_text()
    assert "isic2017: the paper's best λ is not judged here: the variants differ in model as well" in table_mixed
    assert "the paper finds the best λ" not in table_mixed


def test_a_claim_is_not_resolved_by_a_difference_inside_the_noise_or_a_missing_run(tmp_path):
    params = load_params(ROOT / "params.yaml")
    # UNet3+ at TCNet's level (0.79): TCNet still ranks first, by less than the noise
    fabricate_eval(params, tmp_path / "eval", ["ph2_transfer"], level={("ph2_transfer", "unet3p"): 0.79})
    compare.run(params, tmp_path / "eval", REPORTED, tmp_path / "out", ["ph2_transfer"], log_mlflow=False)
    ph2 = (tmp_path / "out" / "ph2_transfer" / "table.md").read_text()
    assert "JA rank 1 of 4, CI holds 0 against UNet3+;" in ph2 and "(not resolved: a CI holds 0)" in ph2
    # a baseline not evaluated: TCNet's first place is over the runs that exist, and the verdict says so
    fabricate_eval(params, tmp_path / "eval2", ["ph2_transfer"], skip=("ph2__unet3p__fold0",))
    compare.run(params, tmp_path / "eval2", REPORTED, tmp_path / "out2", ["ph2_transfer"], log_mlflow=False)
    ph2 = (tmp_path / "out2" / "ph2_transfer" / "table.md").read_text()
    assert "JA rank 1 of 3" in ph2 and "(not resolved: UNet3+ not evaluated)" in ph2


def test_a_comparison_without_paired_scores_says_so(tmp_path):
    """A run whose per_image.csv lacks a claimed metric (an older evaluation): 'no paired per-image
    scores', never 'CI holds 0'; an empty group of variants compares to nothing instead of failing."""
    from tcnet.report.pairing import Inference, compare_groups
    from tcnet.report.results import load_experiment

    params = load_params(ROOT / "params.yaml")
    fabricate_eval(params, tmp_path / "eval", ["ph2_transfer"])
    f = tmp_path / "eval" / "ph2_transfer" / "ph2__unet__fold0" / "per_image.csv"
    pd.read_csv(f).drop(columns=["AC"]).to_csv(f, index=False)
    compare.run(params, tmp_path / "eval", REPORTED, tmp_path / "out", ["ph2_transfer"], log_mlflow=False)
    ph2 = (tmp_path / "out" / "ph2_transfer" / "table.md").read_text()
    assert "no paired per-image scores against UNet" in ph2
    assert "(not resolved: no paired per-image scores (or no spread) to test)" in ph2
    res = load_experiment(params, "ph2_transfer", tmp_path / "eval")
    c = compare_groups(res, "ph2", [], ["unet"], "DI", Inference(100, 0.95, 0))
    assert not c.has_interval and c.direction == 0 and c.text() == "no paired scores"


def test_pooled_scores_get_a_paired_bootstrap_and_table_3s_claim_a_verdict(tmp_path):
    """Table 3 is pooled: the full model against each ablated one as differences of pooled scores over
    the same images, with a paired bootstrap CI over images; the paper's claim gets a verdict."""
    from tcnet.report.pairing import pooled_score

    params = load_params(ROOT / "params.yaml")
    fabricate_eval(params, tmp_path / "eval", ["ablation"])
    compare.run(params, tmp_path / "eval", REPORTED, tmp_path / "out", ["ablation"], log_mlflow=False)
    s = pd.read_csv(tmp_path / "out" / "ablation" / "stats.csv")
    assert set(s.metric) == {"AC", "SE", "SP", "AUC"} and set(s.level) == {"images"}
    assert set(s.other) == {"lkm", "lkm_etm", "lkm_mfm"} and s.test.str.contains("pooled").all()
    row = s[(s.data == "drive") & (s.other == "lkm") & (s.metric == "AUC")].iloc[0]
    ev = tmp_path / "eval" / "ablation"
    a, b = (np.load(ev / f"drive__{v}__fold0" / "pooled_parts.npz") for v in ("lkm_etm_mfm", "lkm"))
    want = (pooled_score("AUC", a["counts"].sum(0), a["pos"].sum(0), a["neg"].sum(0))
            - pooled_score("AUC", b["counts"].sum(0), b["pos"].sum(0), b["neg"].sum(0)))
    assert math.isclose(row.mean_diff, float(want), rel_tol=1e-9)
    assert row.ci_low <= row.mean_diff <= row.ci_high and row.n == 12 and np.isnan(row.p_value)
    md = (tmp_path / "out" / "ablation" / "table.md").read_text()
    assert "drive: the paper finds LKM+ETM+MFM ahead of LKM on Acc, Sp, AUC; ours, LKM+ETM+MFM minus LKM: Acc " in md
    assert re.search(r"chase_db1: the paper finds .* \((agrees|disagrees|not resolved)", md)


def test_pooled_parts_binned_by_an_older_tcnet_are_refused(tmp_path):
    """Histograms without the layout tie every probability within 1/16383 of 0 or 1: their AUC
    differences would not be the table's, so compare asks for the evaluation again."""
    from tcnet.report.results import EvalOutputError

    params = load_params(ROOT / "params.yaml")
    fabricate_eval(params, tmp_path / "eval", ["ablation"])
    parts = tmp_path / "eval" / "ablation" / "drive__lkm__fold0" / "pooled_parts.npz"
    with np.load(parts) as z:
        old = {k: z[k] for k in z.files if k != "layout"}
    np.savez_compressed(parts, **old)
    with pytest.raises(EvalOutputError, match=r"drive__lkm__fold0/pooled_parts\.npz: written by an older tcnet.*"
                                              r"re-run the evaluate stage"):
        compare.run(params, tmp_path / "eval", REPORTED, tmp_path / "out", ["ablation"], log_mlflow=False)


def test_a_claim_is_not_resolved_on_too_few_images(tmp_path, monkeypatch):
    """TCNet far ahead on five images (fewer than MIN_NONZERO): every bootstrap interval clears 0, so
    without the rule the claim would "agree"; with it the verdict is "not resolved" and says why."""
    from tcnet.report import pairing
    from tcnet.report.pairing import Inference, compare_groups
    from tcnet.report.results import load_experiment
    from tcnet.report.stats import MIN_NONZERO

    params = load_params(ROOT / "params.yaml")
    level = {("ph2_transfer", v): 0.5 for v in ("fcn", "unet", "unet3p")} | {("ph2_transfer", "tcnet"): 0.95}
    fabricate_eval(params, tmp_path / "eval", ["ph2_transfer"], n_images=5, level=level)

    def verdict(out: str) -> str:
        compare.run(params, tmp_path / "eval", REPORTED, tmp_path / out, ["ph2_transfer"], log_mlflow=False)
        text = (tmp_path / out / "ph2_transfer" / "table.md").read_text()
        return next(line for line in text.splitlines() if "the paper finds TCNet ahead of every other method" in line)

    with monkeypatch.context() as m:
        m.setattr(pairing, "MIN_NONZERO", 0)  # the rule off: the intervals alone
        assert verdict("off").endswith("(agrees).")
    line = verdict("on")
    assert line.endswith(f"(not resolved: only 5 of 5 images with a non-zero difference (at least {MIN_NONZERO} needed)).")
    assert "too few images to judge against FCN, UNet, UNet3+" in line
    res = load_experiment(params, "ph2_transfer", tmp_path / "eval")
    c = compare_groups(res, "ph2", ["tcnet"], ["fcn"], "DI", Inference(200, 0.95, 0))
    assert c.has_interval and c.images.ci_low > 0 and c.direction == 0  # the interval clears 0; 5 images do not judge
    fabricate_eval(params, tmp_path / "eval6", ["ph2_transfer"], n_images=MIN_NONZERO, level=level)
    c6 = compare_groups(load_experiment(params, "ph2_transfer", tmp_path / "eval6"), "ph2", ["tcnet"], ["fcn"], "DI",
                        Inference(200, 0.95, 0))
    assert not c6.too_few and c6.direction == 1


def test_pooled_comparisons_on_too_few_images_are_not_resolved(tmp_path):
    from tcnet.report.pairing import Inference, compare_groups
    from tcnet.report.results import load_experiment

    params = load_params(ROOT / "params.yaml")
    fabricate_eval(params, tmp_path / "eval", ["ablation"], n_images=4)
    c = compare_groups(load_experiment(params, "ablation", tmp_path / "eval"), "drive", ["lkm_etm_mfm"], ["lkm"], "AUC",
                       Inference(200, 0.95, 0))
    assert c.too_few == "only 4 images (at least 6 needed)" and c.direction == 0


def test_the_other_aggregation_is_shown_for_reference(tmp_path):
    """The design asks for both aggregations, named: beside the per-image means (ph2_transfer) the
    pooled scores, beside the pooled Table 3 the means, each cell the runs' own scores.json value."""
    params = load_params(ROOT / "params.yaml")
    written = fabricate_eval(params, tmp_path / "eval", ["ph2_transfer", "ablation"])
    compare.run(params, tmp_path / "eval", REPORTED, tmp_path / "out", ["ph2_transfer", "ablation"], log_mlflow=False)
    ph2 = (tmp_path / "out" / "ph2_transfer" / "table.md").read_text()
    part = ph2.split("## The other aggregation (pooled)", 1)[1].split("##", 1)[0]
    assert "pooled: one score from the confusion counts summed" in part and "use the headline (mean)" in part
    row = next(line for line in part.splitlines() if line.startswith("| TCNet |"))
    di = written[("ph2_transfer", "ph2__tcnet__fold0")]["pooled"]["DI"] * 100  # percent, as the headline
    assert f"{di:.3f}" in row
    abl = (tmp_path / "out" / "ablation" / "table.md").read_text()
    assert "## The other aggregation (mean)" in abl and "mean of per-image scores" in abl
