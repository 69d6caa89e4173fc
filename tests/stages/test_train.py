"""Stage train: outputs, skip/fresh-start rules, bit-exact resume after kill -9, non-finite loss,
DDP with two gloo processes, and the MLflow record of a trained run."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tcnet.checkpoint import load_checkpoint
from tcnet.config import Params, expand_runs, from_dict
from tcnet.stages import train

EXPERIMENT = "e"
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_DI", "val_JA", "lr", "seconds", "images_per_s"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Tiny ISIC 2017 look-alike (6 train / 3 val / 3 test, 50x40) through the real preprocess
    (32 px) and split stages: ``<root>/{raw,pre,splits}``."""
    from tcnet.config import PreprocessConfig, SplitConfig
    from tcnet.data.synth.writers import write_dataset
    from tcnet.stages import preprocess, split

    root = tmp_path_factory.mktemp("train_data")
    write_dataset("isic2017", root / "raw" / "isic2017", n=6, seed=1, size=(50, 40))
    preprocess.run(PreprocessConfig(datasets=("isic2017",), image_size=32, workers=1), root / "raw", root / "pre")
    split.run(SplitConfig(), root / "pre", root / "splits")
    return root


def params_dict(root: Path, epochs: int = 2, **train) -> dict:
    return {
        "preprocess": {"datasets": ["isic2017"], "image_size": 32},
        "train": {"epochs": epochs, "batch_size": 2, "lr": 1e-3, "device": "cpu", **train},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "log_models": False, "system_metrics": False},
        "experiments": {EXPERIMENT: {
            "title": "tiny", "reproduces": "test", "data": [{"name": "isic2017", "train": "isic2017"}],
            "model": "tcnet_tiny", "runs": [{"name": "tiny"}],
        }},
    }


def make_params(root: Path, **kw) -> Params:
    return from_dict(Params, params_dict(root, **kw)).validate()


def the_spec(params: Params):
    (spec,) = expand_runs(params, EXPERIMENT)
    return spec


def read_history(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trains_two_epochs_and_writes_every_output(data, tmp_path, capsys, monkeypatch):
    from tcnet.utils import heap

    heap_calls = []
    monkeypatch.setattr(heap, "retain_freed_memory", lambda **kw: heap_calls.append(kw) or True)
    params = make_params(tmp_path)
    t0 = time.perf_counter()
    result = train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=False)
    seconds = time.perf_counter() - t0
    # On CPU the run keeps its freed heap (no trimming): the next step reuses the activations' pages.
    assert heap_calls == [{"trim_threshold": None}]
    run_dir = tmp_path / "models" / EXPERIMENT / "isic2017__tiny__fold0"
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "history.csv", "last.pt", "run.json"]

    history = read_history(run_dir / "history.csv")
    assert list(history[0]) == HISTORY_COLUMNS and [r["epoch"] for r in history] == ["1", "2"]
    assert all(float(r["train_loss"]) == float(r["train_loss"]) for r in history)  # finite, not NaN
    assert float(history[1]["lr"]) < float(history[0]["lr"])  # cosine annealing, stepped per epoch

    info = json.loads((run_dir / "run.json").read_text())
    assert info == result["runs"][0]
    assert info["complete"] and info["config_hash"] == the_spec(params).config_hash()
    assert info["best_epoch"] in (1, 2) and 0.0 <= info["best_val_DI"] <= 1.0
    assert info["run"]["run_id"] == "isic2017__tiny__fold0" and info["n_train"] == 6 and info["n_val"] == 3
    prov = info["provenance"]  # recorded without MLflow too
    assert info["seed"] == 42 and prov["tcnet.git_commit"] and prov["tcnet.version.torch"].startswith("2.14")

    last = load_checkpoint(run_dir / "last.pt")
    assert {"model", "model_name", "model_kwargs", "num_classes", "image_size", "epoch", "optimizer", "scheduler",
            "rng", "history", "run", "config_hash"} <= set(last)
    assert last["epoch"] == 2 and last["image_size"] == 32 and last["model_name"] == "tcnet_tiny"
    assert last["optimizer"] == {} and last["scheduler"] == {}  # finished: no resume state kept (size)
    best = load_checkpoint(run_dir / "best.pt")
    assert best["epoch"] == info["best_epoch"] and best["optimizer"] == {}  # best.pt: weights, no optimizer
    print(f"\n[timing] tcnet_tiny, 2 epochs x 6 images at 32 px (+3 val), CPU: {seconds:.1f} s", file=sys.stderr)

    # a finished run is skipped, untouched
    mtime = (run_dir / "last.pt").stat().st_mtime_ns
    capsys.readouterr()
    again = train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=False)
    assert again["runs"][0] == {**info, "skipped": True} and (run_dir / "last.pt").stat().st_mtime_ns == mtime
    assert "skipping" in capsys.readouterr().err

    # another configuration does not resume from this last.pt: it starts fresh and says why
    changed = make_params(tmp_path, lr=5e-4, epochs=1)
    out = train.run(changed, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=False)
    assert "another configuration" in capsys.readouterr().err
    assert out["runs"][0]["config_hash"] == the_spec(changed).config_hash()
    assert len(read_history(run_dir / "history.csv")) == 1


def test_a_finished_run_is_trained_again_with_other_code_or_inputs(data, tmp_path, capsys, monkeypatch):
    """Under ``dvc repro`` the stage re-runs after a code or data change: runs trained by other code or
    on other inputs are not kept (nor resumed), the same ones are."""
    import shutil

    import tcnet.fingerprint as fingerprint

    shutil.copytree(data / "pre", tmp_path / "pre")
    params = make_params(tmp_path, epochs=1)
    run_dir = tmp_path / "models" / EXPERIMENT / "isic2017__tiny__fold0"

    def train_it() -> tuple[dict, str]:
        capsys.readouterr()
        info = train.run(params, EXPERIMENT, tmp_path / "pre", data / "splits", tmp_path / "models",
                         mlflow=False)["runs"][0]
        return info, capsys.readouterr().err

    first, _ = train_it()
    assert first["code_hash"] == fingerprint.code_hash() and len(first["inputs_hash"]) == 16
    assert load_checkpoint(run_dir / "last.pt")["inputs_hash"] == first["inputs_hash"]
    again, err = train_it()
    assert "skipping" in err and again == {**first, "skipped": True}

    monkeypatch.setattr(fingerprint, "code_hash", lambda: "c0de" * 4)  # the model code changed
    other_code, err = train_it()
    assert "skipping" not in err and "was written with other training code (code hash " in err, err
    assert other_code["code_hash"] == "c0de" * 4 and load_checkpoint(run_dir / "best.pt")["code_hash"] == "c0de" * 4
    assert train_it()[1].count("skipping") == 1  # and that run is kept in turn

    stats = json.loads((tmp_path / "pre" / "stats.json").read_text())  # the data changed: other class weights
    stats["isic2017"]["class_weights"] = [w * 2 for w in stats["isic2017"]["class_weights"]]
    (tmp_path / "pre" / "stats.json").write_text(json.dumps(stats))
    other_inputs, err = train_it()
    assert "was written with other training inputs (inputs hash " in err and "skipping" not in err, err
    assert other_inputs["inputs_hash"] != first["inputs_hash"] and other_inputs["code_hash"] == "c0de" * 4


