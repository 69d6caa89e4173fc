"""What every benchmark shares: modes, threads, interleaved timing, the machine, tables and JSON.

Timing rule (all targets): the reference and the candidates of one comparison run in the SAME
process and are *interleaved* -- repeat r runs every candidate once, in an order rotated by r -- so
that load from other work on a shared machine hits all of them alike. Each candidate gets its own
warm-up first. Reported figures are medians of the repeats (min and max are kept in the JSON).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"

# tiny: seconds, for the smoke test (numbers meaningless); quick: < ~1 min; full: the docs' figures.
MODES = ("tiny", "quick", "full")


@dataclass(frozen=True)
class Mode:
    name: str

    @property
    def tiny(self) -> bool:
        return self.name == "tiny"

    @property
    def quick(self) -> bool:
        return self.name == "quick"

    @property
    def full(self) -> bool:
        return self.name == "full"

    def warmup(self, n: int = 1) -> int:
        """Untimed calls per candidate before timing (none in the tiny mode)."""
        return 0 if self.tiny else n

    def pick(self, tiny, quick, full):
        """The value for this mode."""
        return {"tiny": tiny, "quick": quick, "full": full}[self.name]


# ----------------------------------------------------------------------------------------------
# Machine
# ----------------------------------------------------------------------------------------------


def cpu_count() -> int:
    """CPUs this process may use (affinity, cgroup quota, TCNET_CPUS: tcnet.utils.cpus)."""
    from tcnet.utils.cpus import available_cpus

    return available_cpus()


def set_threads(n: Optional[int] = None) -> int:
    """``torch.set_num_threads`` to the machine's cores (or ``n``); returns the thread count."""
    import torch

    n = n or cpu_count()
    torch.set_num_threads(n)
    return torch.get_num_threads()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The vector instruction sets the CPU reports (AVX2, AVX-512 and its BF16 / VNNI parts), from
    ``/proc/cpuinfo``: oneDNN's kernels follow them, MKL's only on Intel (docs/performance.md §2)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(f for f in wanted if f in have) or "none of " + ", ".join(wanted)
    except OSError:
        pass
    return "unknown"


VIRTIO_BALLOON = "0x0005"  # virtio device id of a memory balloon
BALLOON_F_REPORTING = 5  # feature bit: the guest reports (hands back) free pages to the host


def free_page_reporting(devices: Path = Path("/sys/bus/virtio/devices")) -> Optional[bool]:
    """Whether this (virtual) machine hands free memory back to its host (a virtio balloon with free
    page reporting): there, a page freed a few seconds ago must be faulted in again from the host,
    so writing new data -- a stage's outputs into the page cache -- costs more than on a machine
    that keeps its free memory (docs/performance.md §3). ``None``: no virtio balloon found."""
    found = None
    for dev in sorted(devices.glob("*")):
        try:
            if (dev / "device").read_text().strip() != VIRTIO_BALLOON:
                continue
            bits = (dev / "features").read_text().strip()  # one character per feature bit, bit 0 first
        except OSError:
            continue
        found = bool(found) or (len(bits) > BALLOON_F_REPORTING and bits[BALLOON_F_REPORTING] == "1")
    return found


def ram_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def load_average() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def wait_for_load(limit: float, max_wait_s: float = 1800.0, poll_s: float = 10.0) -> bool:
    """Sleep until the 1-minute load average is below ``limit`` (at most ``max_wait_s``)."""
    start = time.perf_counter()
    while True:
        load = load_average()
        if load is None or load[0] < limit:
            return True
        if time.perf_counter() - start > max_wait_s:
            progress(f"load {load[0]} still >= {limit} after {max_wait_s:.0f} s: going ahead")
            return False
        progress(f"waiting for load < {limit} (now {load[0]})")
        time.sleep(poll_s)


