"""The paper's numbers for one experiment, read from ``paper/reported.yaml``.

Three shapes occur in that file, under the experiment's ``paper_key``:

- a table (``columns`` + ``rows``, each row naming its ``modules`` and one list of values per
  dataset): Table 3 -- absolute cells per (dataset, row, column);
- ``<variant>: {metric: value}`` (e.g. ``tcnet: {JA: 90.334, ...}``): absolute cells of that variant;
- ``relative: [{vs, metric, tcnet_minus_other}]``: only a *difference* is stated. These become
  :class:`Delta` s, shown next to our own difference; when ``vs`` is a method this project does not
  train (SSLS, ...), it is "reported elsewhere" and no absolute value is ever derived from it.

Names are matched loosely (``UNet++`` = run ``unetpp``, ``CHASEDB`` = ``chase_db1``, ``Acc`` = ``AC``).
Values are taken as printed: the paper prints percent for the skin experiments and fractions for
Table 3, which is also how our tables print them (``results.unit_for``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


from tcnet.config import ExperimentConfig, RunVariant
from tcnet.report.pairing import Inference, compare_groups

# How the paper (and the literature) may name each metric; the first alias is our name.
METRIC_ALIASES = {
    "AC": ("AC", "ACC", "ACCURACY", "PIXELAC"),
    "SE": ("SE", "SEN", "SENSITIVITY", "RECALL"),
    "SP": ("SP", "SPE", "SPEC", "SPECIFICITY"),
    "JA": ("JA", "JACCARD", "IOU"),
    "DI": ("DI", "DICE", "DSC"),
    "TJA": ("TJA",),
    "AUC": ("AUC",),
}


def _key(s: str) -> str:
    """Loose name key: lower case, '+' spelled 'p' (UNet++ -> unetpp, UNet3+ -> unet3p), alphanumerics only."""
    return re.sub(r"[^a-z0-9]", "", str(s).lower().replace("+", "p"))


def metric_of(name: str) -> Optional[str]:
    k = re.sub(r"[^A-Z]", "", str(name).upper())
    for metric, aliases in METRIC_ALIASES.items():
        if k in aliases:
            return metric
    return None


def match_variant(name: str, runs: tuple[RunVariant, ...]) -> Optional[RunVariant]:
    """The run that the paper's ``name`` refers to (by run name or label), else None."""
    k = _key(name)
    for v in runs:
        if k in (_key(v.name), _key(v.label or v.name)):
            return v
    return None


def _modules(v: RunVariant, exp: ExperimentConfig) -> frozenset[str]:
    """The Table 3 modules a run holds: from its label ("LKM+ETM"), else from use_etm/use_mfm."""
    tokens = [t.strip().upper() for t in re.split(r"[+,/ ]+", v.label or v.name) if t.strip()]
    if tokens and set(tokens) <= {"LKM", "ETM", "MFM"}:
        return frozenset(tokens)
    kw = {**exp.model_overrides, **v.model_overrides}
    if "use_etm" in kw and "use_mfm" in kw:
        return frozenset({"LKM"} | ({"ETM"} if kw["use_etm"] else set()) | ({"MFM"} if kw["use_mfm"] else set()))
    return frozenset()


def _match_data(name: str, exp: ExperimentConfig) -> Optional[str]:
    """The data pair (by name or evaluated dataset) that a paper dataset name means (CHASEDB = chase_db1)."""
    k = _key(name)
    for d in exp.data:
        for cand in (_key(d.name), _key(d.eval_dataset)):
            if k == cand or k == cand.rstrip("0123456789"):
                return d.name
    return None


@dataclass(frozen=True)
class Delta:
    """A difference the paper states: ``baseline - other`` on ``metric`` (as printed)."""

    data: str  # data pair name
    metric: str
    value: float
    other_name: str  # as the paper names it
    other_variant: str = ""  # our run name; "" = not trained here ("reported elsewhere")


