"""Device resolution and the CPU speed settings of tcnet.training.runtime."""

import pytest
import torch

from tcnet.training.runtime import flush_denormal, resolve_device


def test_resolve_device_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("") == resolve_device("auto")


@pytest.mark.parametrize("name, want", [("gpu", r"unknown device 'gpu' \(--device\); valid: auto, cpu, cuda"),
                                        ("tpu:0", r"unknown device 'tpu:0'")])
def test_resolve_device_names_the_option_and_the_choices(name, want):
    with pytest.raises(ValueError, match=want):
        resolve_device(name, option="--device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match=r"train.device is 'cuda' but CUDA is not available; use cpu or auto"):
        resolve_device("cuda")


def test_predict_and_serve_use_the_same_rule():
    from tcnet.tools.model_source import resolve_device as tools_resolve

    assert tools_resolve("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"\(--device\)"):
        tools_resolve("gpu")


def test_flush_denormal_is_on_in_the_block_and_off_after():
    supported = torch.set_flush_denormal(True)  # False where the CPU has no such mode
    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a float32 denormal
    with flush_denormal(torch.device("cpu")):
        inside = (tiny * 1.0).item()
    after = (tiny * 1.0).item()
    assert after != 0.0
    assert inside == (0.0 if supported else after)


@pytest.mark.parametrize("device, want", [("cpu", (True, False)), ("cuda", (True, True))])
def test_determinism_sets_the_flags_and_restores_them(device, want):
    """Strict on CPU, warn-only on CUDA (kernels TCNet needs have no deterministic CUDA version);
    the previous global flags come back after the block."""
    from tcnet.training.runtime import determinism

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    with determinism(True, torch.device(device)):
        assert (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) == want
    after = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    assert after == before


def test_a_cpu_chosen_by_auto_says_why_when_torch_has_cuda(monkeypatch):
    """A GPU machine whose driver torch cannot use trains on the CPU: the first line says so."""
    from tcnet.training import runtime

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    line = runtime.describe_device(torch.device("cpu"), "auto")
    assert "no usable CUDA GPU" in line and "CUDA 13.0" in line and "train.device: cuda" in line
    assert runtime.describe_device(torch.device("cpu"), "cpu") == "device cpu"  # asked for: nothing to explain
    monkeypatch.setattr(torch.version, "cuda", None)
    assert runtime.describe_device(torch.device("cpu"), "auto") == "device cpu"  # a CPU-only torch


def test_loader_workers_fit_the_cpus_of_the_process(monkeypatch):
    """A pod sees its node's cores; TCNET_CPUS (its request) bounds the DataLoader workers, one CPU
    left for each training process."""
    from tcnet.training.runtime import loader_workers
    from tcnet.utils import cpus

    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 64)  # the node's cores
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: None)
    monkeypatch.setenv("TCNET_CPUS", "4")
    assert loader_workers(8) == 3 and loader_workers(2) == 2 and loader_workers(0) == 0
    assert loader_workers(8, world_size=2) == 1 and loader_workers(8, world_size=5) == 0
