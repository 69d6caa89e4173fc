"""Command-line flags shared by the per-experiment stages (``tcnet train``, ``tcnet evaluate``)."""

from __future__ import annotations


def add_experiment_arguments(parser, verb: str) -> None:
    """``--params``, ``--experiment``, ``--run``, ``--preprocessed``, ``--splits``; ``verb`` says what
    the stage does to a run ("train", "evaluate") in the help of ``--run``."""
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--experiment", required=True, help="experiment id (params.yaml experiments:)")
    # extend: `--run A B` and `--run A --run B` both work
    parser.add_argument("--run", dest="runs", action="extend", nargs="+", metavar="RUN_ID",
                        help=f"{verb} only these runs (repeatable; default: every run of the experiment)")
    parser.add_argument("--preprocessed", default="outputs/preprocessed",
                        help="preprocess output folder (default: outputs/preprocessed)")
    parser.add_argument("--splits", default="outputs/splits", help="split output folder (default: outputs/splits)")


def add_no_mlflow(parser) -> None:
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