@dataclass
class PaperRef:
    """What the paper states for one experiment."""

    key: str = ""
    baseline: str = ""  # our run the stated differences are about (baseline_of, else the run named TCNet)
    cells: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (data, variant, metric) -> value
    deltas: list[Delta] = field(default_factory=list)
    metric_names: dict[str, str] = field(default_factory=dict)  # our metric -> the paper's column name
    unmatched: list[str] = field(default_factory=list)  # entries no run matched (shown as notes)

    def name(self, metric: str) -> str:
        return self.metric_names.get(metric, metric)

    @property
    def empty(self) -> bool:
        return not self.cells and not self.deltas


def load_reported(path: str | Path) -> dict:
    from tcnet.config import read_yaml_mapping

    return read_yaml_mapping(path, "the paper's reported numbers file")


_NOT_EXPERIMENTS = ("source", "setup", "datasets", "claims")


def paper_key(reported: dict, exp_id: str, exp: ExperimentConfig) -> str:
    """Which of the paper's experiments ``exp_id`` reproduces: its ``paper_key``, else its id where
    ``reported`` has a section or claims under it; "" for an experiment of the user's own."""
    if exp.paper_key:
        return exp.paper_key
    named = set(reported) - set(_NOT_EXPERIMENTS) | set(reported.get("claims") or {})
    return exp_id if exp_id in named else ""


def paper_reference(reported: dict, exp_id: str, exp: ExperimentConfig) -> PaperRef:
    """The cells and differences ``reported`` states for experiment ``exp_id`` (empty if none)."""
    key = paper_key(reported, exp_id, exp)
    section = reported.get(key)
    ref = PaperRef(key=key if section else "")
    if not isinstance(section, dict):
        return ref
    all_data = [d.name for d in exp.data]
    baseline = match_variant(exp.baseline_of, exp.runs) if exp.baseline_of else match_variant("tcnet", exp.runs)
    ref.baseline = baseline.name if baseline else ""

    columns = [metric_of(c) for c in section.get("columns", [])]
    for c, m in zip(section.get("columns", []), columns):
        if m:
            ref.metric_names[m] = str(c)

    for row in section.get("rows", []) or []:
        mods = frozenset(str(m).upper() for m in row.get("modules", []))
        variant = next((v for v in exp.runs if mods and _modules(v, exp) == mods), None)
        for ds, values in row.items():
            if ds == "modules":
                continue
            data = _match_data(ds, exp)
            if variant is None or data is None:
                ref.unmatched.append(f"{'+'.join(sorted(mods))} on {ds}")
                continue
            for m, val in zip(columns, values):
                if m is not None and val is not None:
                    ref.cells[(data, variant.name, m)] = float(val)

    for item in section.get("relative", []) or []:
        m = metric_of(item.get("metric", ""))
        val = item.get("tcnet_minus_other")
        if m is None or val is None or baseline is None:
            ref.unmatched.append(f"relative {item}")
            continue
        other = match_variant(str(item.get("vs", "")), exp.runs)
        for data in all_data:
            ref.deltas.append(Delta(data, m, float(val), str(item.get("vs")), other.name if other else ""))

    for name, values in section.items():
        if name in ("columns", "rows", "relative") or not isinstance(values, dict):
            continue
        variant = match_variant(name, exp.runs)
        if variant is None:
            ref.unmatched.append(f"{name}: {values}")
            continue
        for col, val in values.items():
            m = metric_of(col)
            if m is not None and isinstance(val, (int, float)):
                for data in all_data:
                    ref.cells[(data, variant.name, m)] = float(val)
    return ref


# Qualitative claims in reported.yaml's ``setup``: the varied setting they are about, the key, a name.
SETUP_CLAIMS = (
    ("train.loss.ce_weight", "best_loss_ce_weight", "λ"),
    ("model.attention_placement", "best_attention_placement", "attention placement"),
)


def _headline(metrics) -> str:
    return "DI" if "DI" in metrics else ("AUC" if "AUC" in metrics else metrics[0])


_VERDICT_WORDS = re.compile(r"[(;] ?(agrees|disagrees|not resolved)\b")


