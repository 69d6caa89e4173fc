"""The Kubeflow pipeline: per dataset fetch_data -> preprocess -> split; per run train -> evaluate, in one
loop per pair of datasets; gather between the loops; compare.

``build_pipeline(options)`` returns the ``@dsl.pipeline`` function. Everything that shapes the graph
is decided at compile time from ``params.yaml`` (the single source of truth):

* the pipeline parameters' defaults: ``params_yaml`` (the whole params file, so every task builds
  the same typed config with ``tcnet.config``), ``reported_yaml`` (paper/reported.yaml, for
  compare) and the data's git repository URL and revision (the last commit that changed
  ``data.dvc`` or ``.dvc/config``, so that a new commit of code alone reuses the cached data). The two YAML documents are passed as
  one-line YAML (flow style, same data; comments dropped): kfp 2.17's compiler copies string
  defaults verbatim into the package's header comment, so a multi-line default would make the
  compiled package invalid YAML. At submit time either form (block or flow YAML) is accepted;
* the data tasks: one ``data_params`` -> ``fetch_data`` -> ``preprocess`` -> ``split`` chain per
  dataset of ``preprocess.datasets``; a pod downloads its input artifacts whole, so each task gets
  its own dataset's data only (split and evaluate: preprocess's ``index``, not its arrays);
* the runs: ``tcnet.config.expand_runs`` over every experiment gives one ``{experiment, run_id}``
  item per (data pair x variant x fold); one ``dsl.ParallelFor`` per pair of datasets (trained on,
  evaluated on) trains and evaluates its runs, with that pair's artifacts; ``dsl.Collected``
  collects one loop, so a ``gather`` after each loop but the last merges the evaluations so far,
  and compare takes the last loop's and the last gather's. Changing ``experiments`` (or
  ``preprocess.datasets``) in ``params_yaml`` at submit time adds no runs, loops or data tasks:
  recompile (each run's train stage rejects a run id that its params no longer define; a data
  task for a dataset the params no longer preprocess fails in its ``check params``).

Cluster settings (not pipeline parameters, they shape the pods): GPUs per train task
(``set_accelerator_type`` + ``set_accelerator_limit``), CPU/memory requests, retries on train, a
checkpoint volume on train (``checkpoint_pvc``: a retried train task resumes from its last epoch),
``MLFLOW_TRACKING_URI`` on every task, ``TCNET_CPUS`` and ``OMP_NUM_THREADS`` from each task's CPU
request (a pod sees its node's cores), the DVC remote credentials from a Kubernetes secret on ``fetch_data``
and ``evaluate`` (which fetches the raw files its run is scored on). Caching: on
for the data stages, which get only the params sections they read (``data_params``): deterministic
functions of repo, revision and those sections; off for train, evaluate and compare -- each of them
writes this pipeline run's MLflow runs, which a cache hit would silently leave out (their
``pipeline_run_id`` input changes every run too).
"""

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import yaml
from kfp import dsl, kubernetes
from kfp.dsl import Metrics

from components.compare import compare
from components.data_params import data_params
from components.evaluate import evaluate
from components.fetch_data import fetch_data
from components.gather import gather
from components.preprocess import preprocess
from components.split import split
from components.train import train
from tcnet.config import Params, check_batch_split, expand_runs, flow_yaml, load_params
from tcnet.provenance import without_credentials
from tcnet.stages.split import check_packed_total, pack_split_file

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_NAME = "tcnet"
IN_CLUSTER_MLFLOW = "http://mlflow.mlflow.svc.cluster.local:5000"
CHECKPOINT_MOUNT = "/tcnet-checkpoints"  # where --checkpoint-pvc is mounted in train pods
# Secret keys -> environment variables for the DVC remote (S3 / MinIO; see docs/deploy.md).
DVC_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
# MLflow's client reads these for a server with basic auth (mlflow server --app-name basic-auth). Not
# optional: Kubernetes' optional would also make the secret optional, and a mistyped name would then
# run every task without credentials instead of failing to start.
MLFLOW_SECRET_KEYS = {k: k for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}


