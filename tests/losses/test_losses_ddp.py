"""The losses under data parallelism (``sum_across``): N processes with B/N images each compute the
loss and the gradients of one process with all B, for the Dice and the class-weighted CE terms, with
a field of view that differs per image. Without it they would not (the test's control)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_loss_worker.py")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "results.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_two_processes_train_as_one_with_the_whole_batch(two_processes, num_classes):
    r = two_processes[num_classes]
    assert r["loss"] == pytest.approx(r["ref"], rel=1e-5)
    for got, want in zip(r["grads"], r["ref_grads"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_without_sum_across_the_processes_would_train_another_loss(two_processes, num_classes):
    r = two_processes[num_classes]
    assert abs(r["naive"] - r["ref"]) > 1e-4
    worst = max(float((g - w).abs().max() / w.abs().max()) for g, w in zip(r["naive_grads"], r["ref_grads"]))
    print(f"naive: loss off by {abs(r['naive'] - r['ref']):.2e}, gradients by {worst:.2e} (relative)")
    assert worst > 1e-2
