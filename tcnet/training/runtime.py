"""Where and how a training runs: device, determinism, seeding, and (optionally) DDP processes."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Optional, Sequence

import numpy as np
import torch


def resolve_device(name: str = "auto", local_rank: int = 0, *, option: str = "train.device") -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``; under DDP on CUDA each process takes
    ``cuda:<local_rank>``. Asking for a device that is not there is an error a person can act on;
    ``option`` names the setting in it (``train.device``, ``--device``). The one device rule of the
    project: training, evaluation, predict and serve all resolve through here."""
    name = (name or "auto").strip()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{option} is {name!r} but CUDA is not available; use cpu or auto")
        if name == "cuda":
            name = f"cuda:{local_rank % max(torch.cuda.device_count(), 1)}"
        torch.cuda.set_device(torch.device(name))
    elif name == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{option} is 'mps' but MPS is not available; use cpu or auto")
    elif name != "cpu":
        raise ValueError(f"unknown device {name!r} ({option}); valid: auto, cpu, cuda, cuda:N, mps")
    return torch.device(name)


def describe_device(device: torch.device, setting: str = "auto") -> str:
    """One line on where a run trains, and why there where ``auto`` chose the CPU although this torch
    has CUDA (an older driver, no visible GPU): otherwise a GPU machine trains on its CPU unnoticed."""
    if device.type == "cuda":
        return f"device {device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu" and setting in ("", "auto") and torch.version.cuda:
        return ("device cpu (train.device auto found no usable CUDA GPU; on a GPU machine check the driver "
                f"for CUDA {torch.version.cuda} and CUDA_VISIBLE_DEVICES, or set train.device: cuda to fail instead)")
    return f"device {device}"