def test_final_epoch_writes_last_pt_once_without_resume_state(data, tmp_path, monkeypatch):
    """Only the epochs before the last write the resume state; the final last.pt is written once."""
    import tcnet.checkpoint as checkpoint

    saves = []
    real = checkpoint.save_checkpoint
    monkeypatch.setattr(checkpoint, "save_checkpoint", lambda state, path, crc32=True: saves.append(
        (Path(path).name, state["epoch"], bool(state["optimizer"]), crc32)) or real(state, path, crc32=crc32))
    train.run(make_params(tmp_path, epochs=3), EXPERIMENT, data / "pre", data / "splits", tmp_path / "models",
              mlflow=False)
    # The resume state goes without torch.save's CRC (nothing reads it); the files that stay keep it.
    assert [s for s in saves if s[0] == "last.pt"] == [
        ("last.pt", 1, True, False), ("last.pt", 2, True, False), ("last.pt", 3, False, True)]
    assert all(not with_state and crc for name, _, with_state, crc in saves if name == "best.pt")


def _scripted_val_di(monkeypatch, scores: list[float]) -> None:
    """validate() as it is, but val_DI taken from ``scores`` in call order (one call per epoch)."""
    import tcnet.training.loop as loop

    real, left = loop.validate, list(scores)
    monkeypatch.setattr(loop, "validate", lambda *a, **k: {**real(*a, **k), "val_DI": left.pop(0)})


def _recording_saves(monkeypatch) -> list[tuple[str, int, dict]]:
    """Every save_checkpoint call: (file name, epoch, the weights written)."""
    import tcnet.checkpoint as checkpoint

    saves, real = [], checkpoint.save_checkpoint

    def record(state, path, crc32=True):
        saves.append((Path(path).name, state["epoch"], {k: v.clone() for k, v in state["model"].items()}))
        return real(state, path, crc32=crc32)

    monkeypatch.setattr(checkpoint, "save_checkpoint", record)
    return saves


@pytest.mark.parametrize("scores, writes, best_epoch", [
    ([0.5, 0.6, 0.4, 0.7, 0.8], [2, 5], 5),  # written when a worse epoch follows the best, and at the end
    ([0.5, 0.9, 0.4, 0.3, 0.2], [2], 2),  # once: the best is in the middle
    ([0.1, 0.2, 0.3, 0.4, 0.5], [5], 5),  # improving every epoch: once, at the end (was five times)
])
def test_best_pt_is_written_when_a_worse_epoch_follows_and_at_the_end(data, tmp_path, monkeypatch, scores, writes,
                                                                      best_epoch):
    _scripted_val_di(monkeypatch, scores)
    saves = _recording_saves(monkeypatch)
    params = make_params(tmp_path, epochs=len(scores))
    info = train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=False)["runs"][0]
    assert [epoch for name, epoch, _ in saves if name == "best.pt"] == writes
    assert info["best_epoch"] == best_epoch
    best = load_checkpoint(tmp_path / "models" / EXPERIMENT / the_spec(params).run_id / "best.pt")
    assert best["epoch"] == best_epoch and [r["epoch"] for r in best["history"]] == list(range(1, best_epoch + 1))
    # the weights the best epoch ended with, as its last.pt holds them
    (at_best,) = [w for name, epoch, w in saves if name == "last.pt" and epoch == best_epoch]
    assert tensors_equal(best["model"], at_best)
    assert not tensors_equal(best["model"], saves[-1][2]) or best_epoch == len(scores)


def test_best_pt_is_written_at_every_new_best_once_it_is_old(data, tmp_path, monkeypatch):
    """Epochs long enough that best.pt would be BEST_PT_MAX_AGE_S old: every new best is written at once."""
    _scripted_val_di(monkeypatch, [0.5, 0.6, 0.4, 0.7, 0.8])
    saves = _recording_saves(monkeypatch)
    monkeypatch.setattr(train, "BEST_PT_MAX_AGE_S", 0.0)
    train.run(make_params(tmp_path, epochs=5), EXPERIMENT, data / "pre", data / "splits", tmp_path / "models",
              mlflow=False)
    assert [epoch for name, epoch, _ in saves if name == "best.pt"] == [1, 2, 4, 5]
    for epoch in (1, 2, 4, 5):  # each with the weights its epoch ended with
        (best,) = [w for name, e, w in saves if name == "best.pt" and e == epoch]
        (last,) = [w for name, e, w in saves if name == "last.pt" and e == epoch]
        assert tensors_equal(best, last)


def _dies_in_epoch(monkeypatch, epoch: int):
    """Training is killed (KeyboardInterrupt, as SIGTERM) when ``epoch`` starts; returns the real epoch function."""
    import tcnet.training.loop as loop

    real_epoch = loop.train_one_epoch

    def dies(*a, **k):
        if k.get("epoch") == epoch:
            raise KeyboardInterrupt(f"killed in epoch {epoch}")
        return real_epoch(*a, **k)

    monkeypatch.setattr(loop, "train_one_epoch", dies)
    return real_epoch


