"""Every ``tcnet`` source file a DVC stage can run is among that stage's ``deps`` in ``dvc.yaml``,
and every ``params.yaml`` section its module reads among its ``params``.

DVC re-runs a stage only when a dependency changes; a module the stage imports but does not list
would let ``dvc repro`` serve results made by the old code. The closure is static: every
``import tcnet...`` / ``from tcnet... import`` / relative import anywhere in a file (imports inside
functions included, which is where most stage code imports), module names in strings (the model
registry's ``"tcnet.models.baselines.fcn:fcn"``), and every module of a package whose ``__init__``
loads them lazily (a module-level ``__getattr__``), from ``tcnet/stages/<stage>.py`` on.
"""

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("preprocess", "split", "train", "evaluate", "compare")

# What cannot change a stage's outputs: command-line plumbing, CPU counts, the
# allocator setting, folder merging (Kubeflow). A file here that starts to compute results must
# leave this list.
PLUMBING = {
    "tcnet/__init__.py", "tcnet/stages/__init__.py", "tcnet/stages/_cli.py", "tcnet/cli.py",
    "tcnet/utils/__init__.py", "tcnet/utils/cpus.py", "tcnet/utils/heap.py",
}


MODULE_STRING = re.compile(r"tcnet(\.\w+)+(:\w+)?")  # "tcnet.models.baselines.fcn:fcn"


def _file_of(module: str) -> Path | None:
    path = ROOT / Path(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imports(file: Path, top_level_only: bool = False) -> set[str]:
    """Modules ``file`` imports (absolute names), with each ``from X import name`` also as ``X.name``
    (``name`` may be a submodule); ``top_level_only``: the imports that run when the file is
    imported (not those inside its functions)."""
    package = ".".join(file.relative_to(ROOT).with_suffix("").parts).rpartition(".")[0]  # a/b/c.py, a/b/__init__.py: a.b
    tree = ast.parse(file.read_text(), str(file))
    out = set()
    if not top_level_only and file.name == "__init__.py" and any(
            isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body):
        out.update(f"{package}.{m.stem}" for m in file.parent.glob("*.py") if m.name != "__init__.py")
    for node in (ast.iter_child_nodes(tree) if top_level_only else ast.walk(tree)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.fullmatch(node.value):
            out.add(node.value.split(":")[0])
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m == "tcnet" or m.startswith("tcnet.")}


@lru_cache(maxsize=None)
def closure(stage: str) -> frozenset[str]:
    """Repository-relative paths of every tcnet file reachable from the stage's module. A module the
    code names is followed into its functions' imports too (the stage may call any of them); a
    package's ``__init__`` that only runs because a submodule is imported, into its top-level ones."""
    named: set[Path] = set()
    parents: set[Path] = set()
    todo = [(ROOT / "tcnet" / "stages" / f"{stage}.py", True)]
    while todo:
        f, is_named = todo.pop()
        if f in named or (f in parents and not is_named):
            continue
        (named if is_named else parents).add(f)
        if f.relative_to(ROOT).as_posix() in PLUMBING:  # computes nothing: what it imports is not reached through it
            continue
        for module in _imports(f, top_level_only=not is_named):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
                g = _file_of(".".join(parts[:i]))
                if g is not None:
                    todo.append((g, i == len(parts)))
    return frozenset(f.relative_to(ROOT).as_posix() for f in named | parents)


def stage_deps(stage: str) -> list[str]:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    return [d for d in spec.get("do", spec)["deps"] if not d.startswith("$")]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_imports_is_a_dependency_of_it(stage):
    deps = stage_deps(stage)
    missing = sorted(p for p in closure(stage) - PLUMBING if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage!r}: add to its deps: {missing}"


@pytest.mark.parametrize("stage", STAGES)
def test_every_code_dependency_exists(stage):
    gone = [d for d in stage_deps(stage) if d.startswith("tcnet") and not (ROOT / d).exists()]
    assert not gone, f"dvc.yaml stage {stage!r} depends on paths that do not exist: {gone}"


def test_the_closure_follows_imports_inside_functions_strings_and_lazy_packages():
    # preprocess imports tcnet.losses inside _dataset_stats only (the class weights of stats.json)
    assert "tcnet/losses/class_weights.py" in closure("preprocess")
    assert "tcnet/config.py" in closure("split")
    train = closure("train")
    assert "tcnet/models/baselines/fcn.py" in train  # the registry names it in a string
    assert "tcnet/losses/combined.py" in train  # tcnet.losses loads it in its __getattr__


# What a stage reads from params.yaml but need not re-run for: train's `profile` is an MLflow tag
# only (a re-run train stage would skip its finished runs anyway: the profile is in no run's hash).
PARAMS_NOT_RESULTS = {"train": {"profile"}}


def params_read(stage: str) -> set[str]:
    """``params.yaml`` keys the stage's module reads: ``params.<section>[.<key>]``,
    ``params.experiment(...)`` (the experiments), ``load_params(...).<section>``."""
    text = (ROOT / "tcnet" / "stages" / f"{stage}.py").read_text()
    keys = set()
    for a, b in re.findall(r"\bparams\.([a-z_]+)(?:\.([a-z_]+))?", text):
        if a == "yaml":  # "params.yaml", the file's name
            continue
        keys.add("experiments" if a in ("experiment", "experiments") else f"{a}.{b}" if b else a)
    keys.update(re.findall(r"load_params\([^)]*\)\.([a-z_]+)", text))
    return keys - PARAMS_NOT_RESULTS.get(stage, set())


@pytest.mark.parametrize("stage", STAGES)
def test_every_params_section_a_stage_reads_is_a_param_of_it(stage):
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    listed = spec.get("do", spec).get("params", [])
    names = [next(iter(p)) if isinstance(p, dict) else p for p in listed]

    def covered(key: str) -> bool:  # "train" covers "train.seed"; "experiments.${key}" covers "experiments"
        return any(key == n or key.startswith(n + ".") or n.startswith(key + ".${") for n in names)

    missing = sorted(k for k in params_read(stage) if not covered(k))
    assert not missing, f"dvc.yaml stage {stage!r}: add to its params: {missing}"


def test_the_params_scan_sees_what_compare_reads():
    assert {"compare", "profile", "train.seed", "experiments"} <= params_read("compare")
    assert {"preprocess"} <= params_read("preprocess")
