"""The paper-form table of one experiment and its paired-statistics table.

``table.csv`` is long-form, one row per cell, so nothing is lost to formatting:

- ``kind = value``: our score of one (data, variant, metric) -- mean over folds, sd over folds --
  beside the paper's value where it states one, and ``diff = ours - paper``;
- ``kind = delta``: a difference the paper states (``TCNet - UNet`` on JA), ``ours`` is our
  difference of the same two runs; a method we do not train ("reported elsewhere") has no ``ours``.

``table.md`` (and the HTML report) show the same rows in the paper's shape: one row per variant,
the experiment's metrics as columns (named as the paper prints them), ``paper`` and ``Δ`` columns
where the paper states values. Every caption names the data (``compare.data_label``), the
aggregation and the unit.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tcnet.metrics.auc import AUC_BINS
from tcnet.report.paper import PaperRef
from tcnet.report.results import ExperimentResults
from tcnet.report.pairing import POOLED_METRICS, Inference, compare_groups
from tcnet.report.stats import holm, mean_sd

TABLE_COLUMNS = [
    "experiment", "kind", "data", "variant", "label", "metric", "metric_name", "unit", "aggregation",
    "data_label", "n_folds", "n_images", "ours", "ours_sd", "paper", "diff", "note",
]
STATS_COLUMNS = [
    "experiment", "data", "baseline", "other", "comparison", "metric", "unit", "data_label", "level", "test", "n",
    "n_nonzero",
    "mean_diff", "ci_low", "ci_high", "confidence", "n_resamples", "statistic", "p_value", "p_holm", "note",
]
STATS_METRICS = ("DI", "JA", "AC")  # paired tests on per-image scores (AC: the paper's claims name it)
TESTS = {"images": "Wilcoxon signed-rank; BCa bootstrap CI",
         "pooled": "paired bootstrap over images of the pooled score; BCa CI",
         "folds": "one-sample t over the per-fold mean differences; t CI"}


def stats_metrics(res: ExperimentResults) -> list[str]:
    """The metrics the paired statistics cover: per-image DI, JA, AC for a mean-of-images experiment;
    for a pooled one (Table 3) the experiment's own metrics, as pooled scores."""
    if res.exp.aggregation == "pooled":
        return [m for m in res.exp.metrics if m in POOLED_METRICS]
    return list(STATS_METRICS)

AGGREGATION_TEXT = {
    "mean": "mean of per-image scores (ISIC convention)",
    "pooled": "pooled: one score from the confusion counts summed over all test pixels (those inside the "
    "field of view where the dataset has one: the retina convention)",
}
DASH = "—"


