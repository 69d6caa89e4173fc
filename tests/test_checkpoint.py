"""Checkpoints: atomic writes, weights_only loads, plain data only, RNG round trip, model rebuild."""

from __future__ import annotations

import pickletools
import random
import zipfile

import numpy as np
import pytest
import torch

from tcnet.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    plain,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _state(model) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3, eta_min=1e-6)
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    opt.step()
    sched.step()
    return {
        "model": model.state_dict(), "model_name": "tcnet_tiny", "model_kwargs": {"lk_size": 7},
        "num_classes": 1, "image_size": 32, "epoch": 1, "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "rng": rng_state(),
        "history": [{"epoch": 1, "train_loss": np.float32(0.5), "val_DI": float("nan")}],
        "run": {"experiment": "e", "fold": 0, "model_kwargs": {"lk_size": 7}}, "config_hash": "abc",
        "best_epoch": 1, "best_score": 0.25,
    }


@pytest.fixture(scope="module")
def tiny():
    import tcnet

    torch.manual_seed(0)
    return tcnet.create_model("tcnet_tiny", lk_size=7)


def _pickle_globals(path) -> set[str]:
    """Every ``module.name`` the pickle inside a torch checkpoint refers to."""
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        data = z.read(name)
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
    return found


def test_round_trip_loads_with_weights_only_and_holds_no_objects(tiny, tmp_path):
    path = save_checkpoint(_state(tiny), tmp_path / "last.pt")
    # only torch's tensor rebuild helpers and OrderedDict: nothing that could run tcnet/numpy code
    allowed_prefixes = ("torch._utils.", "torch.", "collections.OrderedDict")
    refs = _pickle_globals(path)
    assert refs and all(r.startswith(allowed_prefixes) for r in refs), refs
    assert not any("numpy" in r or "tcnet" in r for r in refs), refs
    ckpt = torch.load(path, weights_only=True)  # the contract: loads without unpickling objects
    assert ckpt["history"][0]["train_loss"] == pytest.approx(0.5) and type(ckpt["history"][0]["train_loss"]) is float
    assert load_checkpoint(path)["config_hash"] == "abc"
    for k, v in tiny.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)


