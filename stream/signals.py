"""SIGINT/SIGTERM for long-running commands: the first asks for a graceful stop (drain and
close files), a second one forces the exit at once."""
from __future__ import annotations

import logging
import os
import signal
from typing import Callable

log = logging.getLogger("chromacast")

FORCED_EXIT_CODE = 130


def install_stop_handlers(graceful_stop: Callable[[], None]) -> None:
    received = []

    def handle(signum, _frame) -> None:
        if received:
            log.error("second signal: exiting now, files may be incomplete")
            os._exit(FORCED_EXIT_CODE)
        received.append(signum)
        log.info("%s: finishing the frames in flight and closing files (send it again to force exit)",
                 signal.Signals(signum).name)
        graceful_stop()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