def test_crash_before_best_pt_caught_up_resumes_with_the_best_weights(data, tmp_path, monkeypatch, capsys):
    """Killed in epoch 3 after two better epochs: no best.pt yet, last.pt holds epoch 2 (the best).
    The resumed run writes best.pt with epoch 2's weights, as an uninterrupted run does."""
    import tcnet.training.loop as loop

    scores = [0.5, 0.9, 0.4, 0.3]
    params = make_params(tmp_path, epochs=len(scores))
    run_id = the_spec(params).run_id
    _scripted_val_di(monkeypatch, scores)
    train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "reference", mlflow=False)
    reference = load_checkpoint(tmp_path / "reference" / EXPERIMENT / run_id / "best.pt")
    monkeypatch.undo()

    _scripted_val_di(monkeypatch, scores)
    real_epoch = _dies_in_epoch(monkeypatch, 3)
    out = tmp_path / "models"
    with pytest.raises(KeyboardInterrupt):
        train.run(params, EXPERIMENT, data / "pre", data / "splits", out, mlflow=False)
    run_dir = out / EXPERIMENT / run_id
    assert not (run_dir / "best.pt").exists() and load_checkpoint(run_dir / "last.pt")["epoch"] == 2
    monkeypatch.setattr(loop, "train_one_epoch", real_epoch)

    info = train.run(params, EXPERIMENT, data / "pre", data / "splits", out, mlflow=False)["runs"][0]
    assert "resuming after epoch 2" in capsys.readouterr().err
    best = load_checkpoint(run_dir / "best.pt")
    assert info["best_epoch"] == best["epoch"] == reference["epoch"] == 2
    assert tensors_equal(best["model"], reference["model"])


def test_crash_after_the_final_checkpoint_finishes_without_training(data, tmp_path, monkeypatch, capsys):
    """The process dies after the final epoch's last.pt (and before history.csv caught up): the rerun
    trains nothing, takes weights and history from last.pt, and finishes the run."""
    import tcnet.training.loop as loop

    params = make_params(tmp_path, epochs=2)
    out = tmp_path / "models"
    run_dir = out / EXPERIMENT / the_spec(params).run_id

    def crash(*a, **k):
        raise KeyboardInterrupt("died before finishing")

    monkeypatch.setattr(train, "_finish", crash)
    with pytest.raises(KeyboardInterrupt):
        train.run(params, EXPERIMENT, data / "pre", data / "splits", out, mlflow=False)
    monkeypatch.undo()
    lines = (run_dir / "history.csv").read_text().splitlines()
    (run_dir / "history.csv").write_text("\n".join(lines[:2]) + "\n")  # header + epoch 1: an epoch short
    weights = load_checkpoint(run_dir / "last.pt")["model"]

    epochs_trained = []
    real_epoch = loop.train_one_epoch
    monkeypatch.setattr(loop, "train_one_epoch", lambda *a, **k: epochs_trained.append(k.get("epoch")) or real_epoch(*a, **k))
    capsys.readouterr()
    result = train.run(params, EXPERIMENT, data / "pre", data / "splits", out, mlflow=False)
    err = capsys.readouterr().err
    assert epochs_trained == [] and "starting fresh" not in err and "finishing" in err, err
    info = result["runs"][0]
    assert info["complete"] and json.loads((run_dir / "run.json").read_text())["complete"]
    assert [r["epoch"] for r in read_history(run_dir / "history.csv")] == ["1", "2"]
    assert tensors_equal(load_checkpoint(run_dir / "last.pt")["model"], weights)


def test_checkpoint_dir_trains_and_resumes_there_and_copies_the_finished_run_to_out(data, tmp_path, monkeypatch,
                                                                                    capsys):
    """--checkpoint-dir: a run killed in epoch 2 leaves nothing in OUT (an output that would not survive
    the process anyway); the rerun resumes in the checkpoint folder and copies the finished run to OUT,
    with the weights of a run never interrupted."""
    import tcnet.training.loop as loop

    params = make_params(tmp_path, epochs=2)
    run_id = the_spec(params).run_id
    train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "reference", mlflow=False)

    real_epoch = _dies_in_epoch(monkeypatch, 2)
    out, volume = tmp_path / "models", tmp_path / "volume"
    with pytest.raises(KeyboardInterrupt):
        train.run(params, EXPERIMENT, data / "pre", data / "splits", out, mlflow=False, checkpoint_dir=volume)
    assert load_checkpoint(volume / EXPERIMENT / run_id / "last.pt")["epoch"] == 1
    assert not (out / EXPERIMENT / run_id).exists()
    monkeypatch.setattr(loop, "train_one_epoch", real_epoch)
    capsys.readouterr()

    args = ["train", "--params", str(tmp_path / "params.yaml"), "--experiment", EXPERIMENT, "--preprocessed",
            str(data / "pre"), "--splits", str(data / "splits"), "--out", str(out), "--checkpoint-dir", str(volume)]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict(tmp_path, epochs=2)))
    from mlflow import MlflowClient

    from tcnet.cli import main

    assert main(args) == 0  # with MLflow (params: sqlite in tmp_path)
    err = capsys.readouterr().err
    assert "resuming after epoch 1" in err and f"copied {volume / EXPERIMENT / run_id}" in err, err
    published = out / EXPERIMENT / run_id
    info = json.loads((published / "run.json").read_text())
    tags = MlflowClient(info["tracking_uri"]).get_run(info["mlflow_run_id"]).data.tags
    assert tags["tcnet.checkpoint"] == str((published / "best.pt").resolve())  # the copy, not the volume's
    assert sorted(p.name for p in published.iterdir()) == sorted([*train.OUTPUT_FILES, ".tcnet-output"])
    for name in train.OUTPUT_FILES:  # the very files of the checkpoint folder
        assert (published / name).read_bytes() == (volume / EXPERIMENT / run_id / name).read_bytes(), name
    ref = tmp_path / "reference" / EXPERIMENT / run_id
    assert tensors_equal(load_checkpoint(published / "best.pt")["model"], load_checkpoint(ref / "best.pt")["model"])
    assert tensors_equal(load_checkpoint(published / "last.pt")["model"], load_checkpoint(ref / "last.pt")["model"])

    # A finished run in the checkpoint folder (the retry of a task that died while uploading its output):
    # nothing is trained again, OUT (here a new one, as a retried pod's artifact is) gets the run, and the
    # MLflow tag follows it.
    shutil.rmtree(out)
    out2 = tmp_path / "models2"
    assert main([*args[:-3], str(out2), "--checkpoint-dir", str(volume)]) == 0
    err = capsys.readouterr().err
    assert "already trained" in err and "resuming" not in err and "copied" in err, err
    assert "0 of 1 run(s) trained, 1 already trained (skipped)" in err, err  # not "1/1 trained"
    again = out2 / EXPERIMENT / run_id
    assert (again / "best.pt").read_bytes() == (volume / EXPERIMENT / run_id / "best.pt").read_bytes()
    tags = MlflowClient(info["tracking_uri"]).get_run(info["mlflow_run_id"]).data.tags
    assert tags["tcnet.checkpoint"] == str((again / "best.pt").resolve())