@dataclass(frozen=True)
class PipelineOptions:
    params: Path = ROOT / "params.yaml"
    reported: Path = ROOT / "paper" / "reported.yaml"
    data_repo_url: str = ""  # git URL the cluster can clone ("" = this checkout's origin remote)
    data_rev: str = ""  # git revision of the data ("" = the last commit that changed data.dvc or .dvc/config)
    gpus: int = 1  # GPUs per train task
    eval_gpus: int = 0  # GPUs per evaluate task (0: evaluate on the CPU)
    accelerator_type: str = "nvidia.com/gpu"
    gpu_node_label: str = ""  # "key=value" node selector for GPU tasks, e.g. nvidia.com/gpu.present=true
    gpu_toleration: bool = True  # GPU tasks tolerate the usual nvidia.com/gpu:NoSchedule taint of GPU nodes
    train_cpu: str = "4"
    train_memory: str = "16Gi"
    data_cpu: str = "2"
    data_memory: str = "8Gi"
    train_retries: int = 2
    checkpoint_pvc: str = ""  # a PVC mounted into train tasks: a retried task resumes from its last epoch
    parallelism: int = 0  # concurrent runs in the ParallelFor (0 = unlimited)
    mlflow_uri: str = IN_CLUSTER_MLFLOW
    dvc_secret: str = "tcnet-dvc-credentials"  # "" = no credentials (a public remote)
    mlflow_secret: str = ""  # a secret whose MLFLOW_TRACKING_* keys every task gets ("" = none: an open server)


def one_line_yaml(text: str) -> str:
    """The same YAML data on one line (flow style), for a pipeline parameter default."""
    return flow_yaml(yaml.safe_load(text))


def all_runs(params: Params) -> list:
    """Every run (RunSpec) of every experiment, in params order."""
    return [r for exp in params.experiments for r in expand_runs(params, exp)]


def _items(runs) -> list[dict[str, str]]:
    return [{"experiment": r.experiment, "run_id": r.run_id} for r in runs]


def run_groups(runs) -> dict[tuple[str, str], list]:
    """The runs by (training dataset, evaluated dataset), in params order: one runs loop each, whose
    train tasks download that training dataset's arrays and evaluate tasks that evaluated dataset's index."""
    groups: dict[tuple[str, str], list] = {}
    for r in runs:
        groups.setdefault((r.data.train, r.data.eval_dataset), []).append(r)
    return groups


def layout(params: Params) -> str:
    """The package's shape in words: the data chains and the runs loops (compile and submit print it)."""
    groups = run_groups(all_runs(params))
    loops = ", ".join(f"{t if t == e else f'{t} -> {e}'}: {len(g)}" for (t, e), g in groups.items())
    return (f"{len(params.preprocess.datasets)} dataset(s) fetched, preprocessed and split "
            f"({', '.join(params.preprocess.datasets)}); {sum(map(len, groups.values()))} runs in "
            f"{len(groups)} loop(s) by training -> evaluated dataset ({loops})")


def run_items(params_path: Path) -> list[dict[str, str]]:
    """One ``{"experiment", "run_id"}`` per run of every experiment, in params order."""
    return _items(all_runs(load_params(params_path)))


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def default_data_source(data_path: str = "data") -> tuple[str, str]:
    """This checkout's ``origin`` URL and the data's revision: the last commit that changed
    ``<data_path>.dvc`` or ``.dvc/config`` (the remote), else HEAD ("" where there is none). A commit
    of code alone then leaves ``fetch_data``'s inputs, and its cache entry, as they were."""
    rev = _git("log", "-1", "--format=%H", "--", f"{data_path}.dvc", ".dvc/config") or _git("rev-parse", "HEAD")
    return _git("remote", "get-url", "origin"), rev


def data_source(opts: "PipelineOptions", params: Optional[Params] = None) -> tuple[str, str]:
    """The data's git URL and revision for ``opts``: the options' own, else :func:`default_data_source`
    (asked only for what the options leave empty)."""
    if opts.data_repo_url and opts.data_rev:
        return opts.data_repo_url, opts.data_rev
    params = params or load_params(opts.params)
    repo, rev = default_data_source(params.preprocess.repo_data_path())
    return opts.data_repo_url or repo, opts.data_rev or rev


