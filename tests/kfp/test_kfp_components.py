"""Each component is a thin wrapper: a few lines that call the stage's run() (no logic of its own)."""

import ast
import inspect
import textwrap
from pathlib import Path

import pytest
import yaml

import components
from components.image import IMAGE

ROOT = Path(__file__).resolve().parents[2]
STAGE_COMPONENTS = ("preprocess", "split", "train", "evaluate", "compare")


def body_statements(func) -> list[str]:
    """Source lines of the function body without its docstring, imports, blank lines and comments."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    fn = tree.body[0]
    body = fn.body[1:] if isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant) else fn.body
    src = textwrap.dedent(inspect.getsource(func)).splitlines()
    lines = src[body[0].lineno - 1: body[-1].end_lineno]
    return [ln for ln in lines if ln.strip() and not ln.strip().startswith(("#", "import ", "from "))]


@pytest.mark.parametrize("name", ("data_params", "fetch_data", "gather", *STAGE_COMPONENTS))
def test_component_is_short_and_runs_on_the_project_image(name):
    comp = getattr(components, name)
    container = comp.component_spec.implementation.container
    assert container.image == IMAGE
    lines = body_statements(comp.python_func)
    assert 2 <= len(lines) <= 12, f"{name}: {len(lines)} lines besides imports; a component only wires a stage's run()"
    # what runs in the pod is exactly this function's source
    assert inspect.getsource(comp.python_func).split("\n", 2)[1].strip() in "\n".join(container.command)


def stage_calls(func) -> list[str]:
    """How the component reaches the stage: ``tcnet.stages.<x>.run`` (or ``.tracked_run``: the run
    logged to MLflow) calls and ``tcnet`` CLI commands."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    names = {a.asname or a.name: f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names:
            target = names[node.func.id]
            if target.startswith("tcnet.stages.") and target.endswith((".run", ".tracked_run")):
                calls.append(target.rsplit(".", 1)[0])
            elif target == "tcnet.cli.main":  # tcnet.cli.main(["<command>", ...])
                calls.append("tcnet.stages." + ast.literal_eval(node.args[0].elts[0]))
    return calls


@pytest.mark.parametrize("name", STAGE_COMPONENTS)
def test_component_calls_the_stage_once_and_has_no_logic(name):
    func = getattr(components, name).python_func
    assert stage_calls(func) == [f"tcnet.stages.{name}"]
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    for node in ast.walk(tree):  # no branching beyond "fail loudly"; loops only copy results
        assert not isinstance(node, (ast.While, ast.Try, ast.With, ast.IfExp)), f"{name}: {ast.dump(node)[:80]}"
        if isinstance(node, ast.If):
            assert len(node.body) == 1 and isinstance(node.body[0], ast.Raise) and not node.orelse, name


def test_train_uses_the_stage_multi_gpu_option():
    src = inspect.getsource(components.train.python_func)
    assert '"--nproc", str(gpus)' in src and '"--run", run_id' in src


@pytest.mark.parametrize("name", ("fetch_data", "evaluate"))
def test_the_components_that_read_the_dvc_remote_share_one_implementation(name):
    """Both open the data's repository through tcnet.data.fetch (tests/data/test_fetch.py), never DVC directly."""
    src = inspect.getsource(getattr(components, name).python_func)
    assert "from tcnet.data.fetch import" in src and "DVCFileSystem" not in src


def test_data_params_hands_each_data_task_only_what_it_reads():
    """The data stages' cache keys: a train or experiments edit leaves them as they were, a split edit
    leaves fetch_data's and preprocess's as they were."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def keys(p: dict, dataset: str = "") -> dict:
        out = components.data_params.python_func(yaml.safe_dump(p), dataset=dataset)._asdict()
        assert list(out) == ["fetch_data", "preprocess", "split"]
        assert all("\n" not in v.strip() for v in out.values())  # one line, like the package's defaults
        return out

    base = keys(params)
    assert yaml.safe_load(base["fetch_data"]) == {"preprocess": {"raw_dir": params["preprocess"]["raw_dir"],
                                                                 "datasets": params["preprocess"]["datasets"]}}
    assert set(yaml.safe_load(base["preprocess"])) == {"preprocess"} and set(yaml.safe_load(base["split"])) == {"split"}
    assert yaml.safe_load(base["preprocess"])["preprocess"]["image_size"] == params["preprocess"]["image_size"]
    edited = {**params, "train": {**params["train"], "lr": 0.5}, "experiments": dict(list(params["experiments"].items())[:1])}
    assert keys(edited) == base
    seed = keys({**params, "split": {**params["split"], "seed": 7}})
    assert (seed["fetch_data"], seed["preprocess"]) == (base["fetch_data"], base["preprocess"]) and seed["split"] != base["split"]
    size = keys({**params, "preprocess": {**params["preprocess"], "image_size": 96}})
    assert size["fetch_data"] == base["fetch_data"] and size["preprocess"] != base["preprocess"]
    with pytest.raises(Exception, match="unknown config key 'trian'"):  # the whole params checked in the first pod
        keys({**params, "trian": {}})


def test_data_params_for_one_dataset_keys_its_tasks_on_that_datasets_settings_alone():
    """The pipeline fetches, preprocesses and splits each dataset in tasks of its own: an edit to
    DRIVE's image size must leave the ISIC tasks' cache keys (their params_yaml) as they were."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def keys(dataset: str) -> dict:
        return components.data_params.python_func(yaml.safe_dump(params), dataset=dataset)._asdict()

    drive = keys("drive")
    assert yaml.safe_load(drive["fetch_data"])["preprocess"]["datasets"] == ["drive"]
    pre = yaml.safe_load(drive["preprocess"])["preprocess"]
    assert pre["datasets"] == ["drive"]
    assert pre["image_size_overrides"] == {"drive": params["preprocess"]["image_size_overrides"]["drive"]}
    isic = keys("isic2017")
    assert yaml.safe_load(isic["preprocess"])["preprocess"]["image_size_overrides"] == {}
    params["preprocess"]["image_size_overrides"]["drive"] += 32
    assert keys("isic2017") == isic
    assert keys("drive")["preprocess"] != drive["preprocess"] and keys("drive")["fetch_data"] == drive["fetch_data"]
    with pytest.raises(Exception, match="dataset 'isic2019' is not preprocessed"):
        keys("isic2019")