def test_capped_loader_workers_are_said_once_with_the_cpus_they_need(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TCNET_CPUS", "2")
    monkeypatch.setattr(train, "_SAID", set())
    raw = params_dict(tmp_path, epochs=1, num_workers=3)
    raw["experiments"][EXPERIMENT]["runs"] = [{"name": "a"}, {"name": "b"}]
    params = from_dict(Params, raw).validate()
    result = train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=False)
    assert len(result["runs"]) == 2
    err = capsys.readouterr().err
    line = "train.num_workers 3 -> 1 DataLoader workers per process: 2 CPU(s) here for 1 process(es)"
    assert err.count(line) == 1 and "all 3 need 4 CPUs (TCNET_CPUS" in err, err


def test_kill_9_then_resume_matches_an_uninterrupted_run(data, tmp_path):
    """SIGKILL a CLI training during epoch 2 of 2, resume, compare with a run never interrupted."""
    params = make_params(tmp_path, epochs=2)
    spec = the_spec(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict(tmp_path, epochs=2)))

    ref_dir = tmp_path / "reference"
    train.train_run(spec, data / "pre", data / "splits", ref_dir, params.mlflow, None, progress=False)

    out = tmp_path / "models"
    run_dir = out / EXPERIMENT / spec.run_id
    cmd = [sys.executable, "-m", "tcnet.cli", "train", "--params", str(tmp_path / "params.yaml"), "--experiment",
           EXPERIMENT, "--preprocessed", str(data / "pre"), "--splits", str(data / "splits"), "--out", str(out),
           "--no-mlflow"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            h = run_dir / "history.csv"
            if h.is_file() and len(h.read_text().splitlines()) >= 2:  # epoch 1 checkpointed: now in epoch 2
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"training ended before it could be killed: {err[-2000:]}"
    killed_at = load_checkpoint(run_dir / "last.pt")["epoch"]
    assert killed_at == 1

    resumed = train.train_run(spec, data / "pre", data / "splits", run_dir, params.mlflow, None, progress=False)
    assert resumed["complete"]
    a, b = load_checkpoint(ref_dir / "last.pt"), load_checkpoint(run_dir / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    assert tensors_equal(a["model"], b["model"]), "resumed weights differ from the uninterrupted run"
    assert tensors_equal(load_checkpoint(ref_dir / "best.pt")["model"], load_checkpoint(run_dir / "best.pt")["model"])
    for ra, rb in zip(a["history"], b["history"], strict=True):
        for key in ("epoch", "train_loss", "val_loss", "val_DI", "val_JA", "lr"):
            assert ra[key] == rb[key] or (ra[key] != ra[key] and rb[key] != rb[key]), (key, ra, rb)
    assert [r["epoch"] for r in read_history(run_dir / "history.csv")] == ["1", "2"]


def test_non_finite_loss_stops_with_run_epoch_and_batch(data, tmp_path, monkeypatch):
    import tcnet.losses

    real = tcnet.losses.build_loss

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls = {"n": 0}

        class Poisoned(torch.nn.Module):  # a module, as the stage moves its losses to the run's device
            def __init__(self):
                super().__init__()
                self.loss = loss

            def forward(self, out, target, valid=None):
                value = self.loss(out, target, valid)
                if not torch.is_grad_enabled():  # validation
                    return value
                calls["n"] += 1
                return value * float("nan") if calls["n"] == poison_at else value

        return Poisoned()

    monkeypatch.setattr(tcnet.losses, "build_loss", poisoned)
    params = make_params(tmp_path, epochs=2)
    poison_at = 5  # epoch 2 (3 batches/epoch), batch 1
    with pytest.raises(train.NonFiniteLossError) as e:
        train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=False)
    msg = str(e.value)
    assert "isic2017__tiny__fold0" in msg and "epoch 2" in msg and "batch 1" in msg and "nan" in msg
    assert "resumed" not in msg
    # the same in the first epoch after a resume also names the resume state, which has no checksum
    poison_at = 1  # epoch 2, batch 0 of the resumed run
    with pytest.raises(train.NonFiniteLossError) as e:
        train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=False)
    assert re.search(r"epoch 2, batch 0 .*; this run resumed after epoch 1 from .*last\.pt, whose per-epoch copy "
                     r"carries no checksum: .*delete it", str(e.value)), str(e.value)


def test_unknown_run_id_is_a_usage_error(data, tmp_path, capsys):
    from tcnet.cli import main as cli

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict(tmp_path)))
    rc = cli(["train", "--params", str(tmp_path / "params.yaml"), "--experiment", EXPERIMENT, "--run",
              "isic2017__tiny__fold9", "--no-mlflow", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and "isic2017__tiny__fold9" in err and "isic2017__tiny__fold0" in err
    assert not (tmp_path / "m").exists()


def test_nproc_that_cannot_share_the_batch_is_refused_before_any_process_starts(data, tmp_path, capsys):
    from tcnet.cli import main as cli

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict(tmp_path, batch_size=4)))
    rc = cli(["train", "--params", str(tmp_path / "params.yaml"), "--experiment", EXPERIMENT, "--nproc", "3",
              "--preprocessed", str(data / "pre"), "--splits", str(data / "splits"), "--out", str(tmp_path / "m"),
              "--no-mlflow"])
    err = capsys.readouterr().err
    assert rc == 2 and "--nproc 3 does not divide train.batch_size" in err
    assert f"{EXPERIMENT}/isic2017__tiny__fold0 (4)" in err and "use --nproc 1 or 2 or 4" in err
    assert "launching" not in err and not (tmp_path / "m").exists()


def test_nproc_errors_are_one_line_before_any_process_starts(data, tmp_path, capsys):
    from tcnet.cli import main as cli

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict(tmp_path, batch_size=2)))
    base = ["train", "--params", str(tmp_path / "params.yaml"), "--experiment", EXPERIMENT, "--nproc", "2",
            "--preprocessed", str(data / "pre"), "--splits", str(data / "splits"), "--out", str(tmp_path / "m"),
            "--no-mlflow"]
    # CPU: 2 processes would share a batch of 2 as one image each
    assert cli(base) == 2
    err = capsys.readouterr().err
    assert "would give each process 1 image of train.batch_size 2" in err and "use fewer processes" in err
    assert cli(base + ["--run", "isic2017__nope__fold0"]) == 2  # a run id typo: checked here too
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "isic2017__tiny__fold0" in err and "launching" not in err
    assert not (tmp_path / "m").exists()