@dataclass
class DisplayTable:
    """A table as shown to a person: caption, header, rows of strings (Markdown or HTML)."""

    caption: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def markdown(self) -> str:
        def esc(s):
            return str(s).replace("|", "\\|")

        lines = [f"*{self.caption}*", "", "| " + " | ".join(map(esc, self.header)) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(map(esc, r)) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def html(self, css_class: str = "table") -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in self.rows
        )
        return (
            f'<table class="{css_class}"><caption>{html.escape(self.caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )


def fmt(v: float, sd: float = math.nan, signed: bool = False) -> str:
    if v is None or not np.isfinite(v):
        return DASH
    s = f"{v:+.3f}" if signed else f"{v:.3f}"
    return f"{s} ± {sd:.3f}" if sd is not None and np.isfinite(sd) else s


def max_folds(res: ExperimentResults) -> int:
    return max((len(res.folds(d.name)) for d in res.exp.data), default=1)


def caption(res: ExperimentResults, data_label: str, with_paper: bool = True) -> str:
    exp = res.exp
    k = max_folds(res)
    unit = "percent" if res.unit == "percent" else "fractions"
    folds = (
        f"{k}-fold cross-validation: mean ± sd over folds (sd with ddof = 1)" if k > 1 else "one split"
    )
    scored = sorted({(r.scores.get("checkpoint") or {}).get("name") or "best.pt" for r in res.runs.values()})
    ckpt = {
        "best.pt": " Scored checkpoint: best.pt (the epoch of best val Dice; the scored images did not choose it).",
        "last.pt": " Scored checkpoint: last.pt (the last epoch: the scored val images are the ones that chose "
                   "best.pt's epoch).",
    }.get(scored[0], "") if len(scored) == 1 else f" Scored checkpoints: {', '.join(scored)} (see each run's scores.json)."
    chase = (" CHASE_DB1: no official split (first 20 / last 8 images, by child) and no FOV masks (derived from "
             "each image)." if any(d.eval_dataset == "chase_db1" for d in exp.data) else "")
    return (
        f"{exp.title} (reproduces {exp.reproduces}). Data: {data_label}. "
        f"Aggregation: {AGGREGATION_TEXT[exp.aggregation]}. Values in {unit}; {folds}."
        + (" paper = the value the paper prints; Δ = ours - paper." if with_paper else "")
        + (ckpt if res.runs else "") + chase
    )


def _shared_images(res: ExperimentResults, data: str, a: str, b: str) -> int:
    """Images that runs ``a`` and ``b`` both scored, summed over their shared folds (0 without ``b``)."""
    if not b:
        return 0
    ra = {r.spec.fold: r for r in res.variant_runs(data, a) if r.per_image is not None}
    rb = {r.spec.fold: r for r in res.variant_runs(data, b) if r.per_image is not None}
    return sum(len(set(ra[k].per_image["id"]) & set(rb[k].per_image["id"])) for k in ra.keys() & rb.keys())


def _label(res: ExperimentResults, variant: str) -> str:
    v = next(r for r in res.exp.runs if r.name == variant)
    return v.label or v.name


def _fold_values(res: ExperimentResults, data: str, variant: str, metric: str) -> dict[int, float]:
    agg = res.exp.aggregation
    return {r.spec.fold: r.value(metric, agg) * res.scale for r in res.variant_runs(data, variant)}


def _run_notes(res: ExperimentResults, data: str, variant: str) -> str:
    notes = []
    declared = [s for s in res.specs if s.data.name == data and s.variant == variant]
    missing = [s.fold for s in declared if s.run_id not in res.runs]
    if missing:
        notes.append(
            "not evaluated" if len(missing) == len(declared) else f"fold(s) {missing} not evaluated"
        )
    stale = sorted({r.stale for r in res.variant_runs(data, variant) if r.stale})
    if stale:
        notes.append("stale evaluation (" + "; ".join(stale) + "): re-run evaluate")
    return "; ".join(notes)


def summary_frame(res: ExperimentResults, ref: PaperRef, data_label: str) -> pd.DataFrame:
    """The long-form table (``table.csv``): value rows, then the paper's stated differences."""
    exp = res.exp
    rows = []
    base = dict(experiment=res.exp_id, unit=res.unit, aggregation=exp.aggregation, data_label=data_label)
    for d in exp.data:
        for v in exp.runs:
            runs = res.variant_runs(d.name, v.name)
            note = _run_notes(res, d.name, v.name)
            for m in exp.metrics:
                values = _fold_values(res, d.name, v.name, m)
                mean, sd = mean_sd(values.values())
                paper = ref.cells.get((d.name, v.name, m), math.nan)
                # mean_sd leaves out an undefined fold value: say so, and count only the folds used
                undefined = sorted(k for k, x in values.items() if not math.isfinite(x))
                cell_note = "; ".join(x for x in (note, f"{ref.name(m)} undefined in fold(s) {undefined}"
                                                  if undefined else "") if x)
                rows.append(dict(
                    base, kind="value", data=d.name, variant=v.name, label=v.label or v.name, metric=m,
                    metric_name=ref.name(m), n_folds=len(runs) - len(undefined),
                    n_images=sum(r.n_images for r in runs), ours=mean, ours_sd=sd, paper=paper,
                    diff=mean - paper, note=cell_note,
                ))
    baseline = ref.baseline  # deltas exist only when there is one
    for delta in ref.deltas:
        base_label = _label(res, baseline)
        ours = sd = math.nan
        n_folds = 0
        if delta.other_variant:
            a = _fold_values(res, delta.data, baseline, delta.metric)
            b = _fold_values(res, delta.data, delta.other_variant, delta.metric)
            per_fold = [a[k] - b[k] for k in sorted(a.keys() & b.keys())]
            ours, sd = mean_sd(per_fold)
            n_folds = len(per_fold)
            note = ""
        else:
            note = (
                f"{delta.other_name} is reported elsewhere and not trained here; the paper states only "
                "this difference, so no absolute value is shown"
            )
        rows.append(dict(
            base, kind="delta", data=delta.data, variant=delta.other_variant,
            label=f"{base_label} - {delta.other_name}", metric=delta.metric, metric_name=ref.name(delta.metric),
            # a difference: percentage points (fractions stay fractions); its images: both runs' shared ones
            unit="percentage points" if res.unit == "percent" else res.unit,
            n_folds=n_folds, n_images=_shared_images(res, delta.data, baseline, delta.other_variant),
            ours=ours, ours_sd=sd, paper=delta.value,
            diff=ours - delta.value, note=note,
        ))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def stats_frame(res: ExperimentResults, n_resamples: int, confidence: float, seed: int,
                data_label: str) -> pd.DataFrame:
    """Paired statistics of ``baseline_of`` against every other variant (``stats.csv``).

    Per data pair and metric (:func:`tcnet.report.pairing.compare_groups`), level ``images``: each
    fold's per-image scores of the two runs joined on image id, the folds concatenated, then
    :func:`paired_test`; for a pooled experiment (Table 3) the difference of the pooled scores over
    the same images with a paired-bootstrap CI (:func:`tcnet.report.pairing.compare_pooled`; no W, p,
    ``n_nonzero`` or ``p_holm``). With several folds also level ``folds``: :func:`fold_test` over the per-fold
    mean differences (each fold is a different trained model: the image-level test does not see that
    variation). ``p_holm``: Holm's adjustment over the comparisons of one (data, metric, level).
    ``data_label`` in every row: which data the numbers come from (a synthetic look-alike's never
    pass for the paper's).
    """
    exp = res.exp
    rows = []
    if not exp.baseline_of:
        return pd.DataFrame(rows, columns=STATS_COLUMNS)
    inference = Inference(n_resamples, confidence, seed)
    b_label = _label(res, exp.baseline_of)
    for d in exp.data:
        for v in exp.runs:
            if v.name == exp.baseline_of:
                continue
            for m in stats_metrics(res):
                c = compare_groups(res, d.name, [exp.baseline_of], [v.name], m, inference)
                common = dict(
                    experiment=res.exp_id, data=d.name, baseline=exp.baseline_of, other=v.name,
                    comparison=f"{b_label} - {v.label or v.name}", metric=m, unit=res.unit,
                    data_label=data_label, confidence=confidence,
                )
                for level in ("images", "folds") if c.cross_validated else ("images",):
                    test = "pooled" if level == "images" and exp.aggregation == "pooled" else level
                    # the fold-level t-test resamples nothing
                    common.update(level=level, test=TESTS[test], n_resamples=n_resamples if level == "images" else math.nan)
                    r = c.images if level == "images" else c.folds
                    if r is None:
                        rows.append(dict(common, n=0, note="; ".join(c.notes)))
                        continue
                    rows.append(dict(
                        common, n=r.n, n_nonzero=getattr(r, "n_nonzero", math.nan), mean_diff=r.mean_diff,
                        ci_low=r.ci_low, ci_high=r.ci_high,
                        statistic=r.wilcoxon_stat if level == "images" else r.t_stat,
                        p_value=r.p_value, note="; ".join(c.notes + ([r.note] if r.note else [])),
                    ))
    out = pd.DataFrame(rows, columns=STATS_COLUMNS)
    for _, idx in out.groupby(["data", "metric", "level"]).groups.items():
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p_value"].to_list())
    for column in ("n", "n_nonzero", "n_resamples"):  # counts print as counts (24, not 24.0), blank where none
        out[column] = out[column].astype("Int64")
    return out


COMPARISON_COLUMNS = [
    "experiment", "data", "a", "b", "comparison", "metric", "unit", "data_label", "level", "primary", "n", "mean_diff",
    "ci_low", "ci_high", "confidence", "p_value", "note",
]


def comparisons_frame(res: ExperimentResults, data_label: str) -> pd.DataFrame:
    """Every paired comparison the tables and the verdicts used (``comparisons.csv``): group ``a``
    minus group ``b`` (variants joined by ``+``), per level; ``primary``: the level a verdict rests
    on. What traces a verdict's CI in the report back to numbers, for experiments without
    ``baseline_of`` too (the loss sweep, the attention placements)."""
    rows = []
    label = {v.name: v.label or v.name for v in res.exp.runs}
    for (data, a, b, metric, inference), c in res.comparisons.items():
        common = dict(experiment=res.exp_id, data=data, a="+".join(a), b="+".join(b), metric=metric,
                      comparison=f"{' + '.join(label.get(x, x) for x in a)} - {' + '.join(label.get(x, x) for x in b)}",
                      unit=res.unit, data_label=data_label, confidence=inference.confidence)
        primary_level = "folds" if c.cross_validated else "images"
        for level, r in (("images", c.images), ("folds", c.folds)):
            if r is None:  # a level without a result: a row (with the reason) only for the one verdicts use
                if level == primary_level:
                    rows.append(dict(common, level=level, primary=True, n=0, note="; ".join(c.notes)))
                continue
            rows.append(dict(common, level=level, primary=r is c.primary, n=r.n, mean_diff=r.mean_diff,
                             ci_low=r.ci_low, ci_high=r.ci_high, p_value=r.p_value,
                             note="; ".join(c.notes + ([r.note] if r.note else []))))
    out = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    out["n"] = out["n"].astype("Int64")
    return out


def primary_level(stats: pd.DataFrame, data: str) -> str:
    """The level a verdict rests on: ``folds`` where the data pair was cross-validated (the claim is
    about a training method, and the folds are its repeats), else ``images``."""
    return "folds" if ((stats.data == data) & (stats.level == "folds")).any() else "images"


def main_table(res: ExperimentResults, summary: pd.DataFrame, ref: PaperRef, data_label: str) -> DisplayTable:
    """The paper-form table: a row per variant, per metric ours (+ paper and Δ where stated)."""
    exp = res.exp
    values = summary[summary.kind == "value"]
    with_paper = {m for m in exp.metrics if values[(values.metric == m)].paper.notna().any()}
    cited = summary[(summary.kind == "delta") & (summary.variant == "")]
    multi_data = len(exp.data) > 1
    header = (["Data"] if multi_data else []) + ["Variant"]
    for m in exp.metrics:
        name = ref.name(m)
        header += [name] + ([f"{name} paper", f"{name} Δ"] if m in with_paper else [])
    header += ["n images", "Note"]
    table = DisplayTable(caption(res, data_label, with_paper=bool(with_paper)), header)
    for d in exp.data:
        for v in exp.runs:
            cells = values[(values.data == d.name) & (values.variant == v.name)].set_index("metric")
            row = ([d.name] if multi_data else []) + [v.label or v.name]
            for m in exp.metrics:
                c = cells.loc[m]
                row.append(fmt(c.ours, c.ours_sd))
                if m in with_paper:
                    row += [fmt(c.paper), fmt(c["diff"], signed=True)]
            first = cells.iloc[0]
            cell_notes = list(dict.fromkeys(n for part in cells.note for n in str(part).split("; ") if n))
            row += [str(int(first.n_images)) if len(res.variant_runs(d.name, v.name)) else DASH, "; ".join(cell_notes)]
            table.rows.append(row)
        for other, group in cited[cited.data == d.name].groupby("label", sort=False):
            name = other.split(" - ", 1)[1]
            stated = ", ".join(f"{r.label} {r.metric_name} = {fmt(r.paper, signed=True)}" for r in group.itertuples())
            row = ([d.name] if multi_data else []) + [f"{name} (reported elsewhere)"]
            row += [DASH] * (len(header) - len(row) - 2)
            row += [DASH, f"the paper states only a difference: {stated}"]
            table.rows.append(row)
    return table


OTHER_AGGREGATION = {"mean": "pooled", "pooled": "mean"}


def other_aggregation_table(res: ExperimentResults, ref: PaperRef, data_label: str) -> DisplayTable | None:
    """The headline's counterpart, for reference (the design asks for both, each named): the pooled
    scores beside an experiment that averages images, the per-image means beside a pooled one. No
    paper column and no statistics: the paper's numbers and the verdicts are about the headline.
    ``None`` without evaluated runs."""
    exp = res.exp
    other = OTHER_AGGREGATION[exp.aggregation]
    metrics = [m for m in exp.metrics if not (other == "pooled" and m == "TJA")]  # TJA is a per-image rule
    if not res.runs or not metrics:
        return None
    multi_data = len(exp.data) > 1
    header = (["Data"] if multi_data else []) + ["Variant"] + [ref.name(m) for m in metrics]
    table = DisplayTable(
        f"The other aggregation, for reference: {AGGREGATION_TEXT[other]}. Data: {data_label}. Values in "
        f"{'percent' if res.unit == 'percent' else 'fractions'}; mean ± sd over folds where there are several. "
        f"The results table above, the paper's numbers and the verdicts use the headline ({exp.aggregation}).",
        header)
    for d in exp.data:
        for v in exp.runs:
            runs = res.variant_runs(d.name, v.name)
            row = ([d.name] if multi_data else []) + [v.label or v.name]
            for m in metrics:
                mean, sd = mean_sd(r.value(m, other) * res.scale for r in runs)
                row.append(fmt(mean, sd) if runs else DASH)
            table.rows.append(row)
    return table


def delta_table(res: ExperimentResults, summary: pd.DataFrame, data_label: str,
                stats: pd.DataFrame | None = None) -> DisplayTable | None:
    """The paper's stated differences beside ours (None when it states none), with our CI of the
    same difference from ``stats`` where it has one (the verdicts' level: :func:`primary_level`)."""
    deltas = summary[summary.kind == "delta"]
    if deltas.empty:
        return None
    multi_data = len(res.exp.data) > 1
    # our CI is of the mean per-image difference: beside a difference of pooled scores it would not fit
    has_ci = stats is not None and not stats.empty and res.exp.aggregation == "mean"
    conf = f"{stats.confidence.iloc[0]:.0%} " if has_ci else ""
    header = (["Data"] if multi_data else []) + ["Difference", "Metric", "paper", "ours"] + (
        [f"our {conf}CI"] if has_ci else []) + ["ours - paper", "Note"]
    t = DisplayTable(
        f"Differences the paper states for {res.exp.reproduces} (no absolute values given), beside ours. "
        f"Data: {data_label}. Unit: {'percentage points' if res.unit == 'percent' else 'fractions'}."
        + (" Our CI: the paired statistics' interval of the same difference (table below)." if has_ci else ""),
        header,
    )
    for r in deltas.itertuples():
        ci_cells, note = [], r.note
        if has_ci:
            level = primary_level(stats, r.data)
            hit = stats[(stats.data == r.data) & (stats.other == r.variant) & (stats.metric == r.metric)
                        & (stats.level == level)]
            lo, hi = (float(hit.ci_low.iloc[0]), float(hit.ci_high.iloc[0])) if len(hit) else (math.nan, math.nan)
            ci_cells = [DASH if not np.isfinite(lo) else f"[{lo:+.3f}, {hi:+.3f}]"]
            if np.isfinite(lo):
                inside = lo <= r.paper <= hi
                note = "; ".join(x for x in (note, f"the paper's value is {'inside' if inside else 'outside'} our CI") if x)
        t.rows.append(([r.data] if multi_data else []) + [
            r.label, r.metric_name, fmt(r.paper, signed=True), fmt(r.ours, r.ours_sd, signed=True),
            *ci_cells, fmt(r.diff, signed=True), note,
        ])
    return t


def stats_table(res: ExperimentResults, stats: pd.DataFrame, data_label: str) -> DisplayTable | None:
    if stats.empty:
        return None
    conf = stats.confidence.iloc[0]
    multi_data = len(res.exp.data) > 1
    cv = (stats.level == "folds").any()
    header = (["Data"] if multi_data else []) + [
        "Comparison", "Metric"] + (["Level"] if cv else []) + [
        "n", "Difference" if res.exp.aggregation == "pooled" else "Mean difference", f"{conf:.0%} CI", "W" if not cv else "W / t", "p", "p (Holm)", "Note",
    ]
    units = "percentage points" if res.unit == "percent" else "fractions"
    # Holm counts the comparisons with a p value (holm() skips the others: a run not evaluated)
    tested = stats[stats.p_value.notna()].groupby(["data", "metric", "level"]).size()
    n_tested = (f"{tested.min()}" if tested.min() == tested.max() else f"{tested.min()}-{tested.max()}") if len(tested) else "0"
    folds = (
        " Level folds: a one-sample t-test and t-interval over the per-fold mean differences. Each fold's "
        "images are scored by a model trained on the other folds, so the image-level rows leave out the "
        "variation between trainings and overstate the evidence; the fold-level rows include it, with "
        "k - 1 degrees of freedom. The verdicts on the paper's claims rest on them."
        if cv else "")
    resamples = int(stats.n_resamples.dropna().iloc[0]) if stats.n_resamples.notna().any() else 0
    if res.exp.aggregation == "pooled":
        # The histograms' layout as evaluate wrote them (pooled_parts.npz), not a constant that could drift.
        layout = next((r.parts["layout"] for r in res.runs.values() if r.parts is not None), None)
        bins_text = f"bins ({layout})" if layout else "bins (no pooled_parts.npz here: re-run evaluate)"
        images = (f"Level images: the difference of the pooled scores over the same images, with a BCa CI from a "
                  f"paired bootstrap over images ({resamples} resamples, seeded: each resample sums the same "
                  f"images' confusion counts, and for AUC their probability histograms in {bins_text}, for both "
                  f"runs; the table's AUC comes from evaluate's finer histograms, steps of 1/{AUC_BINS - 1}, so the "
                  "two can differ by ties inside a bin, docs/metrics.md); a pooled score has no per-image test, "
                  "so no W or p.")
    else:
        images = (f"Level images: Wilcoxon signed-rank (two-sided; n counts the images, the test uses the non-zero "
                  f"differences) on the per-image differences, folds concatenated; BCa bootstrap CI with "
                  f"{resamples} resamples (seeded).")
    t = DisplayTable(
        f"Paired statistics, {_label(res, res.exp.baseline_of)} against each other variant on the same images. "
        f"Data: {data_label}. Differences in {units}. {images}{folds}"
        + ("" if res.exp.aggregation == "pooled" and not cv else
           f" p (Holm): adjusted over the {n_tested} comparison(s) of a metric that have a p value; the metrics are not separate "
           "evidence (per image, JA = DI / (2 - DI))."),
        header,
    )
    digits = res.digits
    for r in stats.itertuples():
        ci = DASH if not np.isfinite(r.ci_low) else f"[{r.ci_low:+.{digits}f}, {r.ci_high:+.{digits}f}]"
        p = DASH if not np.isfinite(r.p_value) else f"{r.p_value:.3g}"
        ph = DASH if not np.isfinite(r.p_holm) else f"{r.p_holm:.3g}"
        w = DASH if not np.isfinite(r.statistic) else f"{r.statistic:.3g}"
        t.rows.append(([r.data] if multi_data else []) + [r.comparison, r.metric] + ([r.level] if cv else []) + [
            str(int(r.n)), f"{r.mean_diff:+.{digits}f}" if np.isfinite(r.mean_diff) else DASH, ci, w, p, ph,
            r.note if isinstance(r.note, str) else "",
        ])
    return t
