"""tcnet.utils.cpus: the CPUs a process may use (affinity, cgroup quota, TCNET_CPUS)."""

import math

import pytest

from tcnet.utils import cpus


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_tightest_along_the_path(tmp_path):
    write(tmp_path / "cgroup.controllers", "cpu memory")
    write(tmp_path / "kubepods/cpu.max", "400000 100000")  # the pod's parent: 4 cores
    write(tmp_path / "kubepods/pod1/cpu.max", "150000 100000")  # the container: 1.5
    assert cpus.cgroup_cpu_quota("0::/kubepods/pod1", tmp_path) == 1.5
    write(tmp_path / "kubepods/pod1/cpu.max", "max 100000")
    assert cpus.cgroup_cpu_quota("0::/kubepods/pod1", tmp_path) == 4.0
    assert cpus.cgroup_cpu_quota("0::/elsewhere", tmp_path) is None


def test_cgroup_v1_quota_under_the_cpu_controller(tmp_path):
    write(tmp_path / "cpu,cpuacct/docker/c1/cpu.cfs_quota_us", "250000")
    write(tmp_path / "cpu,cpuacct/docker/c1/cpu.cfs_period_us", "100000")
    text = "4:memory:/docker/c1\n3:cpu,cpuacct:/docker/c1\n0::/"
    assert cpus.cgroup_cpu_quota(text, tmp_path) == 2.5
    write(tmp_path / "cpu,cpuacct/docker/c1/cpu.cfs_quota_us", "-1")
    assert cpus.cgroup_cpu_quota(text, tmp_path) is None


def test_tcnet_cpus_parsing():
    assert cpus.cpus_from_env({"TCNET_CPUS": "3"}) == 3
    for bad in ("", "0", "-2", "two", "4,2"):
        assert cpus.cpus_from_env({"TCNET_CPUS": bad}) is None
    assert cpus.cpus_from_env({}) is None
    assert cpus.cpus_from_env({"OMP_NUM_THREADS": "1"}) is None  # threads per process, not the pool's size


def test_available_cpus_takes_the_fewest(monkeypatch):
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 64)
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: None)
    assert cpus.available_cpus({}) == 64
    assert cpus.available_cpus({"TCNET_CPUS": "2"}) == 2  # a Kubeflow task's CPU request
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: 2.5)
    assert cpus.available_cpus({}) == math.ceil(2.5)
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: 0.2)
    assert cpus.available_cpus({}) == 1


def test_an_unreadable_quota_file_is_no_quota(tmp_path):
    write(tmp_path / "cgroup.controllers", "cpu")
    write(tmp_path / "pod/cpu.max", "garbage here")
    assert cpus.cgroup_cpu_quota("0::/pod", tmp_path) is None


def test_the_preprocess_pool_follows_tcnet_cpus(monkeypatch, tmp_path):
    """The stage's workers = 0 on a 64-core node with TCNET_CPUS=3: a pool of 3 processes."""
    from tcnet.config import PreprocessConfig
    from tcnet.stages import preprocess

    class Started(Exception):
        pass

    def start_pool(n):
        raise Started(n)

    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 64)
    monkeypatch.setattr(cpus, "cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(preprocess, "_start_pool", start_pool)
    monkeypatch.setenv("TCNET_CPUS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # threads per process: not the pool's size
    with pytest.raises(Started) as e:
        preprocess.run(PreprocessConfig(raw_dir=str(tmp_path)), tmp_path, tmp_path / "out")
    assert e.value.args == (3,)