def test_the_last_batch_rule_under_ddp(data, tmp_path):
    """6 images, batch 4 over 2 processes (2 each): one process runs 2 steps (4 + 2). Synchronised
    BatchNorm (CUDA) does too; per-process BatchNorm (CPU) drops the step where each has 1 image."""
    from tcnet.training.runtime import Dist

    spec = the_spec(make_params(tmp_path, batch_size=4))
    two = Dist(world_size=2, rank=0, local_rank=0)  # a DistributedSampler needs no process group
    *_, one_loader, _, _ = train._loaders(spec, data / "pre", data / "splits", Dist())
    assert len(one_loader) == 2
    *_, synced, _, _ = train._loaders(spec, data / "pre", data / "splits", two, sync_bn=True)
    *_, alone, _, _ = train._loaders(spec, data / "pre", data / "splits", two, sync_bn=False)
    assert synced.batch_size == alone.batch_size == 2 and (len(synced), len(alone)) == (2, 1)


def test_a_process_that_cannot_read_what_process_0_resumes_from_fails(data, tmp_path):
    from tcnet.training.runtime import Dist

    params = make_params(tmp_path, epochs=1)
    train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=False)
    last = tmp_path / "models" / EXPERIMENT / "isic2017__tiny__fold0" / "last.pt"
    rank1 = Dist(world_size=2, rank=1, local_rank=1)
    assert train._load_as_process_0_did(last, 1, rank1)["epoch"] == 1
    with pytest.raises(RuntimeError, match=r"process 1 of 2: .*last.pt holds epoch 1, process 0 resumes after "
                                           r"epoch 3: every process must read the same run folder"):
        train._load_as_process_0_did(last, 3, rank1)
    last.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"process 1 of 2: .*; process 0 resumes after epoch 1 from it"):
        train._load_as_process_0_did(last, 1, rank1)


def test_workers_get_the_cores_shared_unless_told():
    from tcnet.training.runtime import worker_env

    from tcnet.utils.cpus import available_cpus

    cores = available_cpus({})
    assert worker_env(2, {"PATH": "/bin"})["OMP_NUM_THREADS"] == str(max(1, cores // 2))
    assert worker_env(64, {})["OMP_NUM_THREADS"] == "1"
    assert worker_env(2, {"OMP_NUM_THREADS": "7"})["OMP_NUM_THREADS"] == "7"


def test_workers_share_a_containers_cpu_quota_not_its_nodes_cores(monkeypatch):
    from tcnet.training.runtime import worker_env
    from tcnet.utils import cpus

    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 64)  # a pod's affinity: the node's cores
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: 6.0)  # its CPU limit
    assert worker_env(2, {})["OMP_NUM_THREADS"] == "3"


@pytest.mark.slow
def test_sigterm_stops_the_workers_too(data, tmp_path):
    """`kill` (SIGTERM) of `tcnet train --nproc 2`: torchrun's workers run in their own session, so
    the signal must be passed on; the command exits 130 and no worker is left training."""
    import psutil

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict(tmp_path, epochs=500, batch_size=4)))
    out = tmp_path / "models"
    cmd = [sys.executable, "-m", "tcnet.cli", "train", "--params", str(tmp_path / "params.yaml"), "--experiment",
           EXPERIMENT, "--preprocessed", str(data / "pre"), "--splits", str(data / "splits"), "--out", str(out),
           "--no-mlflow", "--nproc", "2"]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    last = out / EXPERIMENT / "isic2017__tiny__fold0" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert last.is_file(), proc.stderr.read()[-3000:] if proc.poll() is not None else "no epoch in 240 s"

    def workers():
        return [p for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])
                and p.pid != proc.pid]

    assert len(workers()) >= 3  # torchrun and its two workers
    proc.terminate()
    assert proc.wait(timeout=90) == 130
    assert "interrupted" in proc.stderr.read()
    deadline = time.monotonic() + 30
    while workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not workers()


@pytest.mark.slow
def test_ddp_two_gloo_processes(data, tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict(tmp_path, epochs=1, batch_size=4)))
    out = tmp_path / "models"
    cmd = [sys.executable, "-m", "tcnet.cli", "train", "--params", str(tmp_path / "params.yaml"), "--experiment",
           EXPERIMENT, "--preprocessed", str(data / "pre"), "--splits", str(data / "splits"), "--out", str(out),
           "--no-mlflow", "--nproc", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = out / EXPERIMENT / "isic2017__tiny__fold0"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["world_size"] == 2 and info["complete"]
    assert info["batch_per_process"] == 2  # train.batch_size 4 is the batch of a step, shared by the two
    ckpt = load_checkpoint(run_dir / "last.pt")
    loss = ckpt["history"][0]["train_loss"]
    assert ckpt["epoch"] == 1 and loss == loss and abs(loss) != float("inf")
    assert (run_dir / "best.pt").is_file()


def test_mlflow_record_of_a_trained_run(data, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'tracking.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # wins over params' mlflow.tracking_uri
    monkeypatch.setenv("TCNET_PIPELINE_RUN_ID", "test-pipeline")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    raw = params_dict(tmp_path, epochs=2)
    raw["mlflow"]["system_metrics"] = True
    params = from_dict(Params, raw).validate()
    result = train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=True)
    info = result["runs"][0]
    assert info["mlflow_run_id"] and info["tracking_uri"] == uri
    assert not (tmp_path / "mlflow.db").exists()

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"tcnet/{EXPERIMENT}")
    run = client.get_run(info["mlflow_run_id"])
    assert run.info.experiment_id == exp.experiment_id and run.info.status == "FINISHED"
    tags = run.data.tags
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.data.tags["tcnet.pipeline_run"] == "test-pipeline"
    for key in ("tcnet.git_commit", "tcnet.data_hash", "tcnet.params_hash", "tcnet.version.torch", "tcnet.device"):
        assert parent.data.tags.get(key), key  # provenance on the parent run too
    for key in ("tcnet.git_commit", "tcnet.git_dirty", "tcnet.data_hash", "tcnet.params_hash", "tcnet.seed",
                "tcnet.version.torch", "tcnet.version.tcnet", "tcnet.version.mlflow", "tcnet.version.numpy",
                "tcnet.version.smp", "tcnet.device", "tcnet.profile", "tcnet.run_id", "tcnet.config_hash",
                "tcnet.model", "tcnet.checkpoint"):
        assert tags.get(key), key
    assert tags["tcnet.run_id"] == "isic2017__tiny__fold0" and tags["tcnet.seed"] == "42"
    assert tags["tcnet.model"] == "tcnet_tiny" and Path(tags["tcnet.checkpoint"]).is_file()
    assert run.data.params["run.train.lr"] == "0.001"
    for key in ("train_loss", "val_loss", "val_DI", "val_JA", "lr", "seconds", "images_per_s"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2], key
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"history.csv", "run.json", "config"}
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)  # system metrics

    # training it again (complete: skipped) or resuming it finds the same MLflow run
    again = train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=True)
    assert again["runs"][0]["mlflow_run_id"] == info["mlflow_run_id"]
    assert tags["tcnet.code_hash"] == info["code_hash"] and tags["tcnet.inputs_hash"] == info["inputs_hash"]

    # trained again after a code change: a new MLflow run beside the old one, not appended to it
    import tcnet.fingerprint as fingerprint

    monkeypatch.setattr(fingerprint, "code_hash", lambda: "0" * 16)
    retrained = train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=True)
    new_id = retrained["runs"][0]["mlflow_run_id"]
    assert new_id != info["mlflow_run_id"] and client.get_run(new_id).data.tags["tcnet.code_hash"] == "0" * 16
    assert sorted(m.step for m in client.get_metric_history(info["mlflow_run_id"], "train_loss")) == [1, 2]


