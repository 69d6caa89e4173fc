"""Checkpoints: tensors and plain Python data only, written atomically, read with ``weights_only=True``.

A checkpoint is a dict (docs/architecture.md, "Checkpoints"):

    model         state dict (tensors)
    model_name    registry name          model_kwargs  create_model options (plain data)
    num_classes   int                    image_size    int (the side the model was trained at)
    epoch         int (epochs completed) optimizer / scheduler  state dicts ({} in best.pt)
    rng           {"torch": ByteTensor, "numpy": {...}, "python": {...}, "cuda": [...]} ({} in best.pt)
    history       list of per-epoch dicts (history.csv rows)
    run           RunSpec as plain data  config_hash   str
    code_hash / inputs_hash   str: the training code and inputs it was trained with (tcnet.fingerprint)
    best_epoch / best_score   the best validation DI so far and its epoch

Nothing else is ever stored (no pickled classes, no numpy objects), so ``torch.load(...,
weights_only=True)`` reads it: loading a checkpoint cannot execute code. :func:`plain` converts
numpy scalars/arrays on the way in and refuses anything it does not know.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from tcnet.utils.atomic import atomic_write


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with numpy values as Python scalars / tensors; raises on anything a
    ``weights_only`` load would refuse (custom classes, functions, ...)."""
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {(k if isinstance(k, (str, int)) else str(k)): plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where}: a {type(obj).__name__} cannot go into a checkpoint (tensors and plain data only)")


def save_checkpoint(state: dict, path, crc32: bool = True) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file beside it, fsync, then ``os.replace``.

    A crash (even ``kill -9``) leaves either the old file or the new one, never a torn one.
    ``crc32=False`` skips the CRC-32 that ``torch.save`` computes for every record of its zip: half
    of the save's time for a 300 MB checkpoint (0.65 → 0.31 s, docs/training.md), so the per-epoch
    resume state goes without it; the files that outlive a run (``best.pt``, the final ``last.pt``)
    keep it, and :func:`load_checkpoint` checks it (``torch.load`` never does).
    """
    from torch.utils.serialization import config as serialization_config

    path = Path(path)
    data = plain(state)
    with serialization_config.patch("save.compute_crc32", crc32), atomic_write(path, "wb") as f:
        torch.save(data, f)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint with ``torch.load(..., weights_only=True)`` (never unpickles objects).

    :class:`CheckpointError` for a file that is not a usable checkpoint; errors of the machine (a
    read error, no memory) are raised as they are: the file may be fine."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    if not _is_zip(path):  # torch.save writes a zip archive; torch's legacy format (before 1.6) too is read
        return _load_legacy(path, map_location)
    if _is_torchscript(path):
        raise CheckpointError(f"checkpoint {path}: a TorchScript export (tcnet export), not a checkpoint: pass the "
                              ".pt checkpoint it was exported from (best.pt / last.pt)")
    damaged = _crc_mismatch(path)
    if damaged:  # torch.load never checks the CRCs: damaged weights would load and predict wrongly
        raise CheckpointError(f"checkpoint {path}: corrupt ({damaged}): the file changed after it was written; "
                              "use another copy, or train the run again")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torn file, or pickled objects weights_only refuses
        if _not_the_files_fault(e):  # the machine's (a read error, no memory): the file may be fine
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path}: cannot be read with weights_only=True ({first})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path}: not a tcnet checkpoint (expected a dict with a 'model' state dict)")
    return ckpt


def _crc_mismatch(path: Path) -> Optional[str]:
    """The first record of the checkpoint's zip whose bytes do not match its CRC-32, or None.

    Records written without one (CRC 0: the per-epoch resume state, ``save_checkpoint(crc32=False)``)
    are not checked; ``best.pt`` and a finished run's ``last.pt`` have one in every record."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.CRC:
                    with z.open(info) as f:  # zipfile checks the CRC-32 when the record is read to its end
                        while f.read(1 << 24):
                            pass
    except Exception as e:  # noqa: BLE001 - BadZipFile (a CRC), zlib.error, EOFError, anything else
        if _not_the_files_fault(e):
            raise
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


