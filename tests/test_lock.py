"""requirements.lock is the one set of exact versions: the venv (Makefile, CI) and the image
(Dockerfile) install from it, and it must satisfy pyproject.toml's ranges."""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one clause ...
        assert spec.operator == "==", f"requirements.lock: {line!r} is not an exact pin"  # ... an exact one
        name = canonicalize_name(req.name)
        assert name not in pins, f"requirements.lock pins {req.name} twice"
        pins[name] = Version(spec.version)
    return pins


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def dockerfile_instructions() -> list[str]:
    """Dockerfile instructions with line continuations joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return [re.sub(r"\s+", " ", ins).strip() for ins in "\n".join(lines).replace("\\\n", " ").splitlines() if ins.strip()]


def test_lock_pins_torch_and_torchvision():
    pins = locked()
    assert pins["torch"] == Version("2.14.1")
    assert pins["torchvision"] == Version("0.29.1")


def test_every_dependency_is_locked_within_its_pyproject_range():
    pins = locked()
    deps = list(project()["dependencies"])
    for extra in project().get("optional-dependencies", {}).values():
        deps += extra
    problems = []
    for dep in map(Requirement, deps):
        name = canonicalize_name(dep.name)
        if name not in pins:
            problems.append(f"{dep.name}: not pinned in requirements.lock")
        elif not dep.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{dep.name}: locked {pins[name]} is outside pyproject's {dep.specifier}")
    assert not problems, "\n".join(problems)


def test_dockerfile_installs_the_package_with_the_same_lock():
    ins = dockerfile_instructions()
    copies = [i for i in ins if i.startswith("COPY ")]
    assert any("requirements.lock" in c.split()[1:-1] for c in copies), "the Dockerfile must COPY requirements.lock"
    installs = [i for i in ins if i.startswith("RUN ") and "pip install" in i]
    assert installs, "the Dockerfile has no pip install"
    for run in installs:  # every install is constrained by the lock; one of them installs the package
        assert re.search(r"pip install (?:\S+ )*-c requirements\.lock\b", run), run
    assert any(re.search(r"-c requirements\.lock (?:\S+ )*\.(?:\s|$)", r) for r in installs), installs


def test_dockerfile_python_matches_requires_python():
    base = next(i for i in dockerfile_instructions() if i.startswith("FROM "))
    m = re.match(r"FROM (?:--\S+ )*python:(\d+\.\d+)", base)
    assert m, f"expected a python:X.Y base image, got {base!r}"
    assert Requirement(f"python{project()['requires-python']}").specifier.contains(m.group(1) + ".0")
    header = "\n".join(ln for ln in (ROOT / "requirements.lock").read_text().splitlines() if ln.startswith("#"))
    for generated_with in re.findall(r"Python (\d+\.\d+)", header):  # where the header says which
        assert generated_with == m.group(1), f"lock generated with Python {generated_with}, image has {m.group(1)}"


def test_the_cluster_remote_and_gpu_metrics_are_installed():
    """docs/deploy.md puts the DVC remote on S3 (fetch_data reads it in the pod) and the paper profile
    turns on MLflow's system metrics: without dvc-s3 / nvidia-ml-py both fail or go quiet on a cluster."""
    from dvc.fs import get_cloud_fs

    cls, _, path = get_cloud_fs({}, url="s3://tcnet-data/dvc")  # resolves the plugin; no network
    assert cls.__module__.startswith("dvc_s3") and path == "tcnet-data/dvc"
    import pynvml  # noqa: F401  (nvidia-ml-py: MLflow's GPU monitor imports it)
