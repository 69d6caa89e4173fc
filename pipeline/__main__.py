"""``python -m pipeline compile|run|submit``: compile the Kubeflow pipeline, run it here, or submit it.

    python -m pipeline compile [--params params.yaml] [--out pipeline.yaml]
    python -m pipeline run --local [--params params.yaml] [--workdir outputs/kfp]
    python -m pipeline submit --host URL [--experiment-name tcnet] [--params params.yaml]

Parameter defaults come from the params file at compile time; see docs/deploy.md.
"""

import argparse
import os
import sys
import tempfile
from dataclasses import fields, replace
from pathlib import Path

from pipeline.pipeline import ROOT, PipelineOptions, compile_pipeline, local_run


def _add_build_options(p: argparse.ArgumentParser, *, local: bool = False) -> None:
    d = PipelineOptions()
    g = p.add_argument_group("pipeline (compile-time) options")
    g.add_argument("--params", type=Path, default=d.params, help="params file: parameter defaults and the runs (default: %(default)s)")
    g.add_argument("--reported", type=Path, default=d.reported, help="the paper's reported numbers (default: %(default)s)")
    g.add_argument("--data-repo-url", default=str(ROOT) if local else "",
                   help="git repository holding data.dvc (default: " + ("this checkout" if local else "this checkout's origin remote") + ")")
    g.add_argument("--data-rev", default="",
                   help="git revision of the data (default: " + ("the working tree" if local else
                   "this checkout's last commit that changed data.dvc or .dvc/config") + ")")
    g.add_argument("--gpus", type=int, default=d.gpus,
                   help="GPUs per train task; they share each step's batch, so it must divide every run's "
                   "train.batch_size (default: %(default)s)")
    g.add_argument("--eval-gpus", type=int, choices=(0, 1), default=d.eval_gpus,
                   help="GPUs per evaluate task; 0 evaluates on the CPU (default: %(default)s)")
    ignored = " (ignored by the local runner, which runs every task on this machine)" if local else ""
    g.add_argument("--accelerator-type", default=d.accelerator_type, help="GPU resource of the GPU tasks" + ignored + " (default: %(default)s)")
    g.add_argument("--gpu-node-label", default=d.gpu_node_label, metavar="KEY=VALUE",
                   help="node selector for the GPU tasks (train; evaluate with --eval-gpus 1), e.g. nvidia.com/gpu.present=true"
                   + ignored + " (default: none)")
    g.add_argument("--no-gpu-toleration", dest="gpu_toleration", action="store_false",
                   help="do not tolerate the <accelerator-type>:NoSchedule taint on the GPU tasks" + ignored)
    g.add_argument("--train-cpu", default=d.train_cpu, help="CPU request of a train task; its processes share it as threads (OMP_NUM_THREADS) and "
                   "DataLoader workers, capped to (request // GPUs) - 1 per process (default: %(default)s)")
    g.add_argument("--train-memory", default=d.train_memory, help="memory request of a train task" + ignored + " (default: %(default)s)")
    g.add_argument("--data-cpu", default=d.data_cpu, help="CPU request of the fetch, preprocess, evaluate and compare tasks; also "
                   "their threads and preprocess's workers (split and gather take 1 CPU, the params check 1) (default: %(default)s)")
    g.add_argument("--data-memory", default=d.data_memory, help="memory request of the fetch, preprocess, evaluate and compare "
                   "tasks (split and gather take 2Gi, the params check 1Gi)" + ignored + " (default: %(default)s)")
    g.add_argument("--train-retries", type=int, default=0 if local else d.train_retries,
                   help="retries of a failed train task (default: %(default)s)")
    g.add_argument("--parallelism", type=int, default=d.parallelism, help="concurrent runs, 0 = unlimited (default: %(default)s); with N > 0 the runs loops "
                   "(one per pair of training and evaluated dataset) run one after another, N runs at a time")
    if not local:  # kfp.local ignores volume mounts
        g.add_argument("--checkpoint-pvc", default=d.checkpoint_pvc, metavar="NAME",
                       help="PersistentVolumeClaim mounted into every train task (ReadWriteMany where train pods "
                       "share it across nodes): runs train there, so a train task retried in the same pipeline run "
                       "resumes from its last epoch instead of epoch 0 (default: none)")
    mlflow_default = os.environ.get("MLFLOW_TRACKING_URI", "") if local else d.mlflow_uri
    g.add_argument("--mlflow-uri", default=mlflow_default,
                   help="MLFLOW_TRACKING_URI of every task (default: "
                   + ("$MLFLOW_TRACKING_URI, else mlflow.tracking_uri of the params" if local else "%(default)s") + ")")
    g.add_argument("--dvc-secret", default=d.dvc_secret,
                   help="Kubernetes secret with the DVC remote's AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; '' = none"
                   + ignored + " (default: %(default)s)")
    g.add_argument("--mlflow-secret", default=d.mlflow_secret, metavar="NAME",
                   help="Kubernetes secret whose MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD keys every "
                   "task gets, for an MLflow server with basic auth; credentials in --mlflow-uri are refused"
                   + ignored + " (default: none)")


