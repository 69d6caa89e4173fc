import pytest

from tcnet.utils.atomic import OWNER_FILE, atomic_dir, atomic_write, claim_dir


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
    with atomic_dir(out, owner="preprocess") as d:
        (d / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, owner="preprocess") as d:
            (d / "x").write_text("2")
            raise RuntimeError("killed")
    assert (out / "x").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == [OWNER_FILE, "x"]


def test_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    with atomic_dir(tmp_path / "d", owner="split") as d:
        (d / "f").write_text("x")
    with atomic_write(tmp_path / "g") as f:
        f.write("y")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "g").stat().st_mode) == 0o666 & ~mask


def test_a_file_where_the_output_folder_goes_is_refused_and_kept(tmp_path):
    target = tmp_path / "out"
    target.write_text("the user's file")
    with pytest.raises(FileExistsError, match="exists and is not a folder") as e:
        with atomic_dir(target, owner="split"):
            raise AssertionError("the work must not start")
    assert e.value.filename == str(target)
    assert target.read_text() == "the user's file" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_folder_where_the_output_file_goes_is_refused(tmp_path):
    (tmp_path / "out.json").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder, not a file"):
        with atomic_write(tmp_path / "out.json"):
            raise AssertionError("never opened")


def test_an_unwritable_place_is_named_not_its_temp_sibling(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for ctx in (atomic_dir(blocker / "sub", owner="split"), atomic_write(blocker / "sub" / "a.txt")):
        with pytest.raises(NotADirectoryError, match=f"cannot write here: {blocker} is a file, not a folder") as e:
            with ctx:
                raise AssertionError("never reached")
        assert ".tmp" not in e.value.filename and e.value.filename.startswith(str(blocker / "sub"))


def test_cli_says_which_path_cannot_be_written_without_a_traceback(tmp_path, capsys):
    from tcnet.cli import main

    (tmp_path / "taken").write_text("x")
    assert main(["synth", "ph2", "--n", "1", "--out", str(tmp_path / "taken" / "ph2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tcnet synth: error: {tmp_path / 'taken' / 'ph2'}: ") and "Traceback" not in err


def test_a_failed_output_leaves_no_empty_parent_folders(tmp_path):
    (tmp_path / "keep").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "keep" / "new" / "deeper" / "out", owner="evaluate"):
            raise RuntimeError("failed")
    assert [p.name for p in tmp_path.iterdir()] == ["keep"] and not any((tmp_path / "keep").iterdir())


def test_a_folder_the_command_did_not_write_is_refused_and_kept(tmp_path):
    """--out at the raw data, at another stage's output, or at a folder of the user's own files:
    refused before any work, every file kept (it used to be replaced whole, files and all)."""
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match=r"already holds files that 'tcnet split' did not write \(thesis.tex\)") as e:
        with atomic_dir(mine, owner="split"):
            raise AssertionError("the work must not start")
    assert e.value.filename == str(mine) and (mine / "thesis.tex").read_text() == "years of work"

    pre = tmp_path / "pre"
    with atomic_dir(pre, owner="preprocess") as d:
        (d / "manifest.csv").write_text("id\n")
    with pytest.raises(FileExistsError, match="holds the output of 'tcnet preprocess'"):
        with atomic_dir(pre, owner="split"):
            raise AssertionError("the work must not start")
    assert (pre / "manifest.csv").is_file()
    with atomic_dir(pre, owner="preprocess") as d:  # its own earlier output: replaced whole
        (d / "stats.json").write_text("{}")
    assert sorted(p.name for p in pre.iterdir()) == [OWNER_FILE, "stats.json"]

    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty, owner="split") as d:  # an empty folder is fine
        (d / "a.json").write_text("{}")
    assert (empty / "a.json").is_file()


def test_the_current_folder_or_one_above_it_is_never_replaced(tmp_path, monkeypatch):
    (tmp_path / "work" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work" / "sub")
    for target in (".", "..", str(tmp_path / "work")):
        for owner in ("split", None):  # None: even a caller that checked the folder itself (synth --force)
            with pytest.raises(FileExistsError, match="is the current folder or holds it"):
                with atomic_dir(target, owner=owner):
                    raise AssertionError("the work must not start")
    assert (tmp_path / "work" / "sub").is_dir()


def test_claim_dir_marks_a_folder_written_in_place(tmp_path):
    out = claim_dir(tmp_path / "reports", "compare")
    (out / "attention").mkdir()
    assert claim_dir(out, "compare") == out  # again: fine
    with atomic_dir(out, owner="compare") as d:  # and a whole run replaces it later
        (d / "report.md").write_text("#")
    with pytest.raises(FileExistsError, match="holds the output of 'tcnet compare'"):
        claim_dir(out, "evaluate")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="did not write"):
        claim_dir(tmp_path / "user", "compare")