def test_gather_merges_a_loop_with_the_loops_before_it(tmp_path):
    from kfp.dsl import Dataset

    def folder(name: str, run: str) -> Dataset:
        d = Dataset(uri=str(tmp_path / name))
        (Path(d.path) / "exp" / run).mkdir(parents=True)
        (Path(d.path) / "exp" / run / "scores.json").write_text(run)
        return d

    first = Dataset(uri=str(tmp_path / "first"))
    components.gather.python_func(evals=[folder("a", "r1"), folder("b", "r2")], merged=first)
    assert first.metadata["runs"] == 2
    second = Dataset(uri=str(tmp_path / "second"))
    components.gather.python_func(evals=[folder("c", "r3")], merged=second, prior=first)
    assert sorted(p.parent.name for p in Path(second.path).rglob("scores.json")) == ["r1", "r2", "r3"]
    assert second.metadata["runs"] == 3


def test_a_retried_train_task_resumes_from_the_checkpoint_volume(tmp_path, monkeypatch, capsys):
    """The train component as a retried pod runs it: the first attempt is stopped in epoch 2 (SIGTERM on
    preemption: status 130); the retry, with a new empty output artifact and the same pipeline run id,
    resumes after epoch 1 from the volume and fills its artifact; another pipeline run starts afresh."""
    from kfp.dsl import Dataset, Model

    import tcnet.training.loop as loop
    from tcnet.config import PreprocessConfig, SplitConfig
    from tcnet.data.synth.writers import write_dataset
    from tcnet.stages import preprocess, split

    write_dataset("isic2017", tmp_path / "raw" / "isic2017", n=6, seed=1, size=(50, 40))
    preprocess.run(PreprocessConfig(datasets=("isic2017",), image_size=32, workers=1), tmp_path / "raw", tmp_path / "pre")
    split.run(SplitConfig(), tmp_path / "pre", tmp_path / "splits")
    params = yaml.safe_dump({
        "preprocess": {"datasets": ["isic2017"], "image_size": 32},
        "train": {"epochs": 2, "batch_size": 2, "lr": 1e-3, "device": "cpu"},
        "experiments": {"e": {"title": "tiny", "reproduces": "test", "data": [{"name": "isic2017", "train": "isic2017"}],
                              "model": "tcnet_tiny", "runs": [{"name": "tiny"}]}},
    })
    for var in ("TCNET_PIPELINE_RUN_ID", "TCNET_DATA_HASH"):  # the component sets them: restored after the test
        monkeypatch.setenv(var, "")
    monkeypatch.setenv("TCNET_NO_MLFLOW", "1")
    volume, run_id = tmp_path / "volume", "isic2017__tiny__fold0"

    def attempt(n: int, pipeline_run: str = "run-1") -> Path:
        model = Model(uri=str(tmp_path / f"attempt{n}" / "model"))  # each attempt's pod: a new, empty artifact
        components.train.python_func(
            params_yaml=params, experiment="e", run_id=run_id, preprocessed=Dataset(uri=str(tmp_path / "pre")),
            splits=Dataset(uri=str(tmp_path / "splits")), eval_splits=Dataset(uri=str(tmp_path / "splits")),
            model=model, pipeline_run_id=pipeline_run,
            checkpoint_dir=str(volume))
        return Path(model.path) / "e" / run_id

    real_epoch = loop.train_one_epoch

    def preempted_in_epoch_2(*a, **k):
        if k.get("epoch") == 2:
            raise KeyboardInterrupt
        return real_epoch(*a, **k)

    monkeypatch.setattr(loop, "train_one_epoch", preempted_in_epoch_2)
    with pytest.raises(RuntimeError, match="exit status 130"):
        attempt(1)
    monkeypatch.setattr(loop, "train_one_epoch", real_epoch)
    capsys.readouterr()

    published = attempt(2)
    err = capsys.readouterr().err
    assert f"{run_id}: resuming after epoch 1 of 2" in err, err
    assert sorted(p.name for p in published.iterdir()) == [".tcnet-output", "best.pt", "history.csv", "last.pt", "run.json"]
    assert (published / "last.pt").read_bytes() == (volume / "run-1" / "e" / run_id / "last.pt").read_bytes()

    attempt(3, pipeline_run="run-2")
    err = capsys.readouterr().err
    assert "resuming" not in err and (volume / "run-2" / "e" / run_id / "best.pt").is_file(), err
    with pytest.raises(ValueError, match="needs pipeline_run_id"):  # no id: the volume root, shared by every run
        attempt(4, pipeline_run="")