def peak_rss_mib() -> float:
    """This process's peak resident set size, MiB.

    ``VmHWM`` of ``/proc/self/status``: the high-water mark of this address space. Not
    ``ru_maxrss``, which survives ``fork`` + ``exec``: a child started by a parent holding 8 GiB
    reports at least 8 GiB, whatever it used itself. ``ru_maxrss`` only where there is no /proc.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def run_child(module: str, spec: dict, what: str) -> dict:
    """Run ``python -m benchmarks.<module> --child SPEC`` (a fresh process) and return its result.

    The child prints one ``RESULT <json>`` line (:func:`child_main`); ``what`` names it in errors.
    """
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--child", json.dumps(spec)], cwd=ROOT,
                       capture_output=True, text=True, env=env)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{module} child for {what} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")


def child_main(target: str, child: Callable[[dict], dict]) -> None:
    """The ``__main__`` of a module with a child process: ``--child SPEC`` runs ``child(SPEC)``."""
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(child(json.loads(sys.argv[2]))), flush=True)
    else:
        print(f"usage: python -m benchmarks {target} [--quick | --tiny] (this module's --child is internal)",
              file=sys.stderr)
        raise SystemExit(2)


def machine_info() -> dict:
    import torch

    info = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": cpu_count(),
        "ram_gib": ram_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "free_page_reporting": free_page_reporting(),
    }
    return info


def machine_line(info: dict) -> str:
    gpu = info["gpu"] or "no GPU in this environment"
    vm = "; a VM that hands free memory back to its host (free page reporting)" if info.get("free_page_reporting") else ""
    return (f"{info['cpu']} ({info['cpu_flags']}), {info['cores']} cores, {info['ram_gib']} GiB RAM, "
            f"torch {info['torch']}, {info['torch_threads']} threads, {gpu}{vm}")


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def _noop() -> None:
    pass


def cuda_sync_for(device) -> Callable[[], None]:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return _noop


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] = _noop,
    budget_s: Optional[float] = None,
    slow_s: Optional[float] = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, the functions interleaved (see the module doc).

    ``warmup`` untimed calls per function first. ``budget_s``: stop adding repeats (after at least
    one) once this much time has passed -- for candidates that are slow on a loaded machine.
    ``slow_s``: a function whose (timed) warm-up call took at least this long is not repeated: that
    call is its one sample (at that length, warm-up effects are noise).
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    done: set[str] = set()
    for name in names:
        for _ in range(warmup):
            sync()
            t = time.perf_counter()
            fns[name]()
            sync()
            dt = time.perf_counter() - t
            if slow_s is not None and dt >= slow_s:
                times[name].append(dt)
                done.add(name)
                break
    active = [n for n in names if n not in done]
    start = time.perf_counter()
    for r in range(max(1, repeats) if active else 0):
        k = r % len(active)
        for name in active[k:] + active[:k]:
            sync()
            t = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - t)
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return times


def stats(times: Sequence[float]) -> dict:
    """``{"median_s", "min_s", "max_s", "n", "all_s"}`` of a list of seconds."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "n": len(times),
        "all_s": [round(t, 6) for t in times],
    }


def median_of(requested: int, stats_list) -> str:
    """``"median of N"`` for a table's title, from how many repeats each row's :func:`stats` holds:
    a time budget (``time_interleaved``'s ``budget_s``, ``slow_s``) can stop slow rows before
    ``requested``, and the title must not claim more than ran."""
    counts = sorted({int(st["n"]) for st in stats_list})
    if not counts or counts == [int(requested)]:
        return f"median of {requested}"
    low, high = counts[0], counts[-1]
    ran = f"{low}" if low == high else f"{low}-{high}"
    why = "; the time budget stopped the slow ones earlier" if low < int(requested) else ""
    return f"median of {ran} ({requested} asked{why})"


def median(times: Sequence[float]) -> float:
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Col:
    key: str
    header: str
    fmt: str = ""  # format spec for numbers ("" -> str())

    def cell(self, row: dict) -> str:
        v = row.get(self.key)
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if self.fmt and isinstance(v, (int, float)):
            return format(v, self.fmt)
        return str(v)


def format_table(columns: Sequence[Col], rows: Iterable[dict]) -> str:
    """A Markdown table (aligned, so it reads in a terminal and pastes into docs as is)."""
    rows = list(rows)
    cells = [[c.header for c in columns]] + [[c.cell(r) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    numeric = [all(_is_num(r.get(c.key)) for r in rows) and rows for c in columns]

    def fmt(line):
        out = []
        for i, text in enumerate(line):
            out.append(text.rjust(widths[i]) if numeric[i] else text.ljust(widths[i]))
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if numeric[i] else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(cells[0]), sep] + [fmt(line) for line in cells[1:]])


def _is_num(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def print_table(title: str, columns: Sequence[Col], rows: Iterable[dict]) -> str:
    text = format_table(columns, rows)
    print(f"\n{title}\n")
    print(text)
    sys.stdout.flush()
    return text


def first_kind(name: str, kinds: Sequence[tuple[str, Sequence[str]]]) -> str:
    """The first kind whose substrings occur in ``name`` (case-insensitive), else ``"other"``: the
    profile tables' classification of op and kernel names."""
    low = name.lower()
    for kind, needles in kinds:
        if any(n in low for n in needles):
            return kind
    return "other"


def say(msg: str) -> None:
    print(msg, flush=True)


def progress(msg: str) -> None:
    """Progress lines go to stderr, so stdout holds only the report."""
    print(f"  .. {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


def verdict(value: Optional[float], target: float, higher_is_better: bool = True) -> Optional[bool]:
    if value is None:
        return None
    return value >= target if higher_is_better else value <= target


def summary_line(name: str, value: Optional[float], target: float, unit: str = "x",
                 higher_is_better: bool = True) -> str:
    met = verdict(value, target, higher_is_better)
    op = ">=" if higher_is_better else "<="
    shown = "n/a" if value is None else f"{value:.3g}{unit}"
    state = {True: "MET", False: "NOT MET", None: "not measured"}[met]
    return f"{name}: {shown} (target {op} {target:g}{unit}) -> {state}"


def results_path(target: str) -> Path:
    return RESULTS_DIR / f"{target}.json"


def write_json(payload: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")
