"""Every ``tcnet`` source file a DVC stage can run is among that stage's ``deps`` in ``dvc.yaml``.

DVC re-runs a stage only when a dependency changes; a module the stage imports but does not list
would let ``dvc repro`` serve results made by the old code. The closure is static: every
``import tcnet...`` / ``from tcnet... import`` / relative import anywhere in a file (imports inside
functions included, which is where most stage code imports), from ``tcnet/stages/<stage>.py`` on.
"""

import ast
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("preprocess", "split", "train", "evaluate", "compare")

# What cannot change a stage's outputs: command-line plumbing, atomic writes, CPU counts, the
# allocator setting, folder merging (Kubeflow). A file here that starts to compute results must
# leave this list.
PLUMBING = {
    "tcnet/__init__.py", "tcnet/stages/__init__.py", "tcnet/stages/_cli.py", "tcnet/cli.py",
    "tcnet/utils/__init__.py", "tcnet/utils/atomic.py", "tcnet/utils/cpus.py", "tcnet/utils/heap.py",
}


def _file_of(module: str) -> Path | None:
    path = ROOT / Path(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imports(file: Path, top_level_only: bool = False) -> set[str]:
    """Modules ``file`` imports (absolute names), with each ``from X import name`` also as ``X.name``
    (``name`` may be a submodule); ``top_level_only``: the imports that run when the file is
    imported (not those inside its functions)."""
    package = ".".join(file.relative_to(ROOT).with_suffix("").parts)
    if file.name != "__init__.py":
        package = package.rpartition(".")[0]
    tree = ast.parse(file.read_text(), str(file))
    out = set()
    for node in (ast.iter_child_nodes(tree) if top_level_only else ast.walk(tree)):
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


def test_the_closure_follows_imports_inside_functions():
    # preprocess imports tcnet.losses inside _dataset_stats only (the class weights of stats.json)
    assert "tcnet/losses/class_weights.py" in closure("preprocess")
    assert "tcnet/config.py" in closure("split")