def _verdict(directions: list[int], missing: list[str], *comparisons) -> str:
    """``agrees`` when every comparison the claim needs went its way with the CI clear of 0,
    ``disagrees`` when one went against it with the CI clear of 0, else ``not resolved`` -- also
    when a run the claim needs was not evaluated (a ranking without it would claim too much), a
    comparison has no paired scores (``comparisons`` without an interval), or too few images to
    judge (:attr:`~tcnet.report.pairing.Comparison.too_few`: the directions are 0 then)."""
    if any(d < 0 for d in directions):
        return "disagrees"
    if missing:
        return f"not resolved: {', '.join(missing)} not evaluated"
    if any(not c.has_interval for c in comparisons):
        return "not resolved: no paired per-image scores (or no spread) to test"
    few = next((c.too_few for c in comparisons if c.too_few), "")
    if few:
        return f"not resolved: {few}"
    if directions and all(d > 0 for d in directions):
        return "agrees"
    return "not resolved: a CI holds 0"


def _not_evaluated(res, data: str, variants) -> list[str]:
    """Declared runs of ``variants`` on ``data`` without evaluation outputs, as ``label (fold k)``."""
    labels = {r.name: r.label or r.name for r in res.exp.runs}
    out = []
    for s in res.specs:
        if s.data.name == data and s.variant in variants and s.run_id not in res.runs:
            many = len({t.fold for t in res.specs if t.data.name == data}) > 1
            out.append(f"{labels[s.variant]}{f' fold {s.fold}' if many else ''}")
    return out


def _not_judged(data: str, what: str) -> str:
    return (f"{data}: {what} is not judged here: the variants differ in model as well, so a difference "
            "between the setting's values is not the setting's alone.")


def _level_text(c) -> str:
    return (f"paired over {c.primary.n} folds' mean differences" if c.level == "folds"
            else f"paired over {c.primary.n} images") if c.primary is not None else "no paired scores"


