"""``tcnet experiments``: the experiments and runs ``params.yaml`` declares -- what ``dvc repro`` will run.

    tcnet experiments                 one line per experiment: id, reproduces, #runs, data, title
    tcnet experiments --runs          ... and every run id with its model and overrides
    tcnet experiments --json          the same as JSON (with --runs: the runs too)

Each experiment ``<id>`` becomes the DVC stages ``train@<id>`` and ``evaluate@<id>`` (dvc.yaml's
``foreach: ${experiments}``), and one section of the compare report.
"""

from __future__ import annotations

import json

from tcnet.config import Params, RunSpec, deep_merge, expand_runs, load_params
from tcnet.tracking import flatten


def train_overrides(params: Params, spec: RunSpec) -> dict:
    """The ``train.*`` overrides the experiment and the run's variant declare (flattened keys)."""
    exp = params.experiment(spec.experiment)
    variant = next(v for v in exp.runs if v.name == spec.variant)
    return flatten(deep_merge(exp.train, variant.train))


def describe(params: Params, with_runs: bool = False) -> list[dict]:
    """Plain-data description of every experiment (and, with ``with_runs``, its runs)."""
    out = []
    for exp_id, exp in params.experiments.items():
        runs = expand_runs(params, exp_id)
        item = {
            "id": exp_id,
            "title": exp.title,
            "reproduces": exp.reproduces,
            "n_runs": len(runs),
            "datasets": [
                f"{d.train}->{d.eval_dataset}:{d.part}" if d.eval_dataset != d.train else f"{d.train}:{d.part}"
                for d in exp.data
            ],
            "variants": [v.name for v in exp.runs],
            "models": sorted({r.model for r in runs}),
            "folds": sorted({r.fold for r in runs}),
            "aggregation": exp.aggregation,
            "metrics": list(exp.metrics),
            "baseline_of": exp.baseline_of,
            "dvc_stages": [f"train@{exp_id}", f"evaluate@{exp_id}"],
        }
        if with_runs:
            item["runs"] = [
                {
                    "run_id": r.run_id,
                    "variant": r.variant,
                    "label": r.label,
                    "fold": r.fold,
                    "model": r.model,
                    "model_kwargs": r.model_kwargs,
                    "train_overrides": train_overrides(params, r),
                }
                for r in runs
            ]
        out.append(item)
    return out


def _fmt_kv(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def render_text(items: list[dict]) -> str:
    rows = [("id", "reproduces", "runs", "data", "title")]
    rows += [(i["id"], i["reproduces"], str(i["n_runs"]), " ".join(i["datasets"]), i["title"]) for i in items]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = ["  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4] for r in rows]
    total = sum(i["n_runs"] for i in items)
    lines.append(f"{len(items)} experiment(s), {total} run(s); DVC stages train@<id>, evaluate@<id>, then compare")
    for i in items:
        if "runs" not in i:
            continue
        lines += ["", f"{i['id']} ({i['reproduces']}): {i['n_runs']} run(s)"]
        for r in i["runs"]:
            extras = "; ".join(x for x in (_fmt_kv(r["model_kwargs"]), _fmt_kv(r["train_overrides"])) if x)
            lines.append(f"  {r['run_id']:<34} {r['model']:<12} {extras}".rstrip())
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--runs", action="store_true", help="also list every run id with its model and overrides")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args) -> int:
    from tcnet.models.registry import check_runs_models

    params = load_params(args.params)
    check_runs_models(params, str(args.params))  # what `tcnet train` would refuse, said now
    items = describe(params, with_runs=args.runs)
    print(json.dumps(items, indent=2, default=str) if args.json else render_text(items))
    return 0
