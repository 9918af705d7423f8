"""`chromacast` command: one subcommand per job, each implemented in the module that owns it.

Subcommands are imported lazily so that, say, `chromacast view` needs neither
ONNX Runtime nor torch, and `chromacast train` is the only one that needs torch.
"""
from __future__ import annotations

import importlib
import os
import sys

# subcommand -> (module:function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("stream.pipeline_cli:main", "run a pipeline from a YAML config"),
    "view": ("stream.subscribers:view_main", "show a published stream in a window"),
    "record": ("stream.subscribers:record_main", "record a published stream to mp4"),
    "web": ("stream.sinks.web:main", "serve published streams to browsers (MJPEG)"),
    "restream": ("stream.sinks.rtsp:main", "serve published streams over RTSP"),
    "colorize": ("stream.offline:main", "colorize a video, an image or a folder of them"),
    "bench": ("benchmarks.cli:main", "benchmark one pipeline case (fps, latency)"),
    "eval": ("engines.evaluate:main", "colour quality and temporal stability of a model"),
    "train": ("training.cli:train_main", "train the colorization network"),
    "export": ("training.cli:export_main", "export a checkpoint or official weights to ONNX"),
    "build-engine": ("engines.tensorrt_build:main", "build a TensorRT FP16 engine (NVIDIA GPU)"),
    "keys": ("stream.security:keys_main", "create a CurveZMQ key pair"),
    "triton-repo": ("engines.triton_repo:main", "write a Triton Inference Server model repository"),
}


def usage() -> str:
    lines = ["usage: chromacast COMMAND [options]   (chromacast --version)", "", "commands:"]
    lines += [f"  {name:<13} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines.append("\n'chromacast COMMAND --help' tells more.")
    return "\n".join(lines)


def version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version as installed
        return installed("chromacast")
    except PackageNotFoundError:  # a source checkout that was never installed
        import re
        from pathlib import Path

        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
        return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        try:
            code = _dispatch(argv)
        except SystemExit as exc:  # argparse's --help and usage errors
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        sys.stdout.flush()  # a closed pipe shows here, not in a traceback at exit
        return code
    except BrokenPipeError:  # e.g. `chromacast -h | head -2`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv and argv[0] in ("-V", "--version"):
        print(f"chromacast {version()}")
        return 0
    if not argv:
        print(f"{usage()}\n\nchromacast: error: give a command", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{usage()}\n\nchromacast: error: unknown command {name!r}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    try:
        handler = getattr(importlib.import_module(module), func)
    except ImportError as exc:
        print(f"chromacast {name}: error: missing dependency ({exc.name or exc}); "
              f"install the extra it needs, e.g. pip install 'chromacast[train]'", file=sys.stderr)
        return 2
    return int(handler(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