def notes(reported: dict, res, summary, ref: PaperRef, inference=None) -> list[str]:
    """Plain-language our-vs-paper notes for one experiment (``res``: ExperimentResults).

    ``inference`` (:class:`tcnet.report.pairing.Inference`): the bootstrap settings and seed of the
    paired comparisons the verdicts rest on (default: 2000 resamples, 95 %, seed 0)."""
    from tcnet.report.results import varying_settings  # results imports nothing from here

    inference = inference or Inference(2000, 0.95, 0)
    exp = res.exp
    out = []
    values = summary[summary.kind == "value"]
    stated = values[values.paper.notna()]
    if not paper_key(reported, res.exp_id, exp):  # user-added: the paper's claims are about its experiments
        return ["Not one of the paper's experiments (no paper_key in params.yaml): no paper values or claims "
                "to compare with."]
    if len(stated):
        out.append(
            f"The paper prints {len(stated)} of these cells; ours - paper ranges from "
            f"{stated['diff'].min():+.3f} to {stated['diff'].max():+.3f} (mean |Δ| {stated['diff'].abs().mean():.3f})."
        )
    elif ref.deltas:
        out.append(
            f"The paper states no absolute values for {exp.reproduces} (its figure is lost), only the "
            "differences shown beside ours above."
        )
    else:
        out.append(
            f"The paper's numbers for {exp.reproduces} are not known (its figures are lost): there is no "
            "paper value to compare with; only its qualitative claims below, where it makes any."
        )
    if not values.ours.notna().any():
        return out + ["No evaluation outputs yet: run the train and evaluate stages of this experiment."]
    first_verdict = len(out)
    setup = reported.get("setup") or {}
    varying = varying_settings(res)
    m = _headline(exp.metrics)
    names = [r.name for r in exp.runs]
    mixed_models = "model.name" in varying  # then a setting's groups differ in model too: not its effect
    for d in exp.data:
        v = values[(values.data == d.name) & (values.metric == m)].dropna(subset=["ours"])
        if v.empty:
            continue
        best = v.loc[v.ours.idxmax()]
        for key, claim, name in SETUP_CLAIMS:
            if key in varying and claim in setup and mixed_models:
                out.append(_not_judged(d.name, f"the paper's best {name}"))
            elif key in varying and claim in setup:
                # Settings as groups of variants (a placement with and without deep supervision): the
                # claim is about the setting, so its comparisons are between groups.
                groups: dict[str, list[str]] = {}
                for n, x in zip(names, varying[key]):
                    groups.setdefault(str(x), []).append(n)
                mean = {g: v[v.variant.isin(members)].ours.mean() for g, members in groups.items()}
                ranked = sorted((g for g in mean if not math.isnan(mean[g])), key=lambda g: -mean[g])
                ours_best = ranked[0]
                paper_best = str(setup[claim])
                single = all(len(g) == 1 for g in groups.values())
                line = (f"{d.name}: the paper finds the best {name} = {paper_best}; ours: best {ref.name(m)} at "
                        f"{name} = {ours_best} ("
                        + (f"{best.label}, {best.ours:.3f})" if single else
                           f"mean over its {len(groups[ours_best])} variants {mean[ours_best]:.3f})"))
                each = "" if single else ", per image averaged over its variants"
                if paper_best in groups and ours_best != paper_best:
                    c = compare_groups(res, d.name, groups[ours_best], groups[paper_best], m, inference)
                    line += (f"; {name} = {ours_best} minus {name} = {paper_best}{each}: {c.text(res.digits)} ({_level_text(c)}; "
                             f"{_verdict([-c.direction], _not_evaluated(res, d.name, names), c)})")
                elif paper_best in groups and len(ranked) > 1:
                    runner = ranked[1]
                    c = compare_groups(res, d.name, groups[paper_best], groups[runner], m, inference)
                    line += (f"; minus the runner-up {name} = {runner}{each}: {c.text(res.digits)} ({_level_text(c)}; "
                             f"{_verdict([c.direction], _not_evaluated(res, d.name, names), c)})")
                out.append(line + ".")
        if "model.deep_supervision" in varying and "deep_supervision_better_off" in setup and mixed_models:
            out.append(_not_judged(d.name, "the paper's finding on deep supervision"))
        elif "model.deep_supervision" in varying and "deep_supervision_better_off" in setup:
            ds = dict(zip(names, varying["model.deep_supervision"]))
            off = [n for n in names if ds[n] is False]
            on = [n for n in names if ds[n] is True]
            c = compare_groups(res, d.name, off, on, m, inference)
            want = 1 if setup["deep_supervision_better_off"] else -1
            better = "without" if setup["deep_supervision_better_off"] else "with"
            out.append(
                f"{d.name}: the paper finds TCNet better {better} deep supervision; ours: {ref.name(m)} without "
                f"minus with, per image averaged over the other settings: {c.text(res.digits)} ({_level_text(c)}; "
                f"{_verdict([want * c.direction], _not_evaluated(res, d.name, off + on), c)})."
            )
    out += claim_notes(reported, res, values, ref, varying, m, inference)
    if any(_VERDICT_WORDS.search(x) for x in out[first_verdict:]):
        out.insert(first_verdict, (
            "Verdicts on the paper's claims below: agrees / disagrees only where the paired difference's "
            f"{inference.confidence:.0%} CI is clear of 0 (cross-validation: the CI over the folds' mean "
            "differences), else not resolved; the numbers are mean difference [CI]."))
    for u in ref.unmatched:
        out.append(f"reported.yaml entry with no matching run here: {u}.")
    return out