def _load_legacy(path: Path, map_location) -> dict:
    """A checkpoint in torch's legacy (non-zip) format, ``torch.save(...,
    _use_new_zipfile_serialization=False)``: read with ``weights_only=True`` like any other (it has
    no CRCs to check); any other file is refused as not a checkpoint."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch file at all, or a torn one
        if _not_the_files_fault(e):
            raise
        raise CheckpointError(f"checkpoint {path}: not a PyTorch checkpoint (torch.save writes a zip archive, or "
                              "before torch 1.6 its legacy format; this file is neither: truncated, or another kind "
                              "of file)") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path}: not a tcnet checkpoint (expected a dict with a 'model' state dict)")
    return ckpt


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive (torch.jit.save: its code and constants beside the data)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _is_zip(path: Path) -> bool:
    """Whether ``path`` is a zip archive; a read error is raised (``zipfile.is_zipfile`` says False to
    one, and a file the disk could not read that moment is not a file to give up on)."""
    import zipfile

    try:
        with zipfile.ZipFile(path):
            return True
    except zipfile.BadZipFile:
        return False


def _not_the_files_fault(e: BaseException) -> bool:
    """Errors of the machine, not of the checkpoint: a read error (OSError: EIO, a network volume
    going away), no memory (MemoryError, the allocator's RuntimeError). A caller that treats a bad
    checkpoint as "start the run again" must not do so for these: it would throw away a good one."""
    if isinstance(e, (OSError, MemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def model_kwargs_of(ckpt: dict) -> dict:
    """The ``create_model`` options of a checkpoint (``num_classes`` included)."""
    kwargs = dict(ckpt.get("model_kwargs") or {})
    kwargs.setdefault("num_classes", int(ckpt.get("num_classes") or 1))
    return kwargs


def load_model(path, device="cpu", strict: bool = True):
    """``(model, meta)``: the model rebuilt with ``create_model(model_name, **model_kwargs)``, its
    weights loaded, in eval mode on ``device``; ``meta`` = the checkpoint without the state dicts."""
    from tcnet import create_model

    ckpt = load_checkpoint(path)
    name = ckpt.get("model_name")
    if not name:
        raise CheckpointError(f"checkpoint {path}: records no model_name")
    try:
        model = create_model(name, **model_kwargs_of(ckpt))
    except ValueError as e:  # an unknown model or option: say which checkpoint asked for it
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    try:
        model.load_state_dict(ckpt["model"], strict=strict)
    except RuntimeError:  # torch lists every key (tens of KB): say it in one line
        raise CheckpointError(f"checkpoint {path}: {weights_mismatch(model.state_dict(), ckpt['model'])}; "
                              f"these weights are not those of model {name!r} {model_kwargs_of(ckpt)}") from None
    model.to(torch.device(device) if not isinstance(device, torch.device) else device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "rng")}
    return model, meta


def weights_mismatch(expected: dict, got: dict) -> str:
    """One line on how state dict ``got`` differs from the model's ``expected``: counts, first keys."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shape = [k for k in expected if k in got and tuple(expected[k].shape) != tuple(getattr(got[k], "shape", ()))]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shape)):
        if keys:
            parts.append(f"{len(keys)} {what} (first: {keys[0]})")
    return ", ".join(parts) or "the weights do not load"


# ----------------------------------------------------------------------------------------------
# RNG state as plain data
# ----------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy and Python ``random`` states as tensors / ints / lists."""
    import random

    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": int(py_version), "state": [int(x) for x in py_state],
                   "gauss_next": None if py_gauss is None else float(py_gauss)},
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Optional[dict]) -> None:
    """Restore what :func:`rng_state` captured (missing parts are left alone)."""
    import random

    if not state:
        return
    if "torch" in state:
        torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    if state.get("numpy"):
        s = state["numpy"]
        np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), int(s["pos"]), int(s["has_gauss"]),
                             float(s["cached_gaussian"])))
    if state.get("python"):
        s = state["python"]
        random.setstate((int(s["version"]), tuple(int(x) for x in s["state"]), s["gauss_next"]))
    if state.get("cuda") and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.to(torch.uint8).cpu() for t in cuda])


__all__ = ["CheckpointError", "plain", "save_checkpoint", "load_checkpoint", "load_model", "model_kwargs_of",
           "rng_state", "set_rng_state"]
