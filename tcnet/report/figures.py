"""The figures of one experiment, chosen from what its runs vary (so an added experiment gets some).

:func:`figure_kinds` looks at how the variants differ (train settings, model, model kwargs):

- ``sweep``  one numeric setting takes >= 3 values (the loss weight λ: Fig. 1): metrics vs that setting;
- ``curves`` the variants differ only in model switches and training histories exist (attention
  placement x deep supervision: Fig. 2 and 3): training- and validation-loss curves, colour by the
  switch with values, line style by the on/off switch;
- ``roc``    the experiment reports AUC and ROC points exist (Table 3's retinal data);
- ``bars``   every experiment that is not a sweep (Fig. 4, Fig. 5, and any experiment a user adds):
  metrics per variant with error bars (sd over folds, else a bootstrap CI of the per-image mean),
  and the paper's printed values as markers where it states them.

Every figure's title carries the data label, so numbers from synthetic data are never read as the
paper's. Drawing uses matplotlib's object API with the Agg canvas (no pyplot global state).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tcnet.report.paper import PaperRef
from tcnet.report.results import ExperimentResults, varying_settings
from tcnet.report.stats import bootstrap_ci, rng_for

LINESTYLES = ("-", "--", ":", "-.")
ROC_POINTS = 200  # points kept per ROC curve in the DVC plot files


@dataclass(frozen=True)
class FigureOut:
    kind: str
    name: str  # file name under outputs/reports/<exp>/
    title: str
    path: Path


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def figure_kinds(res: ExperimentResults) -> list[str]:
    varying = varying_settings(res)
    kinds = []
    if len(varying) == 1:
        (values,) = varying.values()
        if all(_is_number(v) for v in values) and len(set(values)) >= 3:
            kinds.append("sweep")
    has_history = any(r.history is not None and len(r.history) for r in res.runs.values())
    if varying and has_history and all(k.startswith("model.") and k != "model.name" for k in varying):
        kinds.append("curves")
    if "AUC" in res.exp.metrics and any(r.roc is not None and len(r.roc) for r in res.runs.values()):
        kinds.append("roc")
    if "sweep" not in kinds:
        kinds.append("bars")
    return kinds


def _suptitle(fig: Figure, res: ExperimentResults, what: str, data_label: str) -> None:
    fig.suptitle(  # the experiment first: "Fig. 2 - training loss" read as if it were the paper's own figure
        f"{res.exp.title} (reproduces {res.exp.reproduces}): {what}\n"
        f"[data: {data_label}; aggregation: {res.exp.aggregation}]",
        fontsize=9,
    )


def _legend(ax, n_entries: int) -> None:
    """The legend below the axes, where it covers no point, bar or error bar."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(4, max(1, n_entries)),
              frameon=False)


def _axes(fig: Figure, n: int):
    axes = fig.subplots(1, n, squeeze=False)[0]
    return list(axes)


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    # bbox "tight": the legends below the axes are part of the picture
    fig.savefig(path, dpi=110, format="png", metadata={"Software": None}, bbox_inches="tight")


def _unit_label(res: ExperimentResults) -> str:
    return "%" if res.unit == "percent" else "fraction"


def _sweep(res, summary, ref, data_label, path) -> str:
    (key, values), = varying_settings(res).items()
    x_of = {v.name: x for v, x in zip(res.exp.runs, values)}
    name = "λ (loss.ce_weight)" if key.endswith("loss.ce_weight") else key
    fig = Figure(figsize=(4.5 * len(res.exp.data), 3.6))
    for ax, d in zip(_axes(fig, len(res.exp.data)), res.exp.data):
        vals = summary[(summary.kind == "value") & (summary.data == d.name)]
        for m in res.exp.metrics:
            rows = vals[vals.metric == m].assign(x=lambda t: t.variant.map(x_of)).sort_values("x")
            ax.errorbar(rows.x, rows.ours, yerr=rows.ours_sd.fillna(0), marker="o", capsize=3, label=ref.name(m))
        ax.set_xlabel(name)
        ax.set_ylabel(_unit_label(res))
        ax.set_title(d.name, fontsize=9)
        ax.grid(alpha=0.3)
        _legend(ax, len(res.exp.metrics))
    _suptitle(fig, res, f"metrics vs {name}", data_label)
    _save(fig, path)
    return f"Metrics against {name}"


def _mean_history(runs, column: str) -> pd.Series | None:
    series = [r.history.set_index("epoch")[column] for r in runs if r.history is not None and column in r.history]
    if not series:
        return None
    return pd.concat(series, axis=1).mean(axis=1)  # mean over folds, per epoch