def options(args: argparse.Namespace) -> PipelineOptions:
    return PipelineOptions(**{f.name: getattr(args, f.name) for f in fields(PipelineOptions) if hasattr(args, f.name)})


def cmd_compile(args) -> int:
    from pipeline.pipeline import data_source, layout

    from tcnet.config import load_params
    from tcnet.provenance import without_credentials

    url, rev = data_source(options(args))
    opts = replace(options(args), data_repo_url=url, data_rev=rev)  # git asked once: build_pipeline takes these
    out = compile_pipeline(opts, args.out)
    params = load_params(opts.params)
    print(f"compiled {out}: {layout(params)}")
    if params.split.split_files:  # their text is in the package: an edit needs a new compile
        print("user split files read into the package: " + ", ".join(
            f"{d} ({f})" for d, f in params.split.split_files.items()) + "; compile again after editing one")
    if url != without_credentials(url):
        print("note: the data repository URL's user/token part is not written into the package; pass the full "
              "URL as the run's data_repo_url argument when you start a run", file=sys.stderr)
    if not url:
        print("note: no --data-repo-url and no git remote 'origin': the package's data_repo_url default is empty; "
              "set it when you start a run", file=sys.stderr)
    elif _local_path(url):
        print(f"note: the package's data_repo_url default {url!r} is a path on this machine, which no pod can "
              "clone; set a git URL when you start a run (or compile with --data-repo-url)", file=sys.stderr)
    return 0


def _local_path(url: str) -> bool:
    """A repository given as a path (``/work/repo``, ``../repo``, ``file:///...``), not a URL a cluster
    reaches (``https://``, ``ssh://``, scp-style ``[user@]host:path``). Git's own rule: a ``:`` with
    no ``/`` before it is scp-style ssh."""
    if url.startswith("file:"):
        return True
    if "://" in url:
        return False
    colon = url.find(":")
    return colon <= 0 or "/" in url[:colon]


def cmd_run(args) -> int:
    if not args.local:
        print("pipeline run: only --local is supported here; use 'submit --host URL' for a cluster", file=sys.stderr)
        return 2
    if not args.mlflow_uri:
        from tcnet.config import load_params

        args.mlflow_uri = load_params(args.params).mlflow.tracking_uri
    if args.mlflow_uri.startswith("sqlite:///") and not args.mlflow_uri.startswith("sqlite:////"):
        args.mlflow_uri = "sqlite:///" + str(ROOT / args.mlflow_uri[len("sqlite:///"):])  # as tcnet.tracking does
    opts = options(args)
    run_dir = local_run(opts, args.workdir, {"data_repo_url": args.data_repo_url, "data_rev": args.data_rev})
    print(f"pipeline run finished: {run_dir}")
    return 0


def submit(host: str, opts: PipelineOptions, *, experiment_name: str, run_name: str = "", arguments=None,
           namespace: str = "", enable_caching=None):
    """Compile and submit one run with ``kfp.Client(host).create_run_from_pipeline_package``. Returns
    ``(result, created)``: ``created`` when the KFP experiment did not exist and was made now (a
    mistyped ``--experiment-name`` shows up in the output, not as a stray experiment found later)."""
    import kfp

    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(opts, Path(tmp) / "pipeline.yaml")
        client = kfp.Client(host=host, namespace=namespace or "kubeflow")
        try:
            experiment = client.get_experiment(experiment_name=experiment_name, namespace=namespace or None)
            created = False
        except ValueError as e:  # kfp: "No experiment is found with name ..."
            if not str(e).startswith("No experiment is found"):
                raise
            experiment = client.create_experiment(name=experiment_name, namespace=namespace or None)
            created = True
        result = client.create_run_from_pipeline_package(
            str(package), arguments=arguments or {}, run_name=run_name or None,
            experiment_id=experiment.experiment_id, namespace=namespace or None, enable_caching=enable_caching,
        )
    if not getattr(result, "run_id", None):  # an HTML page or another service answered the calls
        raise ValueError(f"{host} answered, but no run id came back: is it the Kubeflow Pipelines API endpoint "
                         "(e.g. http://localhost:8080 after 'kubectl port-forward svc/ml-pipeline-ui 8080:80')?")
    return result, created