def cpu_threads(request: str, processes: int = 1) -> int:
    """Threads per process for a Kubernetes CPU request ("4", "2.5", "500m") shared by ``processes``:
    a pod's ``os.sched_getaffinity`` is its node's cores, not its request."""
    try:
        cores = float(request[:-1]) / 1000 if request.endswith("m") else float(request)
    except ValueError:
        raise ValueError(f"CPU request {request!r} is not a Kubernetes CPU quantity (e.g. 4, 2.5, 500m)") from None
    if not cores > 0:
        raise ValueError(f"CPU request {request!r} must be > 0")
    return max(1, int(cores // processes))


# Kubernetes' own rules: a resource name or label key (optional DNS-subdomain prefix / name), a label
# value, an object's name. Memory: what both Kubernetes and kfp's compiler take (whole numbers).
_MEMORY = re.compile(r"(\d+)(Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(\.{_DNS_LABEL})*")
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"


def _qualified(key: str) -> bool:
    """A Kubernetes qualified name: ``[prefix/]name``, the prefix a DNS subdomain (up to 253), the name up to 63."""
    prefix, slash, name = key.rpartition("/")
    return bool(re.fullmatch(_NAME, name)) and (not slash or bool(_SUBDOMAIN.fullmatch(prefix)))


def check_options(opts: PipelineOptions) -> None:
    """Refuse options Kubernetes would reject, or worse take (an empty accelerator type drops the
    GPU request and tolerates every NoSchedule taint), before anything is compiled or written."""
    if opts.gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {opts.gpus}")
    if opts.eval_gpus not in (0, 1):  # evaluate runs on one device: a second GPU would sit idle
        raise ValueError(f"eval_gpus must be 0 or 1, got {opts.eval_gpus}")
    if not _qualified(opts.accelerator_type or ""):
        raise ValueError(f"accelerator_type must be a Kubernetes resource name such as nvidia.com/gpu, got "
                         f"{opts.accelerator_type!r}")
    if opts.gpu_node_label:
        key, eq, value = opts.gpu_node_label.partition("=")
        if not eq or not _qualified(key) or (value and not re.fullmatch(_NAME, value)):
            raise ValueError(f"gpu_node_label must be KEY=VALUE with a Kubernetes label key and value (e.g. "
                             f"nvidia.com/gpu.present=true), got {opts.gpu_node_label!r}")
    for what, value in (("train_memory", opts.train_memory), ("data_memory", opts.data_memory)):
        m = _MEMORY.fullmatch(str(value))
        if m is None or int(m.group(1)) <= 0:
            raise ValueError(f"{what} {value!r} must be a whole number above 0 with an optional unit Ki, Mi, Gi, Ti "
                             "or M, G, T (e.g. 16Gi, 512Mi)")
    for value in (opts.train_cpu, opts.data_cpu):
        cpu_threads(str(value))  # its own error names the request
    if opts.train_retries < 0:
        raise ValueError(f"train_retries must be >= 0, got {opts.train_retries}")
    if opts.parallelism < 0:
        raise ValueError(f"parallelism must be >= 0 (0 = unlimited), got {opts.parallelism}")
    for what, value in (("dvc_secret", opts.dvc_secret), ("checkpoint_pvc", opts.checkpoint_pvc),
                        ("mlflow_secret", opts.mlflow_secret)):
        if value and not _SUBDOMAIN.fullmatch(value):
            raise ValueError(f"{what} {value!r} is not a Kubernetes object name (lower-case letters, digits, '-' "
                             "and '.', starting and ending with a letter or digit)")


def build_pipeline(opts: PipelineOptions = PipelineOptions()) -> Callable:
    check_options(opts)
    # Each train task's GPUs share every run's batch (tcnet train --nproc): refuse a split that fails
    # at compile time, not in a pod on a GPU node.
    params = load_params(opts.params)
    runs = all_runs(params)
    check_batch_split(runs, opts.gpus, "--gpus")
    params_text = one_line_yaml(Path(opts.params).read_text())
    # User split files are paths of this checkout, which no pod has: each dataset's split task
    # carries its own file, read now (tcnet.stages.split.pack_split_file; its cache key then holds it).
    embedded = {d: pack_split_file(d, f) for d, f in params.split.split_files.items()}
    check_packed_total(embedded)
    reported_text = one_line_yaml(Path(opts.reported).read_text())
    groups = run_groups(runs)
    repo_url, rev = data_source(opts, params)
    profile = params.profile

    def on_gpus(task, n: int):
        task.set_accelerator_type(opts.accelerator_type).set_accelerator_limit(n)
        if opts.gpu_toleration:
            kubernetes.add_toleration(task, key=opts.accelerator_type, operator="Exists", effect="NoSchedule")
        if opts.gpu_node_label:
            key, _, value = opts.gpu_node_label.partition("=")
            kubernetes.add_node_selector(task, label_key=key, label_value=value)

    def common(task, cache: bool, cpu: str, memory: str, processes: int = 1):
        task.set_env_variable("MLFLOW_TRACKING_URI", opts.mlflow_uri)
        if opts.mlflow_secret:  # a server with authentication: its credentials never in the package
            kubernetes.use_secret_as_env(task, secret_name=opts.mlflow_secret, secret_key_to_env=MLFLOW_SECRET_KEYS)
        # A pod's affinity is its node's cores: the request sets the task's CPUs (preprocess's pool,
        # tcnet.utils.cpus) and each process's threads (torch's; one process per GPU on train).
        task.set_env_variable("TCNET_CPUS", str(cpu_threads(cpu)))
        task.set_env_variable("OMP_NUM_THREADS", str(cpu_threads(cpu, processes)))
        task.set_caching_options(cache)
        # memory limit = request: a task over its share is OOM-killed alone rather than starving its
        # node (the in-memory /dev/shm counts against it too). No CPU limit: it would only throttle.
        return task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=f"TCNet: preprocess and split per dataset, {len(runs)} training runs in {len(groups)} loop(s) "
        f"(profile {profile}), evaluation, paper comparison. Parameters default to params.yaml at compile time.",
    )
    def tcnet_pipeline(
        params_yaml: str = params_text,
        reported_yaml: str = reported_text,
        # The full URL (a token in it included) is a run argument: `submit` and `run --local` pass it.
        data_repo_url: str = without_credentials(repo_url),
        data_rev: str = rev,
        dvc_remote: str = "",
    ) -> Metrics:
        def data_tasks(dataset: str):
            """check params -> fetch -> preprocess -> split of one dataset, each cached on that dataset's
            settings alone (data_params); a train task then downloads its own dataset's arrays only."""
            check = data_params(params_yaml=params_yaml, dataset=dataset)
            common(check, True, "1", "1Gi").set_display_name(f"check params ({dataset})")
            sections = check.outputs  # what each data task reads: its cache key
            fetch = fetch_data(params_yaml=sections["fetch_data"], repo_url=data_repo_url, rev=data_rev, remote=dvc_remote)
            common(fetch, True, opts.data_cpu, opts.data_memory).set_display_name(f"fetch {dataset} (DVC)")
            if opts.dvc_secret:
                kubernetes.use_secret_as_env(fetch, secret_name=opts.dvc_secret, secret_key_to_env=DVC_SECRET_KEYS)
            pre = preprocess(params_yaml=sections["preprocess"], raw=fetch.outputs["raw"])
            common(pre, True, opts.data_cpu, opts.data_memory).set_display_name(f"preprocess {dataset}")
            spl = split(params_yaml=sections["split"], index=pre.outputs["index"], embedded=embedded.get(dataset, ""))
            common(spl, True, "1", "2Gi").set_display_name(f"split {dataset}")
            return pre, spl

        data = {dataset: data_tasks(dataset) for dataset in params.preprocess.datasets}
        prior = None  # the gather of the loops so far
        for n, ((train_set, eval_set), group) in enumerate(groups.items(), 1):
            (pre, spl), (eval_pre, eval_spl) = data[train_set], data[eval_set]
            # No name=: a named ParallelFor breaks dsl.Collected on KFP backends (kubeflow/pipelines#13239).
            with dsl.ParallelFor(_items(group), parallelism=opts.parallelism) as run:
                tr = train(
                    params_yaml=params_yaml, experiment=run.experiment, run_id=run.run_id,
                    preprocessed=pre.outputs["preprocessed"], splits=spl.outputs["splits"],
                    eval_splits=eval_spl.outputs["splits"], gpus=opts.gpus, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                    checkpoint_dir=CHECKPOINT_MOUNT if opts.checkpoint_pvc else "",
                )
                common(tr, False, opts.train_cpu, opts.train_memory, processes=opts.gpus).set_display_name("train")
                if opts.parallelism and prior is not None:
                    tr.after(prior)  # one loop after another: never more than `parallelism` runs at once
                if opts.checkpoint_pvc:
                    kubernetes.mount_pvc(tr, pvc_name=opts.checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)
                on_gpus(tr, opts.gpus)
                tr.set_retry(num_retries=opts.train_retries, backoff_duration="60s", backoff_factor=2.0)
                kubernetes.empty_dir_mount(tr, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
                ev = evaluate(
                    params_yaml=params_yaml, experiment=run.experiment, run_id=run.run_id,
                    index=eval_pre.outputs["index"], splits=spl.outputs["splits"], eval_splits=eval_spl.outputs["splits"],
                    model=tr.outputs["model"], repo_url=data_repo_url, rev=data_rev, remote=dvc_remote,
                    pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                )
                common(ev, False, opts.data_cpu, opts.data_memory).set_display_name("evaluate")
                if opts.dvc_secret:  # it fetches the raw files it scores on from the DVC remote
                    kubernetes.use_secret_as_env(ev, secret_name=opts.dvc_secret, secret_key_to_env=DVC_SECRET_KEYS)
                if opts.eval_gpus:
                    on_gpus(ev, opts.eval_gpus)
            earlier = {"prior": prior.outputs["merged"]} if prior is not None else {}
            if n < len(groups):  # dsl.Collected collects one loop: merge this one with the loops before it
                prior = gather(evals=dsl.Collected(ev.outputs["eval_dir"]), **earlier)
                common(prior, False, "1", "2Gi").set_display_name(f"gather evaluations ({n} of {len(groups) - 1})")

        cmp = compare(
            params_yaml=params_yaml, reported_yaml=reported_yaml,
            evals=dsl.Collected(ev.outputs["eval_dir"]), pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **earlier,
        )
        common(cmp, False, opts.data_cpu, opts.data_memory)
        return cmp.outputs["metrics"]

    return tcnet_pipeline


def check_cluster_tracking(uri: str) -> None:
    """A package for a cluster needs an MLflow server: with an empty, sqlite or file URI every pod
    would write its runs into a store inside itself, gone when the pod ends."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and (not parts.hostname or " " in parts.netloc):
        raise ValueError(f"--mlflow-uri {uri!r}: no valid host in the URL (e.g. {IN_CLUSTER_MLFLOW})")
    if parts.username or parts.password:
        raise ValueError(
            f"--mlflow-uri {without_credentials(uri)!r} (credentials left out here): a user or token in the URL "
            "would be written into every task of the package; give the pods MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD from a Kubernetes secret instead: --mlflow-secret NAME "
            "(docs/deploy.md §5)")
    if parts.scheme not in ("http", "https", "databricks"):
        raise ValueError(
            f"--mlflow-uri {uri!r}: a cluster's tasks need an MLflow tracking server (http://... or "
            f"https://...; default {IN_CLUSTER_MLFLOW}); a local store would be written inside each pod and "
            "lost with it (docs/deploy.md). For a run on this machine use 'python -m pipeline run --local'"
        )
    host = (parts.hostname or "").lower()
    try:
        address = ipaddress.ip_address(host)
        loopback = address.is_loopback or address.is_unspecified  # 0.0.0.0 too: the pod itself
    except ValueError:
        loopback = host == "localhost" or host.endswith(".localhost")
    if loopback:
        raise ValueError(
            f"--mlflow-uri {uri!r}: in a pod, {host} is the pod itself, not this machine's port-forward; "
            f"give the server's in-cluster address (default {IN_CLUSTER_MLFLOW}, docs/deploy.md §5)"
        )


def compile_pipeline(opts: PipelineOptions, out: Path) -> Path:
    """Write the pipeline package for a cluster (compile, submit): it requires a server MLflow URI."""
    from kfp import compiler

    check_cluster_tracking(opts.mlflow_uri)
    pipeline = build_pipeline(opts)  # every check before the output's folder is made
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, package_path=str(out))
    return out


def local_run(opts: PipelineOptions, workdir: Path, arguments: Optional[dict] = None):
    """Run the whole pipeline on this machine with the KFP local runner (tasks as subprocesses).

    ``kfp.local.SubprocessRunner(use_venv=False)``: each task runs in this Python environment (which
    has tcnet), nothing is pip-installed. Accelerator/CPU/memory settings have no effect locally (kfp
    warns once per task), nor do the Kubernetes settings (secret, toleration, /dev/shm); expected.
    An sqlite MLflow store is created here, once, before the runs loop fans out: MLflow migrates a
    new sqlite database's schema on first use, and two training tasks doing that at once collide.
    Returns the pipeline run's folder under ``<workdir>/runs``.
    """
    from kfp import local

    from tcnet.tracking import init_store, sqlite_path

    if opts.checkpoint_pvc:
        raise ValueError(f"checkpoint_pvc {opts.checkpoint_pvc!r}: the local runner mounts no volumes; train tasks "
                         "here write their checkpoints in the run's own outputs")
    pipeline = build_pipeline(opts)  # every option and the params checked before anything is written
    if sqlite_path(opts.mlflow_uri) is not None:
        init_store(opts.mlflow_uri)

    workdir = Path(workdir).resolve()
    root = workdir / "runs"
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    pipeline(**(arguments or {}))
    new = sorted(set(root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    return new[-1] if new else None
