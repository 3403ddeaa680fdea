"""Stopping a run cleanly on SIGTERM or SIGINT."""
from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger("forkrl")


class StopSignal:
    """SIGTERM or SIGINT (`ray job stop`, preemption, Ctrl-C) during a run: finish the step, save a
    checkpoint, stop. A second signal interrupts at once."""

    def __init__(self):
        self.name: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum, frame) -> None:
        if self.name is not None:
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        logger.warning("%s: finishing this step, then saving a checkpoint (send it again to stop at once)", self.name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
