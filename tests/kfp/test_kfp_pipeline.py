"""The compiled pipeline package: stages, the run loop, GPU requests, parameters, secrets, env."""

import functools
from pathlib import Path

import pytest
import yaml

from tcnet.config import expand_runs, load_params

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("data_params", "fetch_data", "preprocess", "split", "train", "evaluate", "gather", "compare")


def executors(spec) -> dict:
    return spec["deploymentSpec"]["executors"]


def of(kind: str, names) -> list[str]:
    """The names of one component's tasks or executors: ``train``, ``train-2``, ...  (KFP numbers
    each use of a component after the first)."""
    return [n for n in names if n == kind or (n.startswith(kind + "-") and n[len(kind) + 1:].isdigit())]


def root_tasks(spec) -> dict:
    return spec["root"]["dag"]["tasks"]


@functools.lru_cache
def project_runs() -> dict:
    """Every run of params.yaml by (experiment, run_id)."""
    params = load_params(ROOT / "params.yaml")
    return {(e, r.run_id): r for e in params.experiments for r in expand_runs(params, e)}


def pair(loop: dict) -> str:
    """A runs loop's pair of datasets from its items: "isic2017", "isic2017 to ph2"."""
    runs = project_runs()
    items = yaml.safe_load(loop["parameterIterator"]["items"]["raw"])
    pairs = {(runs[i["experiment"], i["run_id"]].data.train, runs[i["experiment"], i["run_id"]].data.eval_dataset)
             for i in items}
    assert len(pairs) == 1, pairs
    (train_set, eval_set), = pairs
    return train_set if train_set == eval_set else f"{train_set} to {eval_set}"


def loops(spec) -> dict[str, tuple[str, dict]]:
    """Each runs loop by its pair of datasets ("isic2017", "isic2017 to ph2"): (task name, task), in
    the pipeline's order (for-loop-2, for-loop-4, ..., for-loop-10)."""
    found = [(n, t) for n, t in root_tasks(spec).items() if "parameterIterator" in t]
    return {pair(t): (n, t) for n, t in sorted(found, key=lambda nt: int(nt[0].rsplit("-", 1)[1]))}


