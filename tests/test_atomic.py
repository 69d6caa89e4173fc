import pytest

from tcnet.utils.atomic import atomic_dir, atomic_write


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with atomic_write(target) as f:
        f.write("new")
    assert target.read_text() == "new"


def test_atomic_dir_keeps_previous_outputs_on_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        (d / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as d:
            (d / "x").write_text("2")
            raise RuntimeError("killed")
    assert (out / "x").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("x")
    with atomic_write(tmp_path / "g") as f:
        f.write("y")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "g").stat().st_mode) == 0o666 & ~mask
