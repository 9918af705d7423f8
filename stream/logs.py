"""Log lines for the command line: 'chromacast: ...', one line each, no tracebacks."""
from __future__ import annotations

import argparse
import logging
import sys

# one convention for every subcommand
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = {logging.WARNING: "warning: ", logging.ERROR: "error: ",
                  logging.CRITICAL: "error: "}.get(record.levelno, "")
        return f"chromacast: {prefix}{record.getMessage()}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each line (it may be replaced later)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _Timestamped(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s")


def setup_logging(verbosity: int = 0, timestamps: bool = False) -> None:
    """verbosity -1: errors only, 0: info, 1+: debug. Timestamps for long jobs (training)."""
    level = logging.ERROR if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(_Timestamped() if timestamps else _Format())
    root = logging.getLogger("chromacast")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def error_line(command: str, message: str) -> None:
    print(f"chromacast {command}: error: {message}", file=sys.stderr, flush=True)


def add_verbosity_options(parser: argparse.ArgumentParser) -> None:
    """-q (errors and the summary only) and -v (debug lines; repeat for more), on every command."""
    parser.add_argument("-q", "--quiet", action="store_true", help="errors and the summary only")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail (debug lines)")


def verbosity(args: argparse.Namespace) -> int:
    return -1 if args.quiet else args.verbose


def plural(count: int, noun: str) -> str:
    """'1 frame', '2 frames'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _positive(kind: type, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text} must be {what}")
        return value
    return parse


# argparse types for counts and durations: 0, negative or inf is a usage error (exit 2)
positive_int = _positive(int, "a whole number of at least 1")
positive_float = _positive(float, "a number above 0")
