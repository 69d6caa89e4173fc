"""``python -m benchmarks <target> [--quick | --tiny] [--json OUT] [--repeats N] [target options]``.

Targets (one module each; ``python -m benchmarks <target> --help`` for its options):

    lkconv      large-kernel depthwise conv, direct vs fft vs auto (fwd+bwd and fwd), NCHW / channels_last
    train_step  TCNet train-step model FLOP/s vs smp U-Net/ResNet-34, same size and batch
    step_breakdown  where a train step's time goes by kind of module, GFLOP/s per kind; --ceiling: if a kind were free
    gemm        the attention's projections on CPU: F.linear (MKL) vs the same product as a oneDNN 1×1 conv
    cpu_settings  the train stage's CPU settings (fused Adam, flush-denormal, layout, heap) vs their alternatives
    preprocess  the preprocess stage's images/s vs decode+resize of the same files on all cores
    dvc_noop    `dvc repro` with nothing changed, and `dvc status`
    inference   predict images/s of every registered model, batch 1 and 8
    memory      peak RSS of a train step per TCNet variant and U-Net (fresh process each)
    gpu_step    the paper profile on CUDA (tcnet_base, 448², batch 15, bf16, channels_last): per lk_impl, vs U-Net; --cuda-graph, --profile
    all         every target above in turn, each in a process of its own

Modes: default ``full`` (the figures in docs/performance.md), ``--quick`` (about a minute each),
``--tiny`` (seconds; the smoke test's mode, figures meaningless). Each run prints its tables with
the ratio to its reference and writes ``benchmarks/results/<target>.json`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import common

TARGETS = ("lkconv", "train_step", "step_breakdown", "gemm", "cpu_settings", "preprocess", "dvc_noop", "inference",
           "memory", "gpu_step")


def _module(target: str):
    return importlib.import_module(f"benchmarks.{target}")


def _target_list() -> str:
    """The module doc's "Targets" paragraph and list (up to the blank line after the list)."""
    lines = __doc__.splitlines()
    end = next(i for i in range(4, len(lines)) if not lines[i].strip())
    return "\n".join(lines[2:end])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=_target_list())
    sub = p.add_subparsers(dest="target", required=True, metavar="target")
    for target in TARGETS + ("all",):
        mod = _module(target) if target != "all" else None
        sp = sub.add_parser(target, help=mod.HELP if mod else "every target in turn",
                            description=(mod.__doc__ or "").strip() if mod else None,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        g = sp.add_mutually_exclusive_group()
        g.add_argument("--quick", action="store_const", dest="mode", const="quick",
                       help="short run (about a minute)")
        g.add_argument("--tiny", action="store_const", dest="mode", const="tiny",
                       help="seconds; checks the machinery only (smoke test), figures meaningless")
        sp.add_argument("--json", type=Path, default=None,
                        help="write the JSON here (default benchmarks/results/<target>.json; with 'all': a folder)")
        sp.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per candidate (default per mode; a slow candidate may stop earlier, the "
                        "tables say how many ran; memory: not used, one process per model)")
        sp.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
        sp.add_argument("--wait-load", type=float, default=None, metavar="L",
                        help="first wait (up to 30 min) until the 1-minute load average is below L")
        sp.set_defaults(mode="full")
        if mod is not None:
            mod.add_arguments(sp)
    return p


def run_target(target: str, args: argparse.Namespace, argv: list[str], json_path: Path | None = None) -> dict:
    mod = _module(target)
    mode = common.Mode(args.mode)
    if getattr(args, "wait_load", None):
        common.wait_for_load(args.wait_load)
    # tiny: one thread -- the smoke test must not depend on how busy the machine's other cores are
    threads = common.set_threads(args.threads or (1 if mode.tiny else None))
    info = common.machine_info()
    load_before = common.load_average()
    common.say(f"# benchmark {target} ({mode.name})")
    common.say(f"machine: {common.machine_line(info)}")
    common.say(f"load average (1/5/15 min) at start: {load_before} on {info['cores']} cores"
               + ("  -- the machine is busy: figures are contended" if load_before and load_before[0] > info["cores"]
                  else ""))
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = mod.run(args, mode)
    seconds = time.perf_counter() - t0
    load_after = common.load_average()
    common.say(f"\nload average at end: {load_after}; {seconds:.1f} s")
    payload = {
        "target": target,
        "mode": mode.name,
        "command": "python -m benchmarks " + " ".join(shlex.quote(a) for a in argv),
        "started": started,
        "seconds": round(seconds, 2),
        "machine": {**info, "torch_threads": threads},
        "load_average": {"start": load_before, "end": load_after},
        **result,
    }
    path = json_path or common.results_path(target)
    common.write_json(payload, path)
    common.say(f"wrote {path}")
    return payload


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.target != "all":
        return _exit_code(run_target(args.target, args, argv, args.json))
    code = 0
    for target in TARGETS:
        sub_argv = [target, *([f"--{args.mode}"] if args.mode != "full" else [])]
        for flag, value in (("--threads", args.threads), ("--repeats", args.repeats), ("--wait-load", args.wait_load)):
            if value is not None:
                sub_argv += [flag, str(value)]
        if args.json is not None:
            sub_argv += ["--json", str(Path(args.json) / f"{target}.json")]
        # A process each, as a user's own command would run it: targets set process-wide state that
        # cannot be undone (the allocator's form, threads), and each JSON records its own command.
        common.say(f"$ python -m benchmarks {' '.join(shlex.quote(a) for a in sub_argv)}")
        rc = subprocess.run([sys.executable, "-m", "benchmarks", *sub_argv]).returncode
        code = max(code, 1 if rc else 0)  # a signal's negative code (the OOM killer) is a failure too
    return code


def _exit_code(payload: dict) -> int:
    return 1 if payload.get("error") else 0


if __name__ == "__main__":
    raise SystemExit(main())