def cmd_submit(args) -> int:
    from pipeline.pipeline import data_source, layout

    from tcnet.config import load_params

    opts = options(args)
    repo, rev = data_source(opts)
    if not repo:
        print("pipeline submit: no git remote 'origin' here: pass --data-repo-url (a git URL the cluster can clone)",
              file=sys.stderr)
        return 2
    if _local_path(repo):
        print(f"pipeline submit: the data repository {repo!r} is a path on this machine, which no pod can clone: "
              "pass --data-repo-url (a git URL the cluster can reach)", file=sys.stderr)
        return 2
    opts = replace(opts, data_repo_url=repo, data_rev=rev)  # resolved once: the package's defaults are these
    data = {"data_repo_url": repo, "data_rev": rev}  # recorded on the run
    result, created = submit(args.host, opts, experiment_name=args.experiment_name, run_name=args.run_name,
                             arguments=data, namespace=args.namespace, enable_caching=False if args.no_cache else None)
    new = ", created now: it did not exist" if created else ""
    print(f"submitted run {result.run_id} to {args.host} (experiment {args.experiment_name!r}{new}; "
          f"data {data['data_repo_url']}@{data['data_rev'] or 'HEAD'}): {layout(load_params(opts.params))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("compile", help="write the pipeline package (YAML)")
    _add_build_options(p)
    p.add_argument("--out", type=Path, default=Path("pipeline.yaml"), help="(default: %(default)s)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run the whole pipeline on this machine (kfp.local SubprocessRunner)")
    p.add_argument("--local", action="store_true", help="run with the KFP local runner (required)")
    p.add_argument("--workdir", type=Path, default=ROOT / "outputs" / "kfp", help="where task outputs go (default: %(default)s)")
    _add_build_options(p, local=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="compile and submit a run to a Kubeflow Pipelines endpoint")
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080 after a port-forward")
    p.add_argument("--experiment-name", default="tcnet", help="KFP experiment (default: %(default)s)")
    p.add_argument("--run-name", default="", help="(default: pipeline file name and time)")
    p.add_argument("--namespace", default="", help="namespace (multi-user Kubeflow only)")
    p.add_argument("--no-cache", action="store_true", help="disable caching for every task of this run")
    _add_build_options(p)
    p.set_defaults(func=cmd_submit)
    return parser


def _unreachable(e: Exception) -> bool:
    """A failure to reach the Kubeflow Pipelines API (urllib3 / the kfp API client), not a bug here."""
    return type(e).__module__.split(".")[0] in ("urllib3", "requests", "kfp_server_api")


def _server_reason(e: Exception) -> str:
    """The message of a KFP API error's JSON body (``{"error": ..., "message": ...}``), else its first line."""
    import json

    body = getattr(e, "body", None) or ""
    try:
        data = json.loads(body)
        text = data.get("message") or data.get("error") or body
    except (ValueError, TypeError, AttributeError):
        text = body if isinstance(body, str) else ""
    return (str(text).strip().splitlines() or ["(no reason given)"])[0][:300]


def main(argv=None) -> int:
    from tcnet.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:  # a user can act on these: one line, as tcnet does
        print(f"python -m pipeline {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"python -m pipeline {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not _unreachable(e):
            raise
        host = getattr(args, "host", "?")
        status = getattr(e, "status", None)
        if status:  # the server answered and refused: its own reason, not "unreachable"
            print(f"python -m pipeline {args.command}: error: the Kubeflow Pipelines API at {host} refused the "
                  f"request: HTTP {status} {getattr(e, 'reason', '') or ''}: {_server_reason(e)}", file=sys.stderr)
            return 2
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"python -m pipeline {args.command}: error: cannot reach the Kubeflow Pipelines API at "
              f"{host}: {reason}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
