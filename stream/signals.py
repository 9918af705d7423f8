"""SIGINT/SIGTERM for long-running commands: the first asks for a graceful stop (drain and
close files), a second one forces the exit at once."""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable

log = logging.getLogger("chromacast")

FORCED_EXIT_CODE = 130


def install_stop_handlers(graceful_stop: Callable[[], None] = lambda: None) -> threading.Event:
    """Install the handlers; the returned event is set by the first signal (the command then
    exits with FORCED_EXIT_CODE once it has closed its files)."""
    received = []
    interrupted = threading.Event()

    def handle(signum, _frame) -> None:
        if received:
            log.error("second signal: exiting now, files may be incomplete")
            os._exit(FORCED_EXIT_CODE)
        received.append(signum)
        interrupted.set()
        log.info("%s: finishing the frames in flight and closing files (send it again to force exit)",
                 signal.Signals(signum).name)
        graceful_stop()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return interrupted
