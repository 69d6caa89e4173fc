"""An output file's path checked before the work that fills it (``tcnet score --out``, ``tcnet models
--json``): a folder, a place under a file, or an unwritable folder is refused up front, not after
minutes of work and a printed table."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def check_out_file(out: Path, option: str) -> None:
    """Refuse ``out`` (the value of ``option``, e.g. ``--out``) if no file can be written there."""
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"is a folder; {option} names the JSON file to write", str(out))
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write here: {parent} is a file, not a folder", str(out))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"cannot write here: {parent} is not writable", str(out))
