"""``dvc repro`` with nothing changed (target <= 2 s), and ``dvc status``.

The project's working tree is shared with other work, so the no-op ``dvc repro`` is timed on a
temporary copy: what a clone holds (tracked + untracked-not-ignored files), ``git init`` + commit,
``dvc pull data.dvc`` (the raw data) from the bundled remote, ``params.yaml`` cut to a tiny profile
(every experiment kept -- the stage count, 13, is the project's -- but one or two runs each, 1
epoch, 8 training images), one real ``dvc repro``, then the timed no-op ``dvc repro`` and ``dvc
status`` (interleaved, wall time of the command as a user runs it). The copy is kept in the
temporary folder (about 3 GB, mostly checkpoints; delete ``$TMPDIR/tcnet-bench-<uid>/dvc_noop-project``
to reclaim it) and reused while ``dvc status`` says it is up to date (``--fresh`` rebuilds it).
``dvc --version`` is timed too: the CLI's fixed start-up cost.

Also timed, on the project itself: ``dvc status``, and, when it has outputs (``dvc.lock``,
``outputs/``) and ``dvc status`` says nothing changed, ``dvc repro --dry`` -- the same up-to-date
checks as a no-op repro, but unable to start a stage should someone change a dependency meanwhile
in a shared working tree. ``--in-place`` adds the real ``dvc repro`` there (for your own tree).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import common
from benchmarks.common import Col

HELP = "`dvc repro` with nothing changed, and `dvc status`"
TARGET_S = 2.0
BIN = Path(sys.executable).parent
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
UP_TO_DATE = "Data and pipelines are up to date."


def add_arguments(p) -> None:
    p.add_argument("--repo", type=Path, default=None, help="where to build the temporary copy (default: temp folder)")
    p.add_argument("--fresh", action="store_true", help="rebuild the temporary copy and its first repro")
    p.add_argument("--in-place", action="store_true",
                   help="also time the no-op `dvc repro` in the project itself (only if `dvc status` is clean)")


def _env(repo: Path) -> dict:
    return {**os.environ, **GIT_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}", "DVC_NO_ANALYTICS": "1",
            "TCNET_CV2_THREADS": "0"}


def sh(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(cwd))
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd} ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def dvc(*args: str) -> list[str]:
    exe = BIN / "dvc"
    return [str(exe) if exe.exists() else "dvc", *args]


def tiny_profile(params: dict) -> dict:
    """The demo params cut to seconds per run; every experiment (so every stage) kept."""
    p = yaml.safe_load(yaml.safe_dump(params))
    p["train"].update(epochs=1, batch_size=4, max_train_images=8)
    p["split"]["cv_folds"] = 2
    p["preprocess"]["image_size_overrides"] = {d: 64 for d in p["preprocess"].get("image_size_overrides", {})}
    p["mlflow"]["log_models"] = False
    p["compare"]["bootstrap"] = 100
    for exp in p["experiments"].values():
        keep = {exp["runs"][0]["name"], exp.get("baseline_of")}  # the run the others are compared with stays
        exp["runs"] = [r for r in exp["runs"] if r["name"] in keep]
        exp["data"] = exp["data"][:1]
        exp.pop("train", None)  # experiment-level train overrides (the demo's ablation) would win over train.*
    return p


def copy_project(dst: Path) -> None:
    """What a clone would hold: tracked and untracked-not-ignored files (``git ls-files -co``)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=common.ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = common.ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def build_project_copy(repo: Path) -> float:
    """The temporary copy with the tiny profile, reproduced once; returns the first repro's seconds."""
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    common.progress(f"copying the project to {repo}")
    copy_project(repo)
    params = tiny_profile(yaml.safe_load((repo / "params.yaml").read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "benchmark copy (tiny profile)"], repo)
    common.progress("dvc pull (raw data from the bundled remote)")
    sh(dvc("pull", "-q", "data.dvc"), repo)
    common.progress("first dvc repro (every stage runs once; minutes)")
    t = time.perf_counter()
    sh(dvc("repro"), repo)
    return time.perf_counter() - t


def build_minimal(repo: Path) -> float:
    """Tiny mode: a one-stage DVC project (checks the machinery in seconds)."""
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    (repo / "in.txt").write_text("hello\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"copy": {
        "cmd": f"{sys.executable} -c \"import shutil; shutil.copy('in.txt', 'out.txt')\"",
        "deps": ["in.txt"], "outs": ["out.txt"]}}}))
    sh(["git", "init", "-q"], repo)
    sh(dvc("init", "-q"), repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "minimal"], repo)
    t = time.perf_counter()
    sh(dvc("repro"), repo)
    return time.perf_counter() - t


def is_up_to_date(repo: Path) -> bool:
    if not (repo / "dvc.lock").exists():
        return False
    p = sh(dvc("status"), repo, check=False)
    return p.returncode == 0 and UP_TO_DATE in p.stdout


def project_state() -> dict:
    root = common.ROOT
    state = {"dvc_lock": (root / "dvc.lock").exists(), "outputs": (root / "outputs").is_dir()}
    state["has_outputs"] = state["dvc_lock"] and state["outputs"]
    return state