def _curve_styles(res: ExperimentResults) -> dict[str, dict]:
    """Colour by the first varying valued switch, line style by the first varying on/off switch."""
    varying = varying_settings(res)
    toggles = [k for k, vals in varying.items() if all(isinstance(v, bool) for v in vals)]
    valued = [k for k in varying if k not in toggles]
    colour_key = valued[0] if valued and toggles else None
    style_key = toggles[0] if valued and toggles else None
    colours = {}
    out = {}
    for i, v in enumerate(res.exp.runs):
        c_val = varying[colour_key][i] if colour_key else v.name
        colours.setdefault(repr(c_val), f"C{len(colours) % 10}")
        ls = LINESTYLES[int(bool(varying[style_key][i]))] if style_key else "-"
        out[v.name] = {"color": colours[repr(c_val)], "linestyle": ls}
    return out


def _curves(res, column: str, what: str, data_label, path) -> str:
    styles = _curve_styles(res)
    fig = Figure(figsize=(5.5 * len(res.exp.data), 3.8))
    for ax, d in zip(_axes(fig, len(res.exp.data)), res.exp.data):
        for v in res.exp.runs:
            s = _mean_history(res.variant_runs(d.name, v.name), column)
            if s is not None:
                ax.plot(s.index, s.values, label=v.label or v.name, **styles[v.name])
        ax.set_xlabel("epoch")
        ax.set_ylabel(column)
        ax.set_title(d.name, fontsize=9)
        ax.grid(alpha=0.3)
        _legend(ax, len(res.exp.runs))
    _suptitle(fig, res, what, data_label)
    _save(fig, path)
    return what[0].upper() + what[1:] + " per epoch" + (" (mean over folds)" if res.multi_fold else "")


