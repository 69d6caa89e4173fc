"""Write outputs so a crash never leaves them half-written: temp sibling, then ``os.replace``."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unwritable(path: Path, e: OSError) -> OSError:
    """``e`` (from making ``path``'s folder or its temp sibling) re-said about ``path`` itself: the
    temp name means nothing to the user. A file where a folder of the path should be is named
    (mkdir says only "File exists" or "Not a directory")."""
    for parent in path.parents:
        if parent.is_file():
            return NotADirectoryError(errno.ENOTDIR, f"cannot write here: {parent} is a file, not a folder", str(path))
    return type(e)(e.errno, f"cannot write here: {e.strerror or e}", str(path))


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield the path of an empty temporary file beside ``path`` (for writers that take a file name:
    ONNX, TorchScript); on success it replaces ``path`` in one step, on failure it is removed."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _unwritable(path, e) from e
    os.close(fd)
    # mkstemp makes 0600: the output should be readable like any new file (a server under another uid)
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **kwargs):
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one step."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` whole.

    A run killed half-way leaves the previous ``path`` intact and no partial folder behind
    (a stale ``.name.tmp-*`` sibling from a SIGKILL is removed by the next run).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():  # never replace a file the user has there
        raise FileExistsError(errno.EEXIST, "exists and is not a folder", str(path))
    # folders made here for ``path``, deepest first: removed again (when empty) if the work fails
    made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            _remove(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as e:
        raise _unwritable(path, e) from e
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the output should look like any mkdir
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.tmp-old"
            _remove(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            _remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in made:
            try:
                d.rmdir()
            except OSError:  # not empty (another output landed there meanwhile), or gone
                break
        raise