def _timed(cmd: list[str], repo: Path, check_noop: bool, errors: list[str]):
    def fn():
        p = sh(cmd, repo, check=False)
        if p.returncode != 0:
            errors.append(f"{' '.join(cmd[-2:])} exited {p.returncode}: {p.stderr.strip()[-300:]}")
        elif check_noop and "Running stage" in p.stdout:
            errors.append(f"{' '.join(cmd[-2:])} was not a no-op: {p.stdout.strip()[-300:]}")
    return fn


COLS = [Col("command", "command"), Col("where", "where"), Col("seconds", "s (median)", ".2f"),
        Col("min_s", "min s", ".2f"), Col("max_s", "max s", ".2f"), Col("vs_target", "vs 2 s target", ".2f")]


def run(args, mode: common.Mode) -> dict:
    repeats = args.repeats or mode.pick(1, 3, 5)
    notes, errors = [], []
    state = project_state()
    if not state["has_outputs"]:
        missing = [n for n, ok in (("dvc.lock", state["dvc_lock"]), ("outputs/", state["outputs"])) if not ok]
        msg = (f"the project at {common.ROOT} has no pipeline outputs ({', '.join(missing)} missing): "
               "no repro has run there; the no-op repro is timed on a temporary copy with a tiny profile")
        notes.append(msg)
        common.say(msg)
    base = args.repo or Path(tempfile.gettempdir()) / f"tcnet-bench-{os.getuid()}"
    first_s = None
    if mode.tiny:
        repo = Path(base) / "dvc_noop-minimal"
        first_s = build_minimal(repo)
        where = "minimal 1-stage project (tiny mode)"
    else:
        repo = Path(base) / "dvc_noop-project"
        if args.fresh or not is_up_to_date(repo):
            first_s = build_project_copy(repo)
        else:
            common.progress(f"reusing {repo} (up to date)")
        where = "project copy, tiny profile"
    n_stages = 1 if mode.tiny else len([ln for ln in sh(dvc("stage", "list"), repo).stdout.splitlines() if ln.strip()])
    fns = {
        "dvc repro": _timed(dvc("repro"), repo, True, errors),
        "dvc status": _timed(dvc("status"), repo, False, errors),
    }
    if not mode.tiny:
        fns["dvc --version"] = _timed(dvc("--version"), repo, False, errors)
    clean = not mode.tiny and state["has_outputs"] and is_up_to_date(common.ROOT)
    if not mode.tiny:
        fns["dvc status (project)"] = _timed(dvc("status"), common.ROOT, False, errors)
    if clean:
        # The same up-to-date checks as a no-op repro, without the risk of running a stage in a tree
        # others are editing (a dependency changed between the check and the repro would start one).
        fns["dvc repro --dry (project)"] = _timed(dvc("repro", "--dry"), common.ROOT, True, errors)
    elif state["has_outputs"] and not mode.tiny:
        notes.append("the project has outputs but `dvc status` is not clean: its no-op repro is not timed")
    if args.in_place and clean:
        fns["dvc repro (project)"] = _timed(dvc("repro"), common.ROOT, True, errors)
    elif args.in_place:
        notes.append("--in-place skipped: the project has no outputs or `dvc status` is not clean")
    common.progress(f"timing {', '.join(fns)} (interleaved, {repeats} repeats)")
    times = common.time_interleaved(fns, repeats, warmup=0 if mode.tiny else 1)
    rows = []
    for name, t in times.items():
        st = common.stats(t)
        rows.append({"command": name.replace(" (project)", ""),
                     "where": f"{common.ROOT} as is" if "(project)" in name else f"{where}, {n_stages} stages",
                     "seconds": st["median_s"], "min_s": st["min_s"], "max_s": st["max_s"],
                     "vs_target": st["median_s"] / TARGET_S, "times_s": st})
    common.print_table(f"## dvc with nothing changed: wall time of the command, median of {repeats}", COLS, rows)
    if first_s is not None:
        common.say(f"first (real) repro of the copy: {first_s:.1f} s")
    for e in errors:
        common.say(f"ERROR: {e}")
    by_name = dict(zip(times, rows))
    noop = rows[0]["seconds"]
    candidates = {"no-op dvc repro (copy)": noop}
    for name in ("dvc repro --dry (project)", "dvc repro (project)"):
        if name in by_name:
            candidates[f"no-op {name}"] = by_name[name]["seconds"]
    common.say("")
    for label, value in candidates.items():
        common.say(common.summary_line(label, value, TARGET_S, unit=" s", higher_is_better=False))
    noop = max(candidates.values())  # the headline: the slower of the copy's repro and the project's
    return {
        "settings": {"repeats": repeats, "repo": str(repo), "stages": n_stages, "project_state": state},
        "tables": {"commands": rows},
        "summary": {"metric": "no-op `dvc repro` seconds (the slower of: the project copy's `dvc repro`, the "
                              "project's own `dvc repro --dry` when it is up to date)",
                    "value": noop, "target": TARGET_S,
                    "met": common.verdict(noop, TARGET_S, higher_is_better=False),
                    "dvc_status_s": rows[1]["seconds"], "first_repro_s": first_s,
                    "candidates_s": candidates,
                    "project_dvc_status_s": by_name["dvc status (project)"]["seconds"]
                    if "dvc status (project)" in by_name else None},
        "notes": notes,
        "error": "; ".join(errors) or None,
    }
