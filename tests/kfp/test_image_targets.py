"""The Makefile's image targets name the image of components/image.py and a test file that exists."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def dry_run(target: str, *args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # under `make test` the parent's MAKEFLAGS / MAKELEVEL would add "Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", "-n", target, *args], cwd=ROOT, capture_output=True,
                          text=True, check=True, env=env).stdout


def test_image_targets_use_the_components_image_and_the_chosen_cli():
    from components.image import IMAGE

    build = dry_run("image", "DOCKER=podman")
    assert build.startswith("podman build ") and f"-t {IMAGE} ." in build
    check = dry_run("image-check")
    assert check.startswith("docker run --rm ") and f":/src:ro {IMAGE} /src/tests/kfp/image_check.sh" in check


def test_image_check_runs_an_existing_test_as_the_images_user():
    check = dry_run("image-check")
    (script,) = re.findall(r"/src/(tests/\S+\.sh)", check)
    assert os.access(ROOT / script, os.X_OK)
    tests = re.findall(r"tests/\S+\.py", (ROOT / script).read_text())
    assert tests and all((ROOT / t).is_file() for t in tests), tests
    assert "--user" not in check  # the image's own USER (1000), as in a pod