@pytest.mark.slow
def test_logged_model_is_pt2_and_predicts(data, tmp_path, monkeypatch):
    import mlflow
    import numpy as np

    uri = f"sqlite:///{tmp_path / 'tracking.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    raw = params_dict(tmp_path, epochs=1)
    raw["mlflow"]["log_models"] = True
    params = from_dict(Params, raw).validate()
    info = train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models")["runs"][0]
    assert info["mlflow_model_uri"].startswith("models:/")
    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(info["mlflow_model_uri"], dst_path=str(tmp_path / "dl")))
    assert (local / "data" / "model.pt2").is_file() and not list(local.rglob("*.pkl"))
    model = mlflow.pytorch.load_model(info["mlflow_model_uri"])
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32))
    from tcnet.checkpoint import load_model

    ref, _ = load_model(tmp_path / "models" / EXPERIMENT / "isic2017__tiny__fold0" / "best.pt")
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5)


def test_cpu_bf16_trains_in_bfloat16_deterministically(data, tmp_path, monkeypatch, capsys):
    """train.cpu_bf16: the run autocasts to bf16 on CPU (other numbers than float32), the same numbers twice,
    and warns where the CPU would only emulate bf16."""
    from tcnet.training import loop

    def history(name: str, **train_kw) -> list[dict]:
        train.run(make_params(tmp_path, **train_kw), EXPERIMENT, data / "pre", data / "splits", tmp_path / name,
                  mlflow=False)
        rows = read_history(tmp_path / name / EXPERIMENT / "isic2017__tiny__fold0" / "history.csv")
        return [{k: r[k] for k in ("train_loss", "val_loss", "val_DI")} for r in rows]

    fp32 = history("fp32")
    bf16 = history("bf16", cpu_bf16=True)
    assert bf16 != fp32 and bf16 == history("bf16_again", cpu_bf16=True)
    assert all(abs(float(a["train_loss"]) - float(b["train_loss"])) < 0.05 for a, b in zip(fp32, bf16))
    assert "no native bfloat16" not in capsys.readouterr().err or not loop.cpu_has_native_bf16()

    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)
    history("emulated", cpu_bf16=True, epochs=1)
    assert "train.cpu_bf16 is on but this CPU has no native bfloat16" in capsys.readouterr().err


def test_run_flag_takes_several_ids_at_once_or_repeated():
    from tcnet.cli import build_parser

    for command in ("train", "evaluate"):
        args = build_parser(command).parse_args([command, "--experiment", "e", "--run", "a", "b", "--run", "c"])
        assert args.runs == ["a", "b", "c"]
        assert build_parser(command).parse_args([command, "--experiment", "e"]).runs is None


def test_a_run_with_nothing_to_evaluate_is_refused_before_training(data, tmp_path):
    """DRIVE without test labels has an empty test part: say so now, not after every run has trained."""
    import json
    import shutil

    splits = tmp_path / "splits"
    shutil.copytree(data / "splits", splits)
    split = json.loads((splits / "isic2017.json").read_text())
    (splits / "isic2017.json").write_text(json.dumps({**split, "test": []}))
    d = params_dict(tmp_path)
    d["experiments"][EXPERIMENT]["data"] = [{"name": "isic2017", "train": "isic2017", "part": "test"}]
    params = from_dict(Params, d).validate()
    with pytest.raises(ValueError, match=r"the test part of .*isic2017.json is empty; nothing to evaluate"):
        train.run(params, EXPERIMENT, data / "pre", splits, tmp_path / "m", mlflow=False)
    assert not (tmp_path / "m").exists()


def test_a_killed_checkpoint_write_leaves_no_temporary_file_behind(data, tmp_path, capsys):
    """A kill during a checkpoint write leaves atomic_write's sibling; the next start removes it,
    and a changed setting is named when the run starts fresh."""
    params = make_params(tmp_path, epochs=1)
    run_dir = tmp_path / "m" / EXPERIMENT / "isic2017__tiny__fold0"
    run_dir.mkdir(parents=True)
    (run_dir / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "m", mlflow=False, progress=False)
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "history.csv", "last.pt", "run.json"]
    assert "run 1/1: isic2017__tiny__fold0 (tcnet_tiny, 1 epochs)" in capsys.readouterr().err
    longer = make_params(tmp_path, epochs=2)
    train.run(longer, EXPERIMENT, data / "pre", data / "splits", tmp_path / "m", mlflow=False, progress=False)
    assert "changed: train.epochs 1 -> 2" in capsys.readouterr().err