def _roc(res, summary, data_label, path) -> str:
    fig = Figure(figsize=(4.2 * len(res.exp.data), 4.0))
    for ax, d in zip(_axes(fig, len(res.exp.data)), res.exp.data):
        ax.plot([0, 1], [0, 1], color="0.7", linewidth=0.8)
        for v in res.exp.runs:
            runs = [r for r in res.variant_runs(d.name, v.name) if r.roc is not None and len(r.roc)]
            if not runs:
                continue
            # the curve drawn is the first evaluated fold's: so is the AUC beside it (the table has the mean)
            auc = runs[0].value("AUC", res.exp.aggregation) * res.scale
            auc_txt = f" (AUC {auc:.3f})" if np.isfinite(auc) else ""
            roc = runs[0].roc.sort_values(["fpr", "tpr"])
            ax.plot(roc.fpr, roc.tpr, label=f"{v.label or v.name}{auc_txt}")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(d.name, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    which = "; the first evaluated fold of each variant" if res.multi_fold else ""
    _suptitle(fig, res, f"ROC curves (pooled pixels{which})", data_label)
    _save(fig, path)
    return f"ROC curves (pooled over the test pixels inside the FOV{which})"


def bar_errors(res: ExperimentResults, data: str, variant: str, metric: str, n_resamples: int,
               confidence: float, seed: int) -> tuple[float, float]:
    """(low, high) error extents of one bar: sd over folds, else a bootstrap CI of the per-image mean."""
    runs = res.variant_runs(data, variant)
    agg = res.exp.aggregation
    if len(res.folds(data)) > 1 and len(runs) < 2:
        return 0.0, 0.0  # cross-validation with one fold left: no sd, and a CI would not be what the caption says
    if len(runs) > 1:
        vals = np.array([r.value(metric, agg) for r in runs]) * res.scale
        sd = float(np.nanstd(vals, ddof=1))
        return sd, sd
    if len(runs) == 1 and agg == "mean" and runs[0].per_image is not None and metric in runs[0].per_image:
        x = runs[0].per_image[metric].dropna().to_numpy() * res.scale
        lo, hi = bootstrap_ci(x, n_resamples, confidence, rng_for(seed, res.exp_id, data, variant, metric, "bar"))
        if np.isfinite(lo):
            m = float(x.mean())
            return m - lo, hi - m
    return 0.0, 0.0


def _bars(res, summary, ref, data_label, path, n_resamples, confidence, seed) -> str:
    metrics = list(res.exp.metrics)
    variants = list(res.exp.runs)
    panel_width = min(12.0, max(5.0, 0.45 * len(metrics) * len(variants)))
    fig = Figure(figsize=(panel_width * len(res.exp.data), 3.8))
    width = 0.8 / max(1, len(variants))
    x = np.arange(len(metrics))
    multi_fold = any(len(res.variant_runs(d.name, v.name)) > 1 for d in res.exp.data for v in variants)
    styles = _curve_styles(res)
    for ax, d in zip(_axes(fig, len(res.exp.data)), res.exp.data):
        vals = summary[(summary.kind == "value") & (summary.data == d.name)]
        paper_label = "paper (as printed)"
        reach = []  # the lowest and highest ends of the bars' error bars: the axis must show them
        for i, v in enumerate(variants):
            cells = vals[vals.variant == v.name].set_index("metric").reindex(metrics)
            err = np.array([bar_errors(res, d.name, v.name, m, n_resamples, confidence, seed) for m in metrics]).T
            ours = cells.ours.to_numpy(dtype=float)
            reach += [*(ours - err[0]), *(ours + err[1])]
            pos = x - 0.4 + width * (i + 0.5)
            style = styles[v.name]  # the curves' colours (and dashes as hatching): one legend for both figures
            ax.bar(pos, cells.ours.fillna(0), width, yerr=err if err.any() else None, capsize=2,
                   label=v.label or v.name, color=style["color"], hatch="//" if style["linestyle"] != "-" else None,
                   edgecolor="white" if style["linestyle"] != "-" else None)
            paper = cells.paper.to_numpy(dtype=float)
            if np.isfinite(paper).any():
                ax.plot(pos, paper, "kx", markersize=7, label=paper_label)
                paper_label = None
        ax.set_xticks(x, [ref.name(m) for m in metrics])
        ax.set_ylabel(_unit_label(res))
        ax.set_title(d.name, fontsize=9)
        # the paper's markers and the error bars too: never cut off
        shown = np.concatenate([vals.ours.to_numpy(float), vals.paper.to_numpy(float), np.asarray(reach, float)])
        finite = shown[np.isfinite(shown)]
        if len(finite):  # zoom on the range the bars and markers span; the label says where the axis starts
            low = max(0.0, float(finite.min()) - 0.1 * res.scale)
            low = 0.0 if low < 0.25 * res.scale else low  # a zoom that keeps most of the axis is no zoom
            ax.set_ylim(low, max(res.scale, float(finite.max())) * 1.02)
            if low > 0:
                ax.set_ylabel(f"{_unit_label(res)} (axis starts at {low:.3g}, not 0)")
        _legend(ax, len(variants) + 1)
    err_txt = "error bars: sd over folds" if multi_fold else (
        f"error bars: {confidence:.0%} bootstrap CI of the per-image mean"
        if res.exp.aggregation == "mean" else "no error bars (one pooled score per run)"
    )
    _suptitle(fig, res, f"metrics per variant; {err_txt}", data_label)
    _save(fig, path)
    return f"Metrics per variant ({err_txt})"


def _val_loss_what(res: ExperimentResults) -> str:
    """What val_loss was computed on: the scored images (part val) or held-out training images."""
    if all(d.part == "val" for d in res.exp.data):
        return "validation loss (on the scored validation images)"
    return "validation loss (on training images held out for checkpoint selection, not the scored test images)"


def draw_figures(res: ExperimentResults, summary: pd.DataFrame, ref: PaperRef, out_dir: Path,
                 data_label: str, n_resamples: int, confidence: float, seed: int) -> list[FigureOut]:
    """Draw every figure :func:`figure_kinds` picks into ``out_dir``; returns them in report order."""
    out_dir = Path(out_dir)
    figs = []
    if not res.runs:
        return figs

    def add(kind, name, title_fn):
        path = out_dir / name
        figs.append(FigureOut(kind, name, title_fn(path), path))

    for kind in figure_kinds(res):
        if kind == "sweep":
            add(kind, "fig_sweep.png", lambda p: _sweep(res, summary, ref, data_label, p))
        elif kind == "curves":
            add(kind, "fig_train_loss.png", lambda p: _curves(res, "train_loss", "training loss", data_label, p))
            add(kind, "fig_val_loss.png", lambda p: _curves(res, "val_loss", _val_loss_what(res), data_label, p))
        elif kind == "roc":
            add(kind, "fig_roc.png", lambda p: _roc(res, summary, data_label, p))
        elif kind == "bars":
            add(kind, "fig_bars.png",
                lambda p: _bars(res, summary, ref, data_label, p, n_resamples, confidence, seed))
    return figs


def write_plot_data(res: ExperimentResults, plots_dir: Path) -> None:
    """Loss curves and ROC points as CSV for ``dvc plots`` (``plots/curves``, ``plots/roc``)."""
    for run in res.runs.values():
        name = f"{res.exp_id}__{run.spec.run_id}.csv"
        if run.history is not None and {"train_loss", "val_loss"} <= set(run.history.columns):
            d = Path(plots_dir) / "curves"
            d.mkdir(parents=True, exist_ok=True)
            run.history[["epoch", "train_loss", "val_loss"]].to_csv(d / name, index=False)
        if run.roc is not None and len(run.roc):
            d = Path(plots_dir) / "roc"
            d.mkdir(parents=True, exist_ok=True)
            roc = run.roc.sort_values(["fpr", "tpr"])
            if len(roc) > ROC_POINTS:
                roc = roc.iloc[np.unique(np.linspace(0, len(roc) - 1, ROC_POINTS).round().astype(int))]
            roc[["fpr", "tpr"]].to_csv(d / name, index=False)
