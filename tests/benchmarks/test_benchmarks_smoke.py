"""Smoke test: every benchmark target runs in its ``--tiny`` mode and writes well-formed JSON.

Not a timing assertion: the tiny modes use toy shapes whose figures mean nothing. The targets run
in this process (one torch import for all), except what they start themselves (``memory``'s fresh
child process, ``dvc``, the preprocess pool).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.__main__ import TARGETS, main  # noqa: E402

REQUIRED = {"target", "mode", "command", "started", "seconds", "machine", "load_average", "settings", "tables",
            "summary", "notes"}


@pytest.mark.parametrize("target", TARGETS)
def test_tiny_run_writes_json(target, tmp_path, capsys):
    out = tmp_path / f"{target}.json"
    extra = ["--data", str(tmp_path / "raw")] if target == "preprocess" else []
    extra += ["--repo", str(tmp_path / "dvc")] if target == "dvc_noop" else []
    assert main([target, "--tiny", "--json", str(out), *extra]) == 0
    printed = capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert REQUIRED <= set(payload), REQUIRED - set(payload)
    assert payload["target"] == target and payload["mode"] == "tiny"
    assert payload["command"].startswith(f"python -m benchmarks {target} --tiny")
    assert payload["machine"]["cores"] >= 1 and payload["machine"]["torch"]
    assert {"metric", "value", "target", "met"} <= set(payload["summary"])
    assert not payload.get("error")
    if payload.get("skipped"):  # gpu_step without CUDA
        assert target == "gpu_step" and "no CUDA GPU" in printed
        return
    assert payload["tables"] and all(rows for rows in payload["tables"].values())
    assert "| " in printed  # a table was printed
    first = next(iter(payload["tables"].values()))
    assert isinstance(first, list) and isinstance(first[0], dict)


def test_every_target_has_help():
    from benchmarks.__main__ import build_parser

    parser = build_parser()
    for target in TARGETS:
        args = parser.parse_args([target, "--quick"])
        assert args.mode == "quick" and args.target == target
    # The top-level --help lists every target with its one-line description (the module doc's list).
    listed = {line.split()[0] for line in parser.epilog.splitlines()[2:] if line.strip()}
    assert listed == set(TARGETS) | {"all"}


def test_warm_up_calls_are_not_timed_and_titles_say_how_many_ran():
    import time

    from benchmarks import common

    calls = []

    def slow_first():
        calls.append(1)
        time.sleep(0.2 if len(calls) == 1 else 0.0)

    times = common.time_interleaved({"a": slow_first, "b": lambda: None}, repeats=3, warmup=1)
    assert len(calls) == 4 and len(times["a"]) == 3 and max(times["a"]) < 0.1
    assert common.median_of(3, [common.stats(t) for t in times.values()]) == "median of 3"
    assert common.median_of(3, [common.stats([1.0]), common.stats([1.0, 2.0, 3.0])]).startswith(
        "median of 1-3 (3 asked; the time budget")
    assert common.median_of(3, [common.stats([1.0] * 5)]) == "median of 5 (3 asked)"


@pytest.mark.parametrize("target", TARGETS)
def test_each_targets_help_renders(target, capsys):
    with pytest.raises(SystemExit) as e:
        main([target, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m benchmarks {target}") and "--quick" in text and "--wait-load" in text


def test_all_runs_each_target_in_its_own_process_with_every_flag(tmp_path, monkeypatch):
    import subprocess

    import benchmarks.__main__ as entry

    seen = []

    def fake_run(cmd, *a, **k):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(entry.subprocess, "run", fake_run)
    assert main(["all", "--quick", "--threads", "2", "--repeats", "4", "--wait-load", "1.5", "--json", str(tmp_path)]) == 0
    assert [c[3] for c in seen] == list(TARGETS)
    monkeypatch.setattr(entry.subprocess, "run", lambda cmd, *a, **k: subprocess.CompletedProcess(cmd, -9))
    assert main(["all", "--tiny"]) == 1  # a target killed by a signal (the OOM killer) fails the whole
    for cmd in seen:
        assert cmd[:3] == [sys.executable, "-m", "benchmarks"]
        assert cmd[4:] == ["--quick", "--threads", "2", "--repeats", "4", "--wait-load", "1.5", "--json",
                           str(tmp_path / f"{cmd[3]}.json")]