def _three_epochs_killed_in_the_third(data, tmp_path, monkeypatch, mlflow: bool):
    """A 3-epoch run killed in epoch 3 (last.pt holds epoch 2); the monkeypatches are undone after."""
    params = make_params(tmp_path, epochs=3)
    out = tmp_path / "models"
    _dies_in_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train.run(params, EXPERIMENT, data / "pre", data / "splits", out, mlflow=mlflow)
    monkeypatch.undo()
    return params, out, out / EXPERIMENT / the_spec(params).run_id


def test_a_read_error_on_resume_keeps_the_run_and_fails(data, tmp_path, monkeypatch):
    """last.pt that could not be read this once (EIO, no memory) is not "unusable": the run fails and
    keeps its files, and the next attempt resumes (it used to start again from epoch 0, deleting them)."""
    params, out, run_dir = _three_epochs_killed_in_the_third(data, tmp_path, monkeypatch, mlflow=False)
    real_load = torch.load

    def no_memory(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(torch, "load", no_memory)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        train.run(params, EXPERIMENT, data / "pre", data / "splits", out, mlflow=False)
    monkeypatch.setattr(torch, "load", real_load)
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 2  # still there
    epochs = []
    import tcnet.training.loop as loop

    real_epoch = loop.train_one_epoch
    monkeypatch.setattr(loop, "train_one_epoch", lambda *a, **k: epochs.append(k["epoch"]) or real_epoch(*a, **k))
    train.run(params, EXPERIMENT, data / "pre", data / "splits", out, mlflow=False)
    assert epochs == [3]


def test_a_new_best_is_written_after_its_last_pt(data, tmp_path, monkeypatch, capsys):
    """Killed between the two files of a new best (epoch 3 here): best.pt must never hold an epoch
    that last.pt has not recorded. Written before it (as it was), the resumed run re-ran epoch 3, which
    on a GPU may score lower: best.pt kept the lost epoch's weights under epoch 1's record."""
    import tcnet.checkpoint as checkpoint

    monkeypatch.setattr(train, "BEST_PT_MAX_AGE_S", 0.0)  # every new best is written at once
    _scripted_val_di(monkeypatch, [0.5, 0.3, 0.6])
    real_save, calls = checkpoint.save_checkpoint, []

    def dies_on_epoch_3s_second_file(state, path, crc32=True):
        calls.append(state["epoch"])
        if calls.count(3) == 2:
            raise KeyboardInterrupt("killed between the two files")
        return real_save(state, path, crc32=crc32)

    monkeypatch.setattr(checkpoint, "save_checkpoint", dies_on_epoch_3s_second_file)
    params = make_params(tmp_path, epochs=4)
    out = tmp_path / "models"
    run_dir = out / EXPERIMENT / the_spec(params).run_id
    with pytest.raises(KeyboardInterrupt):
        train.run(params, EXPERIMENT, data / "pre", data / "splits", out, mlflow=False)
    monkeypatch.undo()
    monkeypatch.setattr(train, "BEST_PT_MAX_AGE_S", 0.0)
    _scripted_val_di(monkeypatch, [0.2, 0.4])  # the epochs after the kill score lower
    info = train.run(params, EXPERIMENT, data / "pre", data / "splits", out, mlflow=False)["runs"][0]
    best = load_checkpoint(run_dir / "best.pt")
    assert best["epoch"] == info["best_epoch"] == 3
    history = read_history(run_dir / "history.csv")
    assert float(history[2]["val_DI"]) == pytest.approx(0.6) and best["best_score"] == pytest.approx(0.6)


def test_weights_that_become_non_finite_stop_the_run_before_they_are_saved(data, tmp_path, monkeypatch):
    import tcnet.training.loop as loop

    real_epoch = loop.train_one_epoch

    def overflows_in_epoch_2(model, *a, **k):
        res = real_epoch(model, *a, **k)
        if k["epoch"] == 2:  # an optimiser step that overflowed, the loss itself finite
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return res

    monkeypatch.setattr(loop, "train_one_epoch", overflows_in_epoch_2)
    params = make_params(tmp_path, epochs=3)
    out = tmp_path / "models"
    with pytest.raises(train.NonFiniteLossError, match=r"weights became NaN or infinite during epoch 2") as e:
        train.run(params, EXPERIMENT, data / "pre", data / "splits", out, mlflow=False)
    assert "isic2017__tiny__fold0" in str(e.value) and "lower train.lr" in str(e.value)
    last = load_checkpoint(out / EXPERIMENT / the_spec(params).run_id / "last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


def test_starting_again_from_epoch_0_logs_to_a_new_mlflow_run(data, tmp_path, monkeypatch, capsys):
    """last.pt unusable (or the run folder deleted) while MLflow holds the earlier try's epochs: the
    earlier MLflow run is marked superseded and the new try gets its own, each with one series."""
    from mlflow import MlflowClient

    from tcnet.tracking import RUN_ID_TAG, SUPERSEDED_TAG

    uri = f"sqlite:///{tmp_path / 'tracking.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params, out, run_dir = _three_epochs_killed_in_the_third(data, tmp_path, monkeypatch, mlflow=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    first = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    (run_dir / "last.pt").write_bytes(b"torn")  # unusable: the run starts again from epoch 0
    info = train.run(params, EXPERIMENT, data / "pre", data / "splits", out, mlflow=True)["runs"][0]
    assert "marked superseded" in capsys.readouterr().err
    client = MlflowClient(uri)
    assert info["mlflow_run_id"] != first
    steps = [m.step for m in client.get_metric_history(info["mlflow_run_id"], "train_loss")]
    assert sorted(steps) == [1, 2, 3]
    assert sorted(m.step for m in client.get_metric_history(first, "train_loss")) == [1, 2]
    old = client.get_run(first)
    assert old.data.tags[SUPERSEDED_TAG] == "true" and old.data.tags[RUN_ID_TAG].endswith("(superseded)")
    assert old.info.status == "KILLED"


def test_class_weights_come_from_the_runs_own_training_images(data, tmp_path, monkeypatch):
    """Not stats.json's dataset-level weights (every official training image, a cross-validation
    fold's held-out ones among them): the pixel counts of the ids this run trains on, clipped as
    preprocess clips."""
    import tcnet.losses
    from tcnet.data.dataset import ids_for, load_split, read_manifest
    from tcnet.losses.class_weights import class_weights_from_counts

    seen, real = [], tcnet.losses.build_loss
    monkeypatch.setattr(tcnet.losses, "build_loss", lambda *a, **k: seen.append(a[1]) or real(*a, **k))
    params = make_params(tmp_path, epochs=1, max_train_images=2)
    train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=False)
    ids = ids_for(load_split(data / "splits", "isic2017"), "train", 0)[:2]
    m = read_manifest(data / "pre").set_index("id").loc[ids]
    fg = int(m["fg_pixels"].sum())
    want = class_weights_from_counts([int(m["fov_pixels"].sum()) - fg, fg], (1.0, 50.0))
    assert seen and all(w == pytest.approx(want) for w in seen)
    stats = json.loads((data / "pre" / "stats.json").read_text())["isic2017"]["class_weights"]
    assert want != pytest.approx(stats, rel=1e-3)  # this fold's two images are not the dataset's four


def test_what_auto_measured_is_said_and_recorded(data, tmp_path, monkeypatch, capsys):
    """On CUDA lk_impl auto times its candidates per shape (lk_tune.py); the run says what it chose
    after its first epoch and run.json keeps the counts. Measuring forced on here (the CPU never
    measures), so the CPU runs the same code."""
    import tcnet.models.lk_conv as lk_conv
    from tcnet.models import lk_tune

    lk_tune.clear_cache()
    monkeypatch.setattr(lk_conv, "can_tune", lambda x: True)
    try:
        info = train.run(make_params(tmp_path, epochs=1), EXPERIMENT, data / "pre", data / "splits",
                         tmp_path / "models", mlflow=False)["runs"][0]
    finally:
        lk_tune.clear_cache()
    err = capsys.readouterr().err
    assert "lk_impl auto measured" in err, err
    counts = info["lk_auto_choices"]
    assert counts and set(counts) <= {"direct", "fft", "mixed"} and sum(counts.values()) >= 2  # train and eval keys
    assert json.loads((tmp_path / "models" / EXPERIMENT / the_spec(make_params(tmp_path)).run_id / "run.json")
                      .read_text())["lk_auto_choices"] == counts


def test_a_cpu_run_measures_nothing_and_says_nothing_of_it(data, tmp_path, capsys):
    from tcnet.models import lk_tune

    lk_tune.clear_cache()
    info = train.run(make_params(tmp_path, epochs=1), EXPERIMENT, data / "pre", data / "splits", tmp_path / "models",
                     mlflow=False)["runs"][0]
    assert "lk_auto_choices" not in info and "lk_impl auto measured" not in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_steps_replay_a_graph_and_an_interrupted_run_resumes(data, tmp_path, monkeypatch, capsys):
    """train.cuda_graph on CUDA: 6 images, batch 2, 4 epochs. The first run stops in epoch 3: its
    epoch 1 warms up (3 eager steps), epoch 2 captures and replays. The resume (Adam's capturable
    state from last.pt) finishes epochs 3-4: warm-up, then a capture for epoch 4's learning rate."""
    from tcnet.training import loop

    params = make_params(tmp_path, epochs=4, device="cuda", deterministic=False, cuda_graph=True)
    run_dir = tmp_path / "models" / EXPERIMENT / "isic2017__tiny__fold0"
    real = loop.train_one_epoch

    def stop_in_epoch_3(*a, **kw):
        if kw["epoch"] == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(loop, "train_one_epoch", stop_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=False)
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 2
    monkeypatch.setattr(loop, "train_one_epoch", real)
    capsys.readouterr()
    train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=False)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["complete"] and [r["epoch"] for r in read_history(run_dir / "history.csv")] == ["1", "2", "3", "4"]
    assert info["cuda_graph"] == {"captures": 1, "replays": 3, "eager_steps": 3}
    assert "train steps from a CUDA graph (train.cuda_graph): 3 replayed, 3 eager" in capsys.readouterr().err
    losses = [float(r["train_loss"]) for r in read_history(run_dir / "history.csv")]
    assert all(v == v for v in losses)


