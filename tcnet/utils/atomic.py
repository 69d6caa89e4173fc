"""Write outputs so a crash never leaves them half-written: temp sibling, then ``os.replace``."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


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


OWNER_FILE = ".tcnet-output"  # in every folder atomic_dir writes for a command: "tcnet <command>"


def _owner_line(owner: str) -> str:
    return f"tcnet {owner}"


def _owner_text(owner: str) -> str:
    return f"{_owner_line(owner)}\nThis folder is replaced whole when 'tcnet {owner}' writes it again.\n"


def written_by(path: Path) -> str | None:
    """The first line of ``path``'s :data:`OWNER_FILE` (``"tcnet preprocess"``), or None."""
    try:
        with open(Path(path) / OWNER_FILE, encoding="utf-8", errors="replace") as f:
            return f.readline().strip() or None
    except OSError:
        return None


def _check_folder_place(path: Path) -> None:
    """Never a file the user has there, nor the current folder or one above it, replaced whole."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(errno.EEXIST, "exists and is not a folder", str(path))
    try:
        here, real = Path.cwd().resolve(), path.resolve()
    except OSError:  # the current folder is gone: nothing of it to protect
        return
    if real == here or real in here.parents:
        raise FileExistsError(errno.EEXIST, "is the current folder or holds it, and the output replaces its folder "
                              "whole: name a new folder", str(path))


def check_replaceable(path: str | Path, owner: str, own: Callable[[set[str]], bool] | None = None) -> None:
    """Refuse, before any work, an output folder that ``tcnet <owner>`` must not replace whole: the
    current folder or one above it, or a folder holding files that ``tcnet <owner>`` did not write
    there (no :data:`OWNER_FILE` of its own). An empty or missing folder, or the command's own
    earlier output, is fine. ``--out`` pointed at the raw data, another stage's output or a folder
    of one's own files would otherwise be deleted with everything in it.

    ``own``: for a folder without a mark, whether its names (top level) are the command's own all
    the same -- a run folder ``tcnet train`` wrote in place, a report written before the mark."""
    path = Path(path)
    _check_folder_place(path)
    if not path.is_dir():
        return
    by = written_by(path)
    if by == _owner_line(owner):
        return
    try:
        names = {p.name for p in path.iterdir()}
    except OSError as e:
        raise _unwritable(path, e) from e
    if not names or (by is None and own is not None and own(names)):
        return
    first = sorted(names)[:4]
    if by is not None:
        raise FileExistsError(errno.EEXIST, f"holds the output of '{by}', and 'tcnet {owner}' replaces its output "
                              "folder whole: name another folder", str(path))
    raise FileExistsError(errno.EEXIST, f"already holds files that 'tcnet {owner}' did not write "
                          f"({', '.join(first[:3])}{', ...' if len(first) > 3 else ''}), and the output replaces its "
                          "folder whole: remove the folder first, or name a new one", str(path))


def claim_dir(path: str | Path, owner: str, own: Callable[[set[str]], bool] | None = None) -> Path:
    """Make ``path`` (checked as :func:`check_replaceable` does) a folder marked as ``tcnet
    <owner>``'s, for a command that writes parts of it in place (``tcnet compare --experiment``)
    and replaces it whole on another run."""
    path = Path(path)
    check_replaceable(path, owner, own)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if written_by(path) is None:
            with atomic_write(path / OWNER_FILE) as f:
                f.write(_owner_text(owner))
    except OSError as e:
        raise _unwritable(path, e) from e
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, owner: str | None, own: Callable[[set[str]], bool] | None = None):
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` whole.

    A run killed half-way leaves the previous ``path`` intact and no partial folder behind
    (a stale ``.name.tmp-*`` sibling from a SIGKILL is removed by the next run).
    ``owner``: the command writing it (``"preprocess"``): ``path`` is checked first
    (:func:`check_replaceable`, with ``own``) and the new folder is marked as its (:data:`OWNER_FILE`). None:
    the caller has checked ``path`` itself (``tcnet synth --force``) and no mark is written.
    """
    path = Path(path)
    if owner is not None:
        check_replaceable(path, owner, own)
    else:
        _check_folder_place(path)
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
        if owner is not None:
            (tmp / OWNER_FILE).write_text(_owner_text(owner), encoding="utf-8")
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