def body(spec, loop: dict) -> dict:
    """A loop's tasks by component (train, evaluate), whatever number KFP gave them."""
    return {t["componentRef"]["name"].removeprefix("comp-").rstrip("-0123456789"): t
            for t in spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"].values()}


def loop_tasks(spec) -> list[dict]:
    return [t for _, loop in loops(spec).values() for t in body(spec, loop).values()]


def producer(spec, loop: dict, task: dict, name: str) -> tuple[str, str]:
    """(display name of the root task, output key) that feeds artifact input ``name`` of a loop's task."""
    channel = task["inputs"]["artifacts"][name]["componentInputArtifact"]
    src = loop["inputs"]["artifacts"][channel]["taskOutputArtifact"]
    return root_tasks(spec)[src["producerTask"]]["taskInfo"]["name"], src["outputArtifactKey"]


def test_every_stage_component_is_in_the_package(compiled):
    _, spec, _ = compiled
    for stage in STAGES:
        comp = "comp-" + stage.replace("_", "-")
        assert comp in spec["components"], f"{comp} missing"
        assert f"exec-{stage.replace('_', '-')}" in executors(spec)
    for ex in executors(spec).values():
        assert ex["container"]["image"] == "ghcr.io/tcnet/tcnet:0.1.0"
        assert "pip install" not in " ".join(ex["container"]["command"])  # the image has tcnet and kfp


def test_one_runs_loop_per_pair_of_datasets_covers_every_run_once(compiled):
    _, spec, _ = compiled
    runs = project_runs()
    seen = []
    for _, loop in loops(spec).values():  # loops() asserts one pair of datasets per loop
        assert "name" not in loop["taskInfo"] or loop["taskInfo"]["name"].startswith("for-loop")  # kubeflow/pipelines#13239
        items = yaml.safe_load(loop["parameterIterator"]["items"]["raw"])
        seen += [(i["experiment"], i["run_id"]) for i in items]
        tasks = body(spec, loop)
        assert set(tasks) == {"train", "evaluate"}
        assert tasks["train"]["inputs"]["parameters"]["run_id"]["parameterExpressionSelector"] == 'parseJson(string_value)["run_id"]'
    assert sorted(seen) == sorted(runs) and len(seen) == len(runs)
    assert len(loops(spec)) == 5  # isic2017, isic2017 -> ph2, isic2018, drive, chase_db1


def test_compile_says_what_the_package_holds(tmp_path, capsys):
    from pipeline.__main__ import main

    assert main(["compile", "--out", str(tmp_path / "p.yaml"), "--data-repo-url", "https://git.example.com/t.git",
                 "--data-rev", "v1"]) == 0
    spec, _ = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    counts = ", ".join(f"{pair.replace(' to ', ' -> ')}: {len(yaml.safe_load(loop['parameterIterator']['items']['raw']))}"
                       for pair, (_, loop) in loops(spec).items())
    out = capsys.readouterr().out
    assert f"40 runs in 5 loop(s) by training -> evaluated dataset ({counts})" in out, out
    assert "5 dataset(s) fetched, preprocessed and split (isic2017, isic2018, ph2, drive, chase_db1)" in out


def test_each_pod_downloads_its_own_datasets_data_only(compiled):
    """train: its training dataset's arrays; evaluate: the evaluated dataset's index (the manifest, not
    the arrays); both the split of either dataset; split: the index alone."""
    _, spec, _ = compiled
    for datasets, (_, loop) in loops(spec).items():
        train_set, _, eval_set = datasets.partition(" to ")
        eval_set = eval_set or train_set
        tasks = body(spec, loop)
        assert set(tasks["train"]["inputs"]["artifacts"]) == {"preprocessed", "splits", "eval_splits"}
        assert producer(spec, loop, tasks["train"], "preprocessed") == (f"preprocess {train_set}", "preprocessed")
        assert set(tasks["evaluate"]["inputs"]["artifacts"]) == {"index", "splits", "eval_splits", "model"}
        assert producer(spec, loop, tasks["evaluate"], "index") == (f"preprocess {eval_set}", "index")
        for task in (tasks["train"], tasks["evaluate"]):
            assert producer(spec, loop, task, "splits") == (f"split {train_set}", "splits")
            assert producer(spec, loop, task, "eval_splits") == (f"split {eval_set}", "splits")
    tasks = root_tasks(spec)
    datasets = load_params(ROOT / "params.yaml").preprocess.datasets
    for name in of("split", tasks):
        (src,) = [a["taskOutputArtifact"] for a in tasks[name]["inputs"]["artifacts"].values()]
        assert src["outputArtifactKey"] == "index"
        assert tasks[src["producerTask"]]["taskInfo"]["name"] == tasks[name]["taskInfo"]["name"].replace("split", "preprocess")
    # one chain of data tasks per dataset, each told its dataset
    assert sorted(tasks[n]["inputs"]["parameters"]["dataset"]["runtimeValue"]["constant"] for n in of("data-params", tasks)) \
        == sorted(datasets)
    assert len(of("fetch-data", tasks)) == len(of("preprocess", tasks)) == len(of("split", tasks)) == len(datasets)


def test_compare_collects_every_loop_through_a_chain_of_gathers(compiled):
    _, spec, _ = compiled
    tasks = root_tasks(spec)
    loop_names = [n for n, _ in loops(spec).values()]
    gathers = of("gather", tasks)
    assert len(gathers) == len(loop_names) - 1
    fed = []
    for g in gathers:
        arts = tasks[g]["inputs"]["artifacts"]
        fed.append(arts["evals"]["taskOutputArtifact"]["producerTask"])
        assert ("prior" in arts) == (g != "gather")  # the first gather starts the chain
    compare = tasks["compare"]["inputs"]["artifacts"]
    fed.append(compare["evals"]["taskOutputArtifact"]["producerTask"])
    assert sorted(fed) == sorted(loop_names)  # every loop collected exactly once
    last = compare["prior"]["taskOutputArtifact"]
    assert last["outputArtifactKey"] == "merged" and last["producerTask"] in gathers
    # with the default (unlimited) parallelism the loops run side by side: a loop waits for data only
    for name in loop_names:
        assert not of("gather", tasks[name].get("dependentTasks", [])), name


def test_parallelism_runs_the_loops_one_after_another(tmp_path):
    """--parallelism N caps the runs at once: with several loops side by side it would be N per loop."""
    from pipeline.pipeline import PipelineOptions, compile_pipeline

    out = compile_pipeline(PipelineOptions(parallelism=3, data_repo_url="https://git.example.com/t.git", data_rev="v1"),
                           tmp_path / "p.yaml")
    spec, _ = yaml.safe_load_all(out.read_text())
    tasks = root_tasks(spec)
    waits = []
    for _, (name, loop) in loops(spec).items():
        assert loop["iteratorPolicy"]["parallelismLimit"] == 3
        waits.append(of("gather", tasks[name].get("dependentTasks", [])))
    assert waits[0] == [] and all(len(w) == 1 for w in waits[1:])
    assert len({w[0] for w in waits[1:]}) == len(waits) - 1


def test_one_loop_needs_no_gather(tmp_path):
    from pipeline.pipeline import PipelineOptions, compile_pipeline

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["experiments"] = {"loss_sweep": params["experiments"]["loss_sweep"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = compile_pipeline(PipelineOptions(params=tmp_path / "params.yaml", data_repo_url="https://git.example.com/t.git",
                                           data_rev="v1"), tmp_path / "p.yaml")
    spec, _ = yaml.safe_load_all(out.read_text())
    assert len(loops(spec)) == 1 and not of("gather", root_tasks(spec))
    assert set(root_tasks(spec)["compare"]["inputs"]["artifacts"]) == {"evals"}


def test_train_requests_gpus_cpu_memory_and_retries(compiled):
    _, spec, platform = compiled
    assert len(of("exec-train", executors(spec))) == len(loops(spec))
    for name in of("exec-train", executors(spec)):
        res = executors(spec)[name]["container"]["resources"]
        assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert res["accelerator"]["resourceCount"] == "2"  # --gpus 2
        assert float(res["resourceCpuRequest"]) > 0 and res["resourceMemoryRequest"]
        assert res["resourceMemoryLimit"] == res["resourceMemoryRequest"] and "resourceCpuLimit" not in res
        k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][name]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
        assert any(m["mountPath"] == "/dev/shm" for m in k8s["emptyDirMounts"])
    for _, loop in loops(spec).values():
        train = body(spec, loop)["train"]
        assert train["retryPolicy"]["maxRetryCount"] == 2
        assert train["inputs"]["parameters"]["gpus"]["runtimeValue"]["constant"] == 2
    gpu_free = [n for n, e in executors(spec).items() if "accelerator" in e["container"]["resources"]]
    assert sorted(gpu_free) == sorted(of("exec-train", executors(spec)))  # evaluate on the CPU by default


def test_caching_on_for_data_stages_off_for_mlflow_stages(compiled):
    _, spec, _ = compiled
    tasks = root_tasks(spec)
    for kind in ("data-params", "fetch-data", "preprocess", "split"):
        assert of(kind, tasks)
        for t in of(kind, tasks):
            assert tasks[t]["cachingOptions"].get("enableCache") is True, t
    for t in ["compare", *of("gather", tasks)]:
        assert not tasks[t]["cachingOptions"].get("enableCache"), t
    for t in loop_tasks(spec):
        assert not t["cachingOptions"].get("enableCache")


def test_parameters_default_to_params_yaml_and_the_data_revision(compiled):
    _, spec, _ = compiled
    p = spec["root"]["inputDefinitions"]["parameters"]
    assert yaml.safe_load(p["params_yaml"]["defaultValue"]) == yaml.safe_load((ROOT / "params.yaml").read_text())
    assert yaml.safe_load(p["reported_yaml"]["defaultValue"]) == yaml.safe_load((ROOT / "paper/reported.yaml").read_text())
    assert p["data_repo_url"]["defaultValue"] == "https://git.example.com/tcnet.git"
    assert p["data_rev"]["defaultValue"] == "v0.1.0"
    # the data stages get the params sections their dataset's data-params task gives (their cache keys),
    # the others the whole params
    tasks = root_tasks(spec)
    seen = set()
    for name, task in [*tasks.items(), *((t["componentRef"]["name"], t) for t in loop_tasks(spec))]:
        kind = name.removeprefix("comp-").rstrip("-0123456789")
        if "params_yaml" in task.get("inputs", {}).get("parameters", {}):
            src = task["inputs"]["parameters"]["params_yaml"]
            seen.add(kind)
            if kind in ("fetch-data", "preprocess", "split"):
                producer_task = src["taskOutputParameter"]["producerTask"]
                assert of("data-params", [producer_task]), name
                assert src["taskOutputParameter"]["outputParameterKey"] == kind.replace("-", "_"), name  # its own slice
                dataset = tasks[producer_task]["inputs"]["parameters"]["dataset"]["runtimeValue"]["constant"]
                assert tasks[name]["taskInfo"]["name"].startswith(("fetch " + dataset, f"{kind} {dataset}")), name
            else:
                assert src.get("componentInputParameter", "").endswith("params_yaml"), name
    assert {"fetch-data", "preprocess", "split", "data-params", "train", "evaluate", "compare"} <= seen


def test_dvc_secret_and_mlflow_env_are_wired(compiled):
    _, spec, platform = compiled
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    readers = of("exec-fetch-data", k8s) + of("exec-evaluate", k8s)  # both read the DVC remote
    for name in readers:
        (secret,) = k8s[name]["secretAsEnv"]
        assert secret["secretName"] == "tcnet-dvc-credentials"
        assert {m["envVar"] for m in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert sorted(n for n, e in k8s.items() if "secretAsEnv" in e) == sorted(readers) and len(readers) == 10
    for name, ex in executors(spec).items():
        env = {e["name"]: e["value"] for e in ex["container"].get("env", [])}
        assert env.get("MLFLOW_TRACKING_URI", "").startswith("http"), name
        # a pod sees its node's cores: threads and preprocess's workers follow the CPU request
        cpu = ex["container"]["resources"]["resourceCpuRequest"]
        per_process = 2 if of("exec-train", [name]) else 1  # --gpus 2 share the train task's 4 CPUs
        assert env["OMP_NUM_THREADS"] == str(max(1, int(float(cpu)) // per_process)), name
        assert env["TCNET_CPUS"] == str(max(1, int(float(cpu)))), name


def test_mlflow_stages_get_the_pipeline_run_id(compiled):
    _, spec, _ = compiled
    tasks = [root_tasks(spec)["compare"], *loop_tasks(spec)]
    for t in tasks:
        assert t["inputs"]["parameters"]["pipeline_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"


def test_evaluate_gets_gpus_only_when_asked(compiled, tmp_path):
    from pipeline.pipeline import PipelineOptions, compile_pipeline

    _, spec, _ = compiled
    for name in of("exec-evaluate", executors(spec)):
        assert "accelerator" not in executors(spec)[name]["container"]["resources"]  # default: on the CPU
    out = compile_pipeline(PipelineOptions(eval_gpus=1, data_repo_url="https://git.example.com/t.git", data_rev="v1"),
                           tmp_path / "p.yaml")
    spec, platform = yaml.safe_load_all(out.read_text())
    assert len(of("exec-evaluate", executors(spec))) == 5
    for name in of("exec-evaluate", executors(spec)):
        res = executors(spec)[name]["container"]["resources"]
        assert (res["accelerator"]["resourceType"], res["accelerator"]["resourceCount"]) == ("nvidia.com/gpu", "1")
        k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][name]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]


def test_evaluate_fetches_its_raw_files_from_the_data_repository_not_the_raw_artifact(compiled):
    """Only preprocess reads fetch_data's raw artifact (its dataset, full size); each evaluate gets the
    data's repository, revision and remote (the pipeline's parameters) and fetches what its run scores."""
    _, spec, _ = compiled
    for _, loop in loops(spec).values():
        ev = body(spec, loop)["evaluate"]
        assert "raw" not in ev["inputs"].get("artifacts", {})
        params = ev["inputs"]["parameters"]
        for name, pipeline_param in (("repo_url", "data_repo_url"), ("rev", "data_rev"), ("remote", "dvc_remote")):
            assert params[name]["componentInputParameter"].endswith(pipeline_param), (name, params[name])
    tasks = root_tasks(spec)
    readers = {t: task["inputs"]["artifacts"]["raw"]["taskOutputArtifact"]["producerTask"] for t, task in tasks.items()
               if any(a.get("taskOutputArtifact", {}).get("outputArtifactKey") == "raw"
                      for a in task.get("inputs", {}).get("artifacts", {}).values())}
    assert sorted(readers) == sorted(of("preprocess", tasks))
    for pre, fetch in readers.items():  # each dataset's preprocess reads its own dataset's fetch
        assert tasks[pre]["taskInfo"]["name"].split()[1] == tasks[fetch]["taskInfo"]["name"].split()[1]


def test_train_checkpoints_on_a_volume_only_when_asked(compiled, tmp_path):
    """--checkpoint-pvc: the claim is mounted into train tasks alone, and train is told to keep its runs
    there; without it, no volume and an empty checkpoint_dir (train in the output artifact)."""
    from pipeline.__main__ import main
    from pipeline.pipeline import CHECKPOINT_MOUNT

    def checkpoint_dirs(spec):
        return {body(spec, loop)["train"]["inputs"]["parameters"]["checkpoint_dir"]["runtimeValue"]["constant"]
                for _, loop in loops(spec).values()}

    _, spec, platform = compiled
    assert checkpoint_dirs(spec) == {""}
    assert not any("pvcMount" in e for e in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values())

    out = tmp_path / "p.yaml"
    assert main(["compile", "--out", str(out), "--data-repo-url", "https://git.example.com/t.git", "--data-rev", "v1",
                 "--checkpoint-pvc", "tcnet-checkpoints"]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    assert checkpoint_dirs(spec) == {CHECKPOINT_MOUNT}
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in of("exec-train", k8s):
        (mount,) = k8s[name]["pvcMount"]
        assert mount["mountPath"] == CHECKPOINT_MOUNT
        assert "tcnet-checkpoints" in yaml.safe_dump(mount)  # the claim's name, as kfp-kubernetes spells the field
    assert sorted(name for name, e in k8s.items() if "pvcMount" in e) == sorted(of("exec-train", k8s)) != []


def _compile_with(tmp_path, params: dict) -> dict:
    from kfp import compiler

    from pipeline.pipeline import PipelineOptions, build_pipeline

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    fn = build_pipeline(PipelineOptions(params=tmp_path / "params.yaml", data_repo_url="https://git.example.com/t.git",
                                        data_rev="v1"))
    compiler.Compiler().compile(fn, str(tmp_path / "p.yaml"))
    return next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))  # the pipeline spec (then the platform spec)


def test_each_split_task_carries_its_own_datasets_user_split_file(tmp_path, monkeypatch, capsys):
    """A user split file is a path of the checkout, which no pod has: compiling reads it into the
    split task of its dataset (a constant input, so the task's cache key holds it); no other task
    and no pipeline parameter carries it."""
    import base64
    import gzip
    import json

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["split"]["split_files"] = {"drive": "mine/drive.json"}
    monkeypatch.chdir(tmp_path)  # split files are read relative to where `tcnet split` runs
    (tmp_path / "mine").mkdir()
    raw = b'{"folds": [{"train": ["21_training"], "val": ["22_training"]}], "test": ["01_test"]}\r\n'
    (tmp_path / "mine" / "drive.json").write_bytes(raw)
    spec = _compile_with(tmp_path, params)
    carried = {}
    for name, task in root_tasks(spec).items():
        value = task.get("inputs", {}).get("parameters", {}).get("embedded")
        if value is not None:
            assert of("split", [name]), name
            carried[task["taskInfo"]["name"]] = value["runtimeValue"]["constant"]
    assert sorted(carried) == sorted(f"split {d}" for d in params["preprocess"]["datasets"])
    entry = json.loads(carried.pop("split drive"))
    assert entry["path"] == "mine/drive.json" and gzip.decompress(base64.b64decode(entry["gzip_base64"])) == raw
    assert set(carried.values()) == {""}
    assert all("embedded" not in t.get("inputs", {}).get("parameters", {}) for t in loop_tasks(spec))  # train, evaluate
    assert "21_training" not in yaml.safe_dump(spec["root"]["inputDefinitions"])
    from pipeline.__main__ import main  # the command says so
    assert main(["compile", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "q.yaml"),
                 "--data-repo-url", "https://git.example.com/t.git", "--data-rev", "v1"]) == 0
    assert "user split files read into the package: drive (mine/drive.json)" in capsys.readouterr().out


def test_a_user_split_file_that_is_missing_or_not_json_fails_the_compile_naming_it(tmp_path, monkeypatch):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["split"]["split_files"] = {"drive": "mine/drive.json"}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"split.split_files.drive: mine/drive.json not found \(relative to "):
        _compile_with(tmp_path, params)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "drive.json").write_text("{folds: [")
    with pytest.raises(ValueError, match=r"mine/drive.json: not valid JSON"):
        _compile_with(tmp_path, params)