def test_publish_replaces_a_run_trained_in_place_but_not_a_users_folder(tmp_path):
    """``--checkpoint-dir`` over an OUT whose run was trained in place (``dvc repro``: no mark, the
    run's own files) replaces it, as docs/training.md says; a folder of anything else is refused."""
    done = tmp_path / "volume" / "run"
    done.mkdir(parents=True)
    for name in train.OUTPUT_FILES:
        (done / name).write_text(f"new {name}")
    in_place = tmp_path / "out" / "e" / "run"
    in_place.mkdir(parents=True)
    for name in train.OUTPUT_FILES:
        (in_place / name).write_text(f"old {name}")
    train.publish(done, in_place)
    assert (in_place / "best.pt").read_text() == "new best.pt" and (in_place / ".tcnet-output").is_file()
    stopped = tmp_path / "out" / "e" / "stopped"  # killed part-way in place: last.pt and a save's temp file
    stopped.mkdir()
    (stopped / "last.pt").write_text("epoch 3")
    (stopped / ".last.pt.x1y2.tmp").write_text("half")
    train.publish(done, stopped)
    assert sorted(p.name for p in stopped.iterdir()) == sorted([*train.OUTPUT_FILES, ".tcnet-output"])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "run.json").write_text("{}")
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"'tcnet train' did not write \(notes.txt, run.json\)"):
        train.publish(done, mine)
    assert (mine / "notes.txt").read_text() == "mine"
    for names in (["history.csv"], [".notes.tmp", "last.pt"]):  # no checkpoint; a temp file not train's
        other = tmp_path / f"other{len(names)}"
        other.mkdir()
        for name in names:
            (other / name).write_text("x")
        with pytest.raises(FileExistsError, match="did not write"):
            train.publish(done, other)


def test_a_checkpoint_dir_run_whose_out_folder_is_a_users_is_refused_before_training(data, tmp_path):
    """With --checkpoint-dir, OUT/<exp>/<run_id>/ is where the finished run is copied: a folder of
    other files there is refused before the first epoch, not after the training."""
    params = make_params(tmp_path, epochs=1)
    run_id = the_spec(params).run_id
    mine = tmp_path / "models" / EXPERIMENT / run_id
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="'tcnet train' did not write"):
        train.run(params, EXPERIMENT, data / "pre", data / "splits", tmp_path / "models", mlflow=False,
                  checkpoint_dir=tmp_path / "volume")
    assert not (tmp_path / "volume").exists() and (mine / "notes.txt").read_text() == "mine"
