"""Pipeline stage ``compare``: the paper's tables, paired statistics, figures and the HTML report.

Inputs: ``<eval>/<exp>/<run_id>/`` as the evaluate stage writes them (``scores.json``,
``per_image.csv``, ``roc.csv``, ``history.csv``) for the runs ``params.yaml`` declares, and the
paper's numbers (``paper/reported.yaml``). Outputs (docs/architecture.md, "compare"):

    <out>/<exp>/table.md, table.csv, stats.csv, fig_*.png   one folder per experiment
    <out>/report.html                                       self-contained, every experiment
    <out>/metrics.json                                      DVC metric: our headline numbers
    <out>/datasets.md, datasets.csv                         images per dataset: paper's Table 2 beside ours
    <out>/plots/curves/*.csv, <out>/plots/roc/*.csv         DVC plots (loss curves, ROC)

and, unless ``log_mlflow=False``, the same tables and figures on each experiment's MLflow parent
run. Every table, figure, the report banner and the MLflow tags carry ``compare.data_label``.
How to read the tables: docs/experiments.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from tcnet.config import Params, load_params
from tcnet.report import figures as figs
from tcnet.report import html as report_html
from tcnet.report import paper as paper_mod
from tcnet.report import tables
from tcnet.report.datasets import datasets_frame, datasets_table
from tcnet.report.pairing import Inference
from tcnet.report.results import ExperimentResults, load_experiment
from tcnet.utils.atomic import atomic_dir, atomic_write, check_replaceable, claim_dir

REPORT_NAMES = ("report.html", "metrics.json", "datasets.md", "datasets.csv", "plots")  # beside the experiments'


def _experiment_folder(names: set[str]) -> bool:
    """An experiment's folder is only written inside a report that is compare's (claimed by
    ``--experiment``, or the temporary folder of a whole run): unmarked, it is compare's all the same
    (written before the mark); one marked by another command is still refused."""
    return True


@dataclass
class _Done:
    res: ExperimentResults
    summary: object  # pd.DataFrame
    stats: object  # pd.DataFrame
    section: report_html.Section


def _meta(res: ExperimentResults, data_label: str) -> str:
    k = tables.max_folds(res)
    return (
        f"Data: {data_label}. Aggregation: {tables.AGGREGATION_TEXT[res.exp.aggregation]}. "
        f"{f'{k}-fold cross-validation (mean ± sd over folds)' if k > 1 else 'One split'}. "
        f"Evaluated runs: {len(res.runs)} of {len(res.specs)}."
    )


def _markdown(res: ExperimentResults, data_label: str, section: report_html.Section) -> str:
    lines = [
        f"# {res.exp_id}: {res.exp.title}",
        "",
        f"> {report_html.banner_text(data_label)}",
        "",
        f"Reproduces **{res.exp.reproduces}**. {section.meta}",
        "",
    ]
    if section.missing:
        lines += [f"Runs without evaluation outputs: {', '.join(section.missing)}", ""]
    for heading, table in section.tables:
        lines += [f"## {heading}", "", table.markdown()]
    if section.notes:
        lines += ["## Ours vs the paper", ""] + [f"- {n}" for n in section.notes] + [""]
    if section.figures:
        lines += ["## Figures", ""] + [f"![{f.title}]({f.name})" for f in section.figures] + [""]
    return "\n".join(lines)


def _compare_one(params: Params, exp_id: str, res: ExperimentResults, reported: dict, exp_dir: Path) -> _Done:
    cfg = params.compare
    seed = params.train.seed
    ref = paper_mod.paper_reference(reported, exp_id, res.exp)
    summary = tables.summary_frame(res, ref, cfg.data_label)
    stats = tables.stats_frame(res, cfg.bootstrap, cfg.confidence, seed, cfg.data_label)
    section = report_html.Section(
        exp_id=exp_id, title=res.exp.title, reproduces=res.exp.reproduces, meta=_meta(res, cfg.data_label),
        missing=res.missing, notes=paper_mod.notes(reported, res, summary, ref, Inference(cfg.bootstrap, cfg.confidence, seed)),
    )
    section.tables.append(("Results", tables.main_table(res, summary, ref, cfg.data_label)))
    delta = tables.delta_table(res, summary, cfg.data_label, stats)
    if delta is not None:
        section.tables.append(("The paper's stated differences", delta))
    st = tables.stats_table(res, stats, cfg.data_label)
    if st is not None:
        section.tables.append(("Paired statistics", st))
    other = tables.other_aggregation_table(res, ref, cfg.data_label)
    if other is not None:
        section.tables.append((f"The other aggregation ({tables.OTHER_AGGREGATION[res.exp.aggregation]})", other))
    with atomic_dir(exp_dir, owner="compare", own=_experiment_folder) as tmp:
        summary.to_csv(tmp / "table.csv", index=False)
        stats.to_csv(tmp / "stats.csv", index=False)
        # after the verdicts (section.notes) and the stats table: every comparison either used
        tables.comparisons_frame(res, cfg.data_label).to_csv(tmp / "comparisons.csv", index=False)
        drawn = figs.draw_figures(res, summary, ref, tmp, cfg.data_label, cfg.bootstrap, cfg.confidence, seed)
        section.figures = drawn
        (tmp / "table.md").write_text(_markdown(res, cfg.data_label, section))
    section.figures = [replace(f, path=exp_dir / f.name) for f in drawn]
    return _Done(res, summary, stats, section)


def _headline(done: _Done) -> dict:
    out = {"aggregation": done.res.exp.aggregation, "unit": done.res.unit}
    values = done.summary[(done.summary.kind == "value") & done.summary.ours.notna()]
    for r in values.itertuples():
        cell = out.setdefault(r.data, {}).setdefault(r.variant, {})
        cell[r.metric] = round(float(r.ours), 6)
        if not math.isnan(r.ours_sd):
            cell[f"{r.metric}_sd"] = round(float(r.ours_sd), 6)
    return out


def check_data_label(label: str, res, eval_dir) -> None:
    """Refuse to call numbers real that the evaluate stage found were computed on a look-alike
    (``scores.json`` ``synthetic``: the train or eval dataset's raw folder holds tcnet synth's
    ``SYNTHETIC.txt``). The label is the only thing that tells a reader which data a table shows."""
    if "synthetic" in label.lower():
        return
    for run_id, run in res.runs.items():
        synthetic = run.scores.get("synthetic") or []
        if synthetic:
            raise ValueError(
                f"compare.data_label is {label!r}, but {Path(eval_dir) / res.exp_id / run_id / 'scores.json'} was "
                f"computed on synthetic look-alikes ({', '.join(synthetic)}: their raw folders hold SYNTHETIC.txt, "
                "written by tcnet synth). Replace data/ with the real datasets (docs/datasets.md) and run the "
                "pipeline again, or set compare.data_label to 'synthetic look-alike'"
            )


def _write_all(params: Params, exp_ids: list[str], eval_dir: Path, reported: dict, dest: Path,
               explicit: bool) -> list[_Done]:
    done = []
    for exp_id in exp_ids:
        res = load_experiment(params, exp_id, eval_dir)
        if explicit and not res.runs:
            raise FileNotFoundError(
                f"{Path(eval_dir) / exp_id}: no evaluation outputs for experiment {exp_id!r} "
                f"(expected run folders like {res.specs[0].run_id}/scores.json); run "
                f"'tcnet evaluate --experiment {exp_id}' or 'dvc repro evaluate@{exp_id}' first"
            )
        for old in (dest / "plots").glob(f"*/{exp_id}__*.csv"):
            old.unlink()
        figs.write_plot_data(res, dest / "plots")
        done.append(_compare_one(params, exp_id, res, reported, dest / exp_id))
    return done


def _write_report(params: Params, done: list[_Done], reported: dict, dest: Path) -> None:
    label = params.compare.data_label
    metrics = {"data_label": label, "profile": params.profile}
    metrics.update({d.res.exp_id: _headline(d) for d in done})
    with atomic_write(dest / "metrics.json") as f:
        json.dump(metrics, f, indent=2, sort_keys=False)
    frame = datasets_frame([d.res for d in done], reported)
    table = datasets_table(frame, reported, label)
    with atomic_write(dest / "datasets.csv") as f:
        frame.to_csv(f, index=False)
    with atomic_write(dest / "datasets.md") as f:
        f.write(f"# Datasets\n\n> {report_html.banner_text(label)}\n\n{table.markdown()}")
    page = report_html.render(
        [d.section for d in done], label, heading="TCNet: the paper's experiments, reproduced",
        subtitle=f"Profile: {params.profile}. Experiments: {', '.join(d.res.exp_id for d in done)}. "
        "Tables print the paper's values beside ours where it states them (paper/reported.yaml); "
        "the numbers in its figures are lost and never filled in.",
        datasets=table,
    )
    with atomic_write(dest / "report.html") as f:
        f.write(page)


def run(params: Params | str | Path, eval_dir: str | Path, reported_path: str | Path, out_dir: str | Path,
        experiments: Optional[list[str]] = None, log_mlflow: Optional[bool] = None) -> dict:
    """Compare the evaluated runs of ``experiments`` (default: every experiment in ``params``).

    ``log_mlflow``: log onto each experiment's MLflow parent run (None: unless ``TCNET_NO_MLFLOW=1``).
    Without ``experiments`` the whole ``out_dir`` is replaced in one step. With a subset only those
    experiments' folders and plot files are replaced, and ``report.html`` / ``metrics.json`` cover
    that subset. An explicitly named experiment with no evaluation outputs is an error; otherwise
    such an experiment still gets its (empty) table and a report section saying so.
    """
    if not isinstance(params, Params):
        params = load_params(params)
    reported = paper_mod.load_reported(reported_path)
    exp_ids = list(experiments) if experiments else list(params.experiments)
    for e in exp_ids:
        params.experiment(e)  # unknown id: ConfigError naming the valid ones
    if not Path(eval_dir).is_dir():
        raise FileNotFoundError(f"{eval_dir}: no such folder (the evaluate stage's output: run 'tcnet evaluate' "
                                "or 'dvc repro' first, or pass --eval)")
    for e in exp_ids:  # before anything is written
        check_data_label(params.compare.data_label, load_experiment(params, e, eval_dir), eval_dir)
    out_dir = Path(out_dir)
    # a report written before the mark: its own names, metrics.json and report.html among them
    own = lambda names: {"metrics.json", "report.html"} <= names <= set(REPORT_NAMES) | set(params.experiments)  # noqa: E731
    if experiments:
        claim_dir(out_dir, "compare", own)  # parts written in place; a whole compare replaces it later
        for e in exp_ids:  # each experiment's folder, before any is computed
            check_replaceable(out_dir / e, "compare", _experiment_folder)
        done = _write_all(params, exp_ids, Path(eval_dir), reported, out_dir, explicit=True)
        _write_report(params, done, reported, out_dir)
    else:
        with atomic_dir(out_dir, owner="compare", own=own) as tmp:
            done = _write_all(params, exp_ids, Path(eval_dir), reported, tmp, explicit=False)
            if not any(d.res.runs for d in done):  # a wrong --eval, not a partly evaluated pipeline
                raise FileNotFoundError(f"{eval_dir}: no evaluation outputs for any experiment "
                                        f"({', '.join(exp_ids)}); run 'tcnet evaluate' or 'dvc repro' first")
            _write_report(params, done, reported, tmp)
        for d in done:
            d.section.figures = [replace(f, path=out_dir / d.res.exp_id / f.name) for f in d.section.figures]

    result = {
        "out_dir": str(out_dir),
        "report": str(out_dir / "report.html"),
        "metrics": str(out_dir / "metrics.json"),
        "datasets": str(out_dir / "datasets.md"),
        "data_label": params.compare.data_label,
        "experiments": {},
    }
    for d in done:
        exp_dir = out_dir / d.res.exp_id
        result["experiments"][d.res.exp_id] = {
            "table_md": str(exp_dir / "table.md"),
            "table_csv": str(exp_dir / "table.csv"),
            "stats_csv": str(exp_dir / "stats.csv"),
            "figures": [str(f.path) for f in d.section.figures],
            "missing_runs": d.res.missing,
            "mlflow_run_id": None,
        }
    from tcnet.tracking import tracking_enabled

    if tracking_enabled(log_mlflow):
        from tcnet.report.mlflow_log import log_experiment

        for d in done:
            if d.res.runs:
                result["experiments"][d.res.exp_id]["mlflow_run_id"] = log_experiment(
                    params, d.res.exp_id, out_dir / d.res.exp_id, d.summary, d.stats,
                    [f.path for f in d.section.figures], d.res.exp.aggregation, d.res.unit,
                )
    return result


def add_arguments(parser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--eval", dest="eval_dir", default="outputs/eval",
                        help="evaluation outputs: <eval>/<experiment>/<run_id>/ (default: outputs/eval)")
    parser.add_argument("--reported", default="paper/reported.yaml",
                        help="the paper's numbers (default: paper/reported.yaml)")
    parser.add_argument("--out", default="outputs/reports", help="output folder, replaced whole (with --experiment: those experiments' folders, the report and "
                        "metrics.json); a folder holding files compare did not write is refused (default: outputs/reports)")
    parser.add_argument("--experiment", dest="experiments", nargs="+", action="extend", metavar="ID",
                        help="compare only these experiments (default: all in params); repeatable")
    parser.add_argument("--no-mlflow", dest="log_mlflow", action="store_const", const=False, default=None,
                        help="do not log tables and figures to the MLflow parent runs (also: TCNET_NO_MLFLOW=1)")


def main(args) -> int:
    result = run(args.params, args.eval_dir, args.reported, args.out, args.experiments, args.log_mlflow)
    for exp_id, r in result["experiments"].items():
        missing = f", {len(r['missing_runs'])} run(s) not evaluated" if r["missing_runs"] else ""
        print(f"{exp_id}: {r['table_md']} ({len(r['figures'])} figure(s){missing})")
    print(f"report: {result['report']}  [data: {result['data_label']}]")
    return 0
