"""The compiled pipeline package: stages, the run loop, GPU requests, parameters, secrets, env."""

from pathlib import Path

import pytest
import yaml

from tcnet.config import expand_runs, load_params

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("data_params", "fetch_data", "preprocess", "split", "train", "evaluate", "compare")


def executors(spec) -> dict:
    return spec["deploymentSpec"]["executors"]


def loop_task(spec) -> tuple[str, dict]:
    (name, task), = [(n, t) for n, t in spec["root"]["dag"]["tasks"].items() if "parameterIterator" in t]
    return name, task


def test_every_stage_component_is_in_the_package(compiled):
    _, spec, _ = compiled
    for stage in STAGES:
        comp = "comp-" + stage.replace("_", "-")
        assert comp in spec["components"], f"{comp} missing"
        assert f"exec-{stage.replace('_', '-')}" in executors(spec)
    for ex in executors(spec).values():
        assert ex["container"]["image"] == "ghcr.io/tcnet/tcnet:0.1.0"
        assert "pip install" not in " ".join(ex["container"]["command"])  # the image has tcnet and kfp


def test_parallel_for_loops_over_every_run_of_every_experiment(compiled):
    _, spec, _ = compiled
    name, loop = loop_task(spec)
    items = yaml.safe_load(loop["parameterIterator"]["items"]["raw"])
    params = load_params(ROOT / "params.yaml")
    expected = [{"experiment": e, "run_id": r.run_id} for e in params.experiments for r in expand_runs(params, e)]
    assert items == expected
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert set(body) == {"train", "evaluate"}
    assert body["train"]["inputs"]["parameters"]["run_id"]["parameterExpressionSelector"] == 'parseJson(string_value)["run_id"]'
    # compare consumes all the evaluations (dsl.Collected) after the loop
    compare = spec["root"]["dag"]["tasks"]["compare"]
    assert compare["dependentTasks"] == [name]
    assert compare["inputs"]["artifacts"]["evals"]["taskOutputArtifact"]["producerTask"] == name


def test_train_requests_gpus_cpu_memory_and_retries(compiled):
    _, spec, platform = compiled
    res = executors(spec)["exec-train"]["container"]["resources"]
    assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert res["accelerator"]["resourceCount"] == "2"  # --gpus 2
    assert float(res["resourceCpuRequest"]) > 0 and res["resourceMemoryRequest"]
    assert res["resourceMemoryLimit"] == res["resourceMemoryRequest"] and "resourceCpuLimit" not in res
    _, loop = loop_task(spec)
    train = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]["train"]
    assert train["retryPolicy"]["maxRetryCount"] == 2
    assert train["inputs"]["parameters"]["gpus"]["runtimeValue"]["constant"] == 2
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
    assert any(m["mountPath"] == "/dev/shm" for m in k8s["emptyDirMounts"])


def test_caching_on_for_data_stages_off_for_mlflow_stages(compiled):
    _, spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    for t in ("data-params", "fetch-data", "preprocess", "split"):
        assert tasks[t]["cachingOptions"].get("enableCache") is True, t
    assert not tasks["compare"]["cachingOptions"].get("enableCache")
    _, loop = loop_task(spec)
    for t in spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"].values():
        assert not t["cachingOptions"].get("enableCache")


def test_parameters_default_to_params_yaml_and_the_data_revision(compiled):
    _, spec, _ = compiled
    p = spec["root"]["inputDefinitions"]["parameters"]
    assert yaml.safe_load(p["params_yaml"]["defaultValue"]) == yaml.safe_load((ROOT / "params.yaml").read_text())
    assert yaml.safe_load(p["reported_yaml"]["defaultValue"]) == yaml.safe_load((ROOT / "paper/reported.yaml").read_text())
    assert p["data_repo_url"]["defaultValue"] == "https://git.example.com/tcnet.git"
    assert p["data_rev"]["defaultValue"] == "v0.1.0"
    # the data stages get the params sections they read (their cache keys), the others the whole params
    data_stages = {"fetch-data", "preprocess", "split"}
    seen = set()
    for name, task in [*spec["root"]["dag"]["tasks"].items(), *next(
            c["dag"]["tasks"] for n, c in spec["components"].items() if n.startswith("comp-for-loop")).items()]:
        if "params_yaml" in task.get("inputs", {}).get("parameters", {}):
            src = task["inputs"]["parameters"]["params_yaml"]
            seen.add(name)
            if name in data_stages:
                assert src["taskOutputParameter"] == {"outputParameterKey": "Output", "producerTask": "data-params"}, name
            else:
                assert src.get("componentInputParameter", "").endswith("params_yaml"), name
    assert data_stages | {"data-params", "train", "evaluate", "compare"} <= seen


