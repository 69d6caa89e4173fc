"""The compiled pipeline package: stages, the run loop, GPU requests, parameters, secrets, env."""

from pathlib import Path

import yaml

from tcnet.config import expand_runs, load_params

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("fetch_data", "preprocess", "split", "train", "evaluate", "compare")


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
    for t in ("fetch-data", "preprocess", "split"):
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
    # every task gets the same params
    for task in [*spec["root"]["dag"]["tasks"].values(), *next(
            c["dag"]["tasks"] for n, c in spec["components"].items() if n.startswith("comp-for-loop")).values()]:
        if "params_yaml" in task.get("inputs", {}).get("parameters", {}):
            src = task["inputs"]["parameters"]["params_yaml"]
            assert src.get("componentInputParameter", "").endswith("params_yaml"), task["taskInfo"]


def test_dvc_secret_and_mlflow_env_are_wired(compiled):
    _, spec, platform = compiled
    fetch = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-fetch-data"]
    (secret,) = fetch["secretAsEnv"]
    assert secret["secretName"] == "tcnet-dvc-credentials"
    assert {m["envVar"] for m in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for name, ex in executors(spec).items():
        env = {e["name"]: e["value"] for e in ex["container"].get("env", [])}
        assert env.get("MLFLOW_TRACKING_URI", "").startswith("http"), name


def test_mlflow_stages_get_the_pipeline_run_id(compiled):
    _, spec, _ = compiled
    _, loop = loop_task(spec)
    tasks = [spec["root"]["dag"]["tasks"]["compare"], *spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"].values()]
    for t in tasks:
        assert t["inputs"]["parameters"]["pipeline_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