def test_the_local_runner_refuses_a_checkpoint_volume(tmp_path):
    from pipeline.pipeline import PipelineOptions, local_run

    with pytest.raises(ValueError, match="mounts no volumes"):
        local_run(PipelineOptions(checkpoint_pvc="c"), tmp_path)


@pytest.mark.parametrize("uri", ["http://localhost:5000", "http://127.0.0.1:5000", "https://[::1]:443", "http://api.localhost",
                                 "http://0.0.0.0:5000"])
def test_a_loopback_tracking_uri_is_refused_for_a_cluster(uri):
    from pipeline.pipeline import check_cluster_tracking

    with pytest.raises(ValueError, match="the pod itself"):
        check_cluster_tracking(uri)


def test_cpu_requests_become_threads():
    from pipeline.pipeline import cpu_threads

    assert cpu_threads("4") == 4 and cpu_threads("4", 2) == 2 and cpu_threads("3", 2) == 1
    assert cpu_threads("500m") == 1 and cpu_threads("2500m") == 2 and cpu_threads("1.5") == 1
    for bad in ("four", "0", "-1"):
        with pytest.raises(ValueError, match="CPU"):
            cpu_threads(bad)


def test_the_data_revision_is_the_last_commit_that_changed_the_data(tmp_path, monkeypatch):
    """A commit of code alone keeps fetch_data's inputs, so its cache entry and the data stages' hold."""
    import subprocess

    import pipeline.pipeline as pl

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 1.dir\n  path: data\n")
    git("add", "-A")
    git("commit", "-qm", "data")
    data_commit = git("rev-parse", "HEAD")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("commit", "-qm", "code")
    monkeypatch.setattr(pl, "ROOT", tmp_path)
    assert pl.default_data_source("data")[1] == data_commit
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc/config").write_text("[core]\n    remote = s3\n")  # a new remote is a new data source
    git("add", "-A")
    git("commit", "-qm", "remote")
    assert pl.default_data_source("data")[1] == git("rev-parse", "HEAD")
