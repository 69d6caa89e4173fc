"""Where a run came from: git commit, DVC data hash, package versions, device.

Every function degrades to ``"unknown"`` / ``""`` instead of failing: a run outside a git checkout
(a Kubeflow pod, a wheel install) still trains, and says so in its tags.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

UNKNOWN = "unknown"
# Where there is no checkout to ask (a Kubeflow pod): the image's build records the commit
# (Dockerfile ARG GIT_COMMIT). The data's md5 is the one fetch_data read at the fetched revision,
# set by each component; it wins over a checkout's data.dvc (the data may be another revision's).
GIT_COMMIT_ENV = "TCNET_GIT_COMMIT"
DATA_HASH_ENV = "TCNET_DATA_HASH"
# distribution name -> short key used in tags (tcnet.version.<key>)
PACKAGES = {
    "tcnet": "tcnet",
    "torch": "torch",
    "mlflow": "mlflow",
    "numpy": "numpy",
    "segmentation-models-pytorch": "smp",
    "torchvision": "torchvision",
    "albumentations": "albumentations",  # the training augmentation
    "opencv-python-headless": "opencv",  # resizing (preprocess, evaluate)
    "pillow": "pillow",  # decoding
    "scipy": "scipy",  # compare's statistics
    "scikit-learn": "sklearn",  # the cross-validation folds
}


def project_root(start: Optional[Path] = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding ``params.yaml``, ``dvc.yaml``
    or ``.git``; ``start`` itself when there is none."""
    start = Path(start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if any((d / marker).exists() for marker in ("params.yaml", "dvc.yaml", ".git")):
            return d
    return start


def _git(root: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@functools.lru_cache(maxsize=8)
def git_state(root: Optional[str] = None) -> tuple[str, bool]:
    """``(commit sha, dirty)`` of the checkout at ``root`` (default: the one the tcnet code comes from);
    ``$TCNET_GIT_COMMIT`` or ``("unknown", False)`` outside git.

    Dirty = a tracked file differs from the commit, except ``dvc.lock`` (``dvc repro`` rewrites it
    after each stage, so counting it would call the later stages of one clean run dirty and split
    its MLflow parent run in two), or an untracked, not ignored Python file lies in the ``tcnet``
    package (a new module the commit does not hold; notes, editor backups and untracked files
    elsewhere do not count).
    """
    root_path = Path(root) if root else code_root()
    sha = _git(root_path, "rev-parse", "HEAD")
    if not sha:
        return os.environ.get(GIT_COMMIT_ENV, "").strip() or UNKNOWN, False
    status = _git(root_path, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock")
    new_code = _git(root_path, "ls-files", "--others", "--exclude-standard", "--", "tcnet/*.py")
    return sha, bool(status) or bool(new_code)


def dvc_data_hash(root: Optional[Path] = None, dvc_file: str = "data.dvc") -> str:
    """``$TCNET_DATA_HASH`` when set: a Kubeflow component sets it to the md5 fetch_data read at the
    revision it fetched, which describes the data the task was handed better than any checkout
    around it (the local runner works inside one); else the md5 DVC recorded for the raw data
    (``outs[0].md5`` of ``data.dvc``); ``""`` if neither."""
    return os.environ.get(DATA_HASH_ENV, "").strip() or md5_of_dvc_file(Path(root or project_root()) / dvc_file)


def md5_of_dvc_file(path, fs=None) -> str:
    """``outs[0].md5`` of the ``.dvc`` file ``path``, read from ``fs`` if given (e.g. a ``DVCFileSystem``
    at a revision) or else from disk; ``""`` when it is absent or has none."""
    try:
        import yaml

        text = fs.read_text(path) if fs is not None else Path(path).read_text()
        outs = (yaml.safe_load(text) or {}).get("outs") or []
    except (OSError, ValueError, AttributeError):
        return ""
    for out in outs:
        if isinstance(out, dict) and out.get("md5"):
            return str(out["md5"])
    return ""


def without_credentials(url: str) -> str:
    """``url`` without its secret: the whole user/token part of an http(s) URL (``https://TOKEN@host/r.git``
    and ``git+https://u:pw@host`` -> ``https://host/r.git``, ``git+https://host``), the password of any
    other scheme's (``ssh://git:pw@host/r.git`` -> ``ssh://git@host/r.git``: the user names the account),
    so that a compiled package or an artifact's metadata never holds a secret; scp-style ssh
    (``git@host:...``), which carries no password, unchanged."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    if parts.scheme.split("+")[-1] in ("http", "https"):
        netloc = host
    else:
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on (``{short key: version}``)."""
    from importlib import metadata

    out = {}
    for dist, key in PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = UNKNOWN
    out["python"] = platform.python_version()
    return out


def device_description(device) -> str:
    """``"cuda:0 (NVIDIA H100 ...)"`` or ``"cpu (x86_64, 2 threads)"``."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def code_root() -> Path:
    """The folder above the imported ``tcnet`` package: a checkout for an editable install."""
    return Path(__file__).resolve().parents[1]


def collect(device, root: Optional[Path] = None, description: Optional[str] = None) -> dict[str, str]:
    """Every provenance item as flat string tags (``tcnet.*`` plus MLflow's own git tag).

    The commit is that of the checkout the running ``tcnet`` code comes from (:func:`code_root`),
    not of the working folder, which may be another repository; ``root`` (default: the project
    around the working folder) is where ``data.dvc`` is read. ``description``: the device tag as
    given, for a stage that uses no torch device (``device`` is then not read, torch not imported)."""
    root = Path(root or project_root())
    sha, dirty = git_state()  # the checkout the tcnet code comes from (its default)
    tags = {
        "tcnet.git_commit": sha,
        "tcnet.git_dirty": str(dirty).lower(),
        "tcnet.data_hash": dvc_data_hash(root) or UNKNOWN,
        "tcnet.device": description if description is not None else device_description(device),
        "tcnet.host": platform.node() or UNKNOWN,
    }
    if sha != UNKNOWN:
        tags["mlflow.source.git.commit"] = sha
    tags.update({f"tcnet.version.{k}": v for k, v in package_versions().items()})
    return tags


__all__ = ["project_root", "git_state", "dvc_data_hash", "md5_of_dvc_file", "without_credentials", "package_versions",
           "device_description", "collect"]