def test_dvc_secret_and_mlflow_env_are_wired(compiled):
    _, spec, platform = compiled
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-fetch-data", "exec-evaluate"):  # both read the DVC remote
        (secret,) = k8s[name]["secretAsEnv"]
        assert secret["secretName"] == "tcnet-dvc-credentials"
        assert {m["envVar"] for m in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert sorted(n for n, e in k8s.items() if "secretAsEnv" in e) == ["exec-evaluate", "exec-fetch-data"]
    for name, ex in executors(spec).items():
        env = {e["name"]: e["value"] for e in ex["container"].get("env", [])}
        assert env.get("MLFLOW_TRACKING_URI", "").startswith("http"), name
        # a pod sees its node's cores: threads and preprocess's workers follow the CPU request
        cpu = ex["container"]["resources"]["resourceCpuRequest"]
        per_process = 2 if name == "exec-train" else 1  # --gpus 2 share the train task's 4 CPUs
        assert env["OMP_NUM_THREADS"] == str(max(1, int(float(cpu)) // per_process)), name
        assert env["TCNET_CPUS"] == str(max(1, int(float(cpu)))), name


def test_mlflow_stages_get_the_pipeline_run_id(compiled):
    _, spec, _ = compiled
    _, loop = loop_task(spec)
    tasks = [spec["root"]["dag"]["tasks"]["compare"], *spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"].values()]
    for t in tasks:
        assert t["inputs"]["parameters"]["pipeline_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"


def test_evaluate_gets_gpus_only_when_asked(compiled, tmp_path):
    from pipeline.pipeline import PipelineOptions, compile_pipeline

    _, spec, _ = compiled
    assert "accelerator" not in executors(spec)["exec-evaluate"]["container"]["resources"]  # default: on the CPU
    out = compile_pipeline(PipelineOptions(eval_gpus=1, data_repo_url="https://git.example.com/t.git", data_rev="v1"),
                           tmp_path / "p.yaml")
    spec, platform = yaml.safe_load_all(out.read_text())
    res = executors(spec)["exec-evaluate"]["container"]["resources"]
    assert (res["accelerator"]["resourceType"], res["accelerator"]["resourceCount"]) == ("nvidia.com/gpu", "1")
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-evaluate"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]


def test_evaluate_fetches_its_raw_files_from_the_data_repository_not_the_raw_artifact(compiled):
    """Only preprocess reads fetch_data's raw artifact (every dataset, full size); each evaluate gets the
    data's repository, revision and remote (the pipeline's parameters) and fetches what its run scores."""
    _, spec, _ = compiled
    _, loop = loop_task(spec)
    ev = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]["evaluate"]
    assert "raw" not in ev["inputs"].get("artifacts", {})
    params = ev["inputs"]["parameters"]
    for name, pipeline_param in (("repo_url", "data_repo_url"), ("rev", "data_rev"), ("remote", "dvc_remote")):
        assert params[name]["componentInputParameter"].endswith(pipeline_param), (name, params[name])
    readers = [t for t, task in spec["root"]["dag"]["tasks"].items()
               if any(a.get("taskOutputArtifact", {}).get("outputArtifactKey") == "raw"
                      for a in task.get("inputs", {}).get("artifacts", {}).values())]
    assert readers == ["preprocess"]


def test_train_checkpoints_on_a_volume_only_when_asked(compiled, tmp_path):
    """--checkpoint-pvc: the claim is mounted into train tasks alone, and train is told to keep its runs
    there; without it, no volume and an empty checkpoint_dir (train in the output artifact)."""
    from pipeline.__main__ import main
    from pipeline.pipeline import CHECKPOINT_MOUNT

    def train_task(spec):
        _, loop = loop_task(spec)
        return spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]["train"]

    _, spec, platform = compiled
    assert train_task(spec)["inputs"]["parameters"]["checkpoint_dir"]["runtimeValue"]["constant"] == ""
    assert not any("pvcMount" in e for e in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values())

    out = tmp_path / "p.yaml"
    assert main(["compile", "--out", str(out), "--data-repo-url", "https://git.example.com/t.git", "--data-rev", "v1",
                 "--checkpoint-pvc", "tcnet-checkpoints"]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    assert train_task(spec)["inputs"]["parameters"]["checkpoint_dir"]["runtimeValue"]["constant"] == CHECKPOINT_MOUNT
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    (mount,) = k8s["exec-train"]["pvcMount"]
    assert mount["mountPath"] == CHECKPOINT_MOUNT
    assert "tcnet-checkpoints" in yaml.safe_dump(mount)  # the claim's name, as kfp-kubernetes spells the field
    assert [name for name, e in k8s.items() if "pvcMount" in e] == ["exec-train"]


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