def loader_workers(requested: int, world_size: int = 1, cpus: Optional[int] = None) -> int:
    """DataLoader workers per process: ``requested``, at most the CPUs this process has beside itself
    (``cpus``, default :func:`tcnet.utils.cpus.available_cpus` -- a pod's request via TCNET_CPUS --
    shared by the ``world_size`` processes, less one for the process itself)."""
    from tcnet.utils.cpus import available_cpus

    cpus = available_cpus() if cpus is None else cpus
    return max(0, min(int(requested), cpus // max(1, world_size) - 1))


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """``deterministic``: deterministic kernels everywhere (``torch.use_deterministic_algorithms``).

    CPU: strict (an op without a deterministic kernel raises). CUDA: ``warn_only=True``, because
    kernels TCNet needs (bilinear upsampling backward, ...) have no deterministic CUDA version; the
    cuBLAS workspace is pinned (``CUBLAS_WORKSPACE_CONFIG``) and cuDNN autotuning is off, but GPU
    runs are still not guaranteed bit-identical (docs/training.md, "Determinism").
    """
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = bool(deterministic)
        torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    else:
        torch.use_deterministic_algorithms(bool(deterministic))


@contextlib.contextmanager
def determinism(deterministic: bool, device: torch.device):
    """:func:`configure_determinism` for the block, then the previous global settings again (so a
    training inside a larger process, a test session or a notebook, leaves no global change)."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    configure_determinism(deterministic, device)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


@contextlib.contextmanager
def flush_denormal(device: torch.device):
    """Denormal floats flushed to zero for the block on CPU (restored to torch's default after).

    Gradients and Adam moments that underflow into the denormal range take x86's slow arithmetic
    path. Measured (``python -m benchmarks cpu_settings``, 448², batch 2): U-Net's step 4-8 %
    faster, tcnet_base's unchanged (-3 to +4 %, within noise). Values below ~1e-38 become 0: no
    effect on learning.
    torch cannot report the previous setting, so the block ends with torch's default (off).
    """
    if device.type != "cpu" or not torch.set_flush_denormal(True):  # False: the CPU has no such mode
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed that depends on ``(seed, epoch)`` only (data order, loader worker seeds)."""
    ss = np.random.SeedSequence([int(seed) % 2**32, int(epoch) % 2**32, 0x7C4E7])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


# ----------------------------------------------------------------------------------------------
# Distributed data parallel
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly single-process) training."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over the processes (float64 on CPU: exact enough, works with gloo)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if torch.distributed.get_backend() == "nccl":
            t = t.cuda()
        torch.distributed.all_reduce(t)
        return t.cpu().tolist()

    def sum_across(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """The losses' ``sum_across`` (``tcnet.losses._functional``): a tensor summed over the
        processes with its gradient kept (:class:`_SumAcross`). None for one process."""
        return _SumAcross.apply if self.enabled else None

    def broadcast(self, obj):
        """Process 0's ``obj`` in every process (picklable; one process: ``obj``)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


class _SumAcross(torch.autograd.Function):
    """All-reduce (sum) whose backward is the all-reduce of the gradients: every process computes
    the loss of the whole step's batch from the summed sums, so each one's gradient of its share is
    the sum over the processes' copies of dL/dsums, and DDP's mean of the parameters' gradients
    gives the one-process gradient exactly (tests/losses/test_losses_ddp.py). Written here rather
    than taken from torch.distributed.nn.functional.all_reduce, which torch 2.14 deprecates."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(grad)
        return grad


def in_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device_name: str = "auto") -> Dist:
    """Join the process group torchrun set up (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``): NCCL when the
    training runs on CUDA, else gloo. Single process (no torchrun): ``Dist()``."""
    if not in_torchrun():
        return Dist()
    world, rank, local = (int(os.environ[k]) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    if not torch.distributed.is_initialized():
        use_cuda = torch.cuda.is_available() and device_name != "cpu"
        if use_cuda:
            torch.cuda.set_device(local % torch.cuda.device_count())
        # Process 0 alone validates and finishes a run (MLflow uploads of the model included) while the
        # others wait at a barrier: NCCL's default 10-minute timeout would abort them.
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(hours=2))
    return Dist(world, rank, local)


def shutdown_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def per_process_batch(batch_size: int, processes: int) -> int:
    """Each process's share of ``train.batch_size``, the batch of ONE optimiser step whatever the
    number of processes: ``--nproc`` (GPUs) changes the speed of a training, not the training.
    ``processes`` must divide the batch (:func:`tcnet.config.check_batch_split` says so)."""
    if processes < 1 or batch_size % processes:
        raise ValueError(f"batch {batch_size} cannot be split over {processes} processes")
    return batch_size // processes


def worker_env(nproc: int, environ) -> dict:
    """The workers' environment: ``environ`` with ``OMP_NUM_THREADS`` = this process's CPUs (affinity,
    cgroup quota: :func:`tcnet.utils.cpus.available_cpus`) shared among ``nproc`` workers, unless it
    is set (torchrun would set 1)."""
    from tcnet.utils.cpus import available_cpus

    env = dict(environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, available_cpus(env) // int(nproc)))
    return env


def relaunch_with_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """Run ``tcnet <argv>`` in ``nproc`` processes under ``torch.distributed.run`` (one machine);
    returns torchrun's exit status.

    A SIGTERM or Ctrl-C here (KeyboardInterrupt, ``tcnet.cli``) is passed on to torchrun as SIGTERM,
    and this waits for it: torchrun stops its workers (they run in their own session, so a signal to
    this process alone never reaches them) and SIGKILLs them after 30 s. Then the interrupt goes on
    to the CLI (status 130). Without ``OMP_NUM_THREADS`` torchrun gives each worker one thread:
    set it to this process's cores shared among the workers."""
    import signal

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
           "-m", "tcnet.cli", *argv]
    env = worker_env(nproc, os.environ)
    print(f"tcnet: launching {nproc} processes ({env['OMP_NUM_THREADS']} threads each): {' '.join(cmd[1:])}",
          file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while proc.poll() is None:  # a second Ctrl-C or SIGTERM does not leave torchrun unattended
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
            except KeyboardInterrupt:
                pass
        raise


__all__ = ["resolve_device", "configure_determinism", "determinism", "seed_everything", "epoch_seed", "Dist", "in_torchrun",
           "init_distributed", "shutdown_distributed", "relaunch_with_torchrun", "per_process_batch", "worker_env"]