def test_optimizer_and_scheduler_state_restore(tiny, tmp_path):
    state = _state(tiny)
    path = save_checkpoint(state, tmp_path / "last.pt")
    ckpt = load_checkpoint(path)
    opt = torch.optim.Adam(tiny.parameters(), lr=1e-3)
    opt.load_state_dict(ckpt["optimizer"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3, eta_min=1e-6)
    sched.load_state_dict(ckpt["scheduler"])
    assert sched.last_epoch == 1 and opt.param_groups[0]["lr"] == pytest.approx(state["optimizer"]["param_groups"][0]["lr"])


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    path = save_checkpoint({"model": {}, "rng": rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_load_model_rebuilds_the_network(tiny, tmp_path):
    path = save_checkpoint(_state(tiny), tmp_path / "best.pt")
    model, meta = load_model(path)
    assert not model.training and meta["model_name"] == "tcnet_tiny" and "optimizer" not in meta
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), tiny.eval()(x))


def test_a_checkpoint_of_an_unknown_model_is_named(tiny, tmp_path):
    state = _state(tiny)
    state["model_name"] = "tcnet_tinny"
    path = save_checkpoint(state, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match=r"best\.pt: unknown model 'tcnet_tinny' \(did you mean 'tcnet_tiny'"):
        load_model(path)


def test_a_folder_with_several_checkpoints_says_so(tiny, tmp_path):
    from tcnet.tools.model_source import resolved_checkpoint

    for name in ("a.pt", "b.pt"):
        save_checkpoint(_state(tiny), tmp_path / name)
    with pytest.raises(ValueError, match=r"2 \*\.pt files \(a\.pt, b\.pt\) and no best\.pt or last\.pt: pass one"):
        with resolved_checkpoint(tmp_path):
            pass


def test_atomic_write_keeps_the_old_file_when_saving_fails(tmp_path):
    path = save_checkpoint({"model": {}, "epoch": 1}, tmp_path / "last.pt")

    class NotPlain:
        pass

    with pytest.raises(TypeError, match="cannot go into a checkpoint"):
        save_checkpoint({"model": {}, "epoch": 2, "bad": NotPlain()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_plain_converts_numpy_and_refuses_objects():
    out = plain({"a": np.float64(1.5), "b": np.arange(3), "c": (1, [np.int64(2)])})
    assert out["a"] == 1.5 and type(out["a"]) is float
    assert torch.equal(out["b"], torch.arange(3))
    assert out["c"] == (1, [2])
    with pytest.raises(TypeError, match=r"checkpoint\.x"):
        plain({"x": object()})


def test_unreadable_checkpoints_are_named(tmp_path):
    bad = tmp_path / "torn.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"torn.pt: not a PyTorch checkpoint \(torch.save writes a zip"):
        load_checkpoint(bad)
    torch.save({"model": {}, "obj": np.arange(3)}, tmp_path / "pickled.pt")  # numpy array: pickled object
    with pytest.raises(CheckpointError, match="weights_only") as e:
        load_checkpoint(tmp_path / "pickled.pt")
    assert "\n" not in str(e.value) and "arbitrary code" not in str(e.value)  # torch's first line only
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_legacy_format_checkpoint_loads_and_a_torchscript_export_is_named(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    ckpt = load_checkpoint(tmp_path / "old.pt")  # torch's format before 1.6: weights_only reads it too
    assert ckpt["epoch"] == 3 and torch.equal(ckpt["model"]["w"], torch.ones(2))
    torch.save([1, 2], tmp_path / "list.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="list.pt: not a tcnet checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.warns(FutureWarning):  # torch.jit is deprecated, and still what `tcnet export` writes
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "m.ts")
    with pytest.raises(CheckpointError, match=r"m.ts: a TorchScript export \(tcnet export\), not a checkpoint"):
        load_checkpoint(tmp_path / "m.ts")


def test_save_without_crc32_round_trips_and_leaves_the_global_option(tiny, tmp_path):
    state = _state(tiny)
    save_checkpoint(state, tmp_path / "a.pt", crc32=False)
    assert torch.serialization.get_crc32_options() is True  # patched for the one save only
    back = load_checkpoint(tmp_path / "a.pt")
    assert back["epoch"] == 1 and all(torch.equal(back["model"][k], v) for k, v in state["model"].items())
    assert back["optimizer"]["state"].keys() == state["optimizer"]["state"].keys()
    # Without it the zip's records carry a CRC-32 of 0; by default a real one.
    with zipfile.ZipFile(tmp_path / "a.pt") as z:
        assert any(i.CRC == 0 and i.file_size > 0 for i in z.infolist())
    save_checkpoint(state, tmp_path / "b.pt")
    with zipfile.ZipFile(tmp_path / "b.pt") as z:
        assert all(i.CRC != 0 for i in z.infolist() if i.file_size > 0)


def test_a_damaged_checkpoint_is_refused_not_loaded_with_wrong_weights(tiny, tmp_path):
    """torch.load never checks the zip's CRC-32s: 64 zeroed bytes inside the weights load silently (a
    best.pt with 4 KiB zeroed predicted different masks). The records' CRCs catch it; a file saved
    without them still loads."""
    save_checkpoint(_state(tiny), tmp_path / "best.pt")
    with zipfile.ZipFile(tmp_path / "best.pt") as z:
        info = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor's record (stored, not deflated)
    data = bytearray((tmp_path / "best.pt").read_bytes())
    header = data[info.header_offset:info.header_offset + 30]  # its local header: name and extra lengths at 26, 28
    start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    middle = start + info.file_size // 2
    data[middle:middle + 64] = bytes(64)
    (tmp_path / "damaged.pt").write_bytes(bytes(data))
    torch.load(tmp_path / "damaged.pt", weights_only=True)  # what torch alone does: no complaint
    with pytest.raises(CheckpointError, match=r"damaged.pt: corrupt \(Bad CRC-32 for file .*use another copy"):
        load_checkpoint(tmp_path / "damaged.pt")

    save_checkpoint(_state(tiny), tmp_path / "no-crc.pt", crc32=False)  # records with CRC 0 are not checked
    assert load_checkpoint(tmp_path / "no-crc.pt")["epoch"] == 1


def test_weights_of_another_model_are_one_short_line(tiny, tmp_path):
    state = _state(tiny)
    state["model_kwargs"] = {"use_etm": False}  # the weights hold the ETM; the model built now has none
    path = save_checkpoint(state, tmp_path / "best.pt")
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    msg = str(e.value)
    assert "unexpected (first: " in msg and "not those of model 'tcnet_tiny'" in msg and len(msg) < 400, msg


def test_errors_of_the_machine_are_not_called_a_bad_checkpoint(tiny, tmp_path, monkeypatch):
    """A read error or no memory says nothing about the file: raised as they are, never as
    CheckpointError (the train stage starts a run again from epoch 0 on CheckpointError)."""
    save_checkpoint(_state(tiny), tmp_path / "last.pt")

    def no_memory(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(torch, "load", no_memory)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        load_checkpoint(tmp_path / "last.pt")
    monkeypatch.undo()

    def read_error(*a, **k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(zipfile, "ZipFile", read_error)
    with pytest.raises(OSError, match="Input/output error"):
        load_checkpoint(tmp_path / "last.pt")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1  # the file was fine all along