def claim_notes(reported: dict, res, values, ref: PaperRef, varying: dict, m: str, inference) -> list[str]:
    """Our verdict on each of the paper's qualitative claims (reported.yaml ``claims``) for the experiment."""
    exp = res.exp
    claims = (reported.get("claims") or {}).get(paper_key(reported, res.exp_id, exp)) or {}
    names = [r.name for r in exp.runs]
    placement = dict(zip(names, varying.get("model.attention_placement", [])))
    out = []
    for d in exp.data:
        v = values[(values.data == d.name)].dropna(subset=["ours"])
        if v.empty:
            continue
        if claims.get("every_placement_beats_none") and placement and "model.name" in varying:
            out.append(_not_judged(d.name, "the paper's finding that every attention placement beats none"))
        elif claims.get("every_placement_beats_none") and placement:
            groups: dict[str, list[str]] = {}
            for n in names:
                groups.setdefault(str(placement[n]), []).append(n)
            if "none" in groups and len(groups) > 1:
                parts, dirs, cs = [], [], []
                for p, members in groups.items():
                    if p == "none":
                        continue
                    c = compare_groups(res, d.name, members, groups["none"], m, inference)
                    dirs.append(c.direction)
                    cs.append(c)
                    parts.append(f"{p} {c.text(res.digits)}")
                ahead = sum(x > 0 for x in dirs)
                # The claim's sentence names the encoder/decoder units, the cross-layer connections and the
                # up-sampling modules; its Fig. 2/3 show other placements. Say which ones the verdict covers.
                unrun = [p for p in ("all_conv", "skip", "upsample") if p not in groups]
                scope = (f" The paper's sentence also names placements not run here ({', '.join(unrun)}); the "
                         "verdict covers the placements above only." if unrun else "")
                out.append(
                    f"{d.name}: the paper finds every attention placement better than none; ours, {ref.name(m)} of "
                    "each placement minus none, per image averaged over deep supervision on/off: "
                    + ", ".join(parts)
                    + f": {ahead} of {len(dirs)} clearly ahead ({_verdict(dirs, _not_evaluated(res, d.name, names), *cs)})."
                    + scope
                )
        ahead = claims.get("ahead_of") or {}
        on = (ahead.get("metrics") or {}).get(d.name) or []
        winner = match_variant(str(ahead.get("variant", "")), exp.runs) if ahead else None
        losers = [match_variant(str(o), exp.runs) for o in ahead.get("of", [])] if ahead else []
        if winner and on and losers and all(losers):
            label = {r.name: r.label or r.name for r in exp.runs}
            parts, dirs, every = [], [], []
            for metric in [x for x in on if x in exp.metrics]:
                for o in losers:
                    c = compare_groups(res, d.name, [winner.name], [o.name], metric, inference)
                    dirs.append(c.direction)
                    every.append(c)
                    parts.append(f"{ref.name(metric)} {c.text(res.digits)}")
            used = [winner.name] + [o.name for o in losers]
            out.append(
                f"{d.name}: the paper finds {label[winner.name]} ahead of {', '.join(label[o.name] for o in losers)} "
                f"on {', '.join(ref.name(x) for x in on if x in exp.metrics)}; ours, {label[winner.name]} minus "
                f"{', '.join(label[o.name] for o in losers)}: {', '.join(parts)} "
                f"({_verdict(dirs, _not_evaluated(res, d.name, used), *every)})."
            )
        tcnet = ref.baseline or (exp.baseline_of or "")
        best_on = [x for x in claims.get("tcnet_best_on", []) if x in exp.metrics]
        if best_on and tcnet in set(v.variant):
            others = [n for n in names if n != tcnet]
            label = {r.name: r.label or r.name for r in exp.runs}
            parts, dirs, every = [], [], []
            for metric in best_on:
                col = v[v.metric == metric].set_index("variant").ours
                if tcnet not in col.index:
                    continue
                rank = 1 + int((col > col[tcnet]).sum())
                ties = int((col == col[tcnet]).sum()) - 1
                cs = {o: compare_groups(res, d.name, [tcnet], [o], metric, inference) for o in others}
                dirs += [c.direction for c in cs.values()]
                every += list(cs.values())
                nodata = [label[o] for o, c in cs.items() if not c.has_interval]
                unresolved = [label[o] for o, c in cs.items() if c.direction == 0 and c.has_interval and not c.too_few]
                few = [label[o] for o, c in cs.items() if c.has_interval and c.too_few]
                behind = [label[o] for o, c in cs.items() if c.direction < 0]
                part = f"{ref.name(metric)} rank {rank} of {len(col)}{f' (tied with {ties})' if ties else ''}"
                if behind:
                    part += f", clearly behind {', '.join(behind)}"
                if unresolved:
                    part += f", CI holds 0 against {', '.join(unresolved)}"
                if few:
                    part += f", too few images to judge against {', '.join(few)}"
                if nodata:
                    part += f", no paired per-image scores against {', '.join(nodata)}"
                parts.append(part)
            if parts:
                level = next(iter(cs.values())).level if others else "images"
                out.append(
                    f"{d.name}: the paper finds TCNet ahead of every other method on "
                    f"{', '.join(ref.name(x) for x in best_on)}; ours ({'per-fold mean differences' if level == 'folds' else 'paired images'}): "
                    f"{'; '.join(parts)} ({_verdict(dirs, _not_evaluated(res, d.name, names), *every)})."
                )
    return out
