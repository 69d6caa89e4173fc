"""The ``tcnet`` command: one subcommand per stage or tool, each a thin wrapper over library code.

Subcommand modules are imported only when used, so ``tcnet --help`` stays fast. Each module
provides ``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help). Order is the order of the pipeline, then the tools.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("tcnet.tools.synth", "write a deterministic synthetic look-alike of a dataset in its official layout"),
    "preprocess": ("tcnet.stages.preprocess", "validate, resize and index the raw datasets (pipeline stage)"),
    "split": ("tcnet.stages.split", "write train/val/test and cross-validation splits (pipeline stage)"),
    "train": ("tcnet.stages.train", "train the runs of an experiment, resumable (pipeline stage)"),
    "evaluate": ("tcnet.stages.evaluate", "predict and score the runs of an experiment (pipeline stage)"),
    "compare": ("tcnet.stages.compare", "tables, statistics, figures and the HTML report (pipeline stage)"),
    "experiments": ("tcnet.tools.experiments", "list the experiments and runs declared in params.yaml"),
    "models": ("tcnet.tools.models_table", "list the model architectures (the names params.yaml's model: takes) with parameters and GFLOPs"),
    "score": ("tcnet.tools.score", "score a folder of predicted masks against ground truth"),
    "predict": ("tcnet.tools.predict", "segment new images with a trained model"),
    "export": ("tcnet.tools.export", "export a trained model to ONNX or TorchScript"),
    "promote": ("tcnet.tools.promote", "register an experiment's best TCNet in the MLflow registry"),
}


class CliError(Exception):
    """An error for the person at the shell: printed without a traceback, exit status 2."""


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcnet",
        description="TCNet medical image segmentation: pipeline stages and tools. "
        "Run 'tcnet COMMAND --help' for a command's options.",
        epilog="Errors a user can act on print one line and exit with status 2; set TCNET_TRACEBACK=1 "
        "to see the whole traceback instead (for a message that looks like a bug).",
    )
    from tcnet import __version__

    parser.add_argument("--version", action="version", version=f"tcnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == load:
            importlib.import_module(module).add_arguments(p)
    return parser


def _sigterm_interrupts() -> None:
    """SIGTERM (what Kubernetes sends a pod, what `kill` sends) takes Ctrl-C's path: temporary files
    removed, the MLflow run ended, the interrupted message. Only the main thread can set handlers."""
    import signal
    import threading

    def handler(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _os_error_text(e: OSError) -> str:
    """``path: reason`` (``a -> b: reason`` for a rename), without Python's ``[Errno N]``."""
    where = f"{e.filename} -> {e.filename2}" if e.filename and e.filename2 else e.filename
    return f"{where}: {e.strerror or e}" if where else str(e.strerror or e)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    from tcnet.config import ConfigError
    from tcnet.tracking import TrackingStoreError

    _sigterm_interrupts()
    try:
        return int(module.main(args) or 0)
    except (CliError, ConfigError, FileNotFoundError, ValueError, TrackingStoreError) as e:
        # Errors a user can act on: one clear line, no traceback. Bugs still raise.
        # TCNET_TRACEBACK=1: the whole traceback, for a message that looks like a bug (any ValueError
        # from a library lands here too).
        if getattr(e, "__tcnet_user_error__", True) is False or os.environ.get("TCNET_TRACEBACK", "") not in ("", "0"):
            raise
        if isinstance(e, OSError) and e.strerror:  # FileNotFoundError(errno, text, path): path first, no [Errno 2]
            e = _os_error_text(e)
        print(f"tcnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`tcnet experiments --json | head`): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not fail again
        return 1
    except OSError as e:
        # A path that cannot be written or read (permissions, a file where a folder should be, ...):
        # the path and the reason, no traceback.
        print(f"tcnet {args.command}: error: {_os_error_text(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = ("; every finished epoch is kept in its run's last.pt: run the same command again to resume"
                  if args.command == "train" else "")
        print(f"tcnet {args.command}: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
