"""Dead or stuck peers: a watchdog for steps that stopped completing, and the error for a failed collective.

In a multi-process run every step ends in collectives; when one process dies or hangs, the others
block inside them forever. The training loop calls `beat()` whenever it makes progress (a step's
metrics arrived, a checkpoint was handed over); a background thread checks that a beat came within
`timeout_s`. If none did, it reports where the loop was and how long it waited, then exits the
process with `HUNG_EXIT_STATUS` (69, EX_UNAVAILABLE: a peer is unavailable). It has to be a hard
exit: the main thread is blocked inside XLA and cannot raise. Checkpoints already committed are
intact; a save still in flight is abandoned, as after any crash.

The watchdog is armed by the first beat (after the first step is compiled, which can take long), and
`paused()` lifts it around work with no fixed bound (evaluation).

A peer that dies outright usually shows sooner: its sockets close and the next cross-process
collective fails; the loop turns that into `PeerFailedError`, which `vlalign train` reports and
exits on with the same status. (JAX's coordination service also stops every process once one misses
heartbeats for `distributed.heartbeat_timeout_s`; that exit is JAX's own, status 134.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Callable, Iterator

from vlalign_jax.messages import first_line

log = logging.getLogger(__name__)

HUNG_EXIT_STATUS = 69


class PeerFailedError(RuntimeError):
    """A cross-process collective failed during training: another process died or dropped out."""

    def __init__(self, step: int, cause: BaseException):
        super().__init__(f"a cross-process collective failed at step {step} ({first_line(cause)}): another process "
                         f"has most likely died. Committed checkpoints are intact; rerun the same command on "
                         f"all processes to resume")
        self.step = step


class HangWatchdog:
    """A context manager; while active, a missing `beat()` for `timeout_s` seconds ends the process."""

    def __init__(self, timeout_s: float, describe: Callable[[], str] = lambda: "",
                 exit: Callable[[int], None] = os._exit):
        self.timeout_s = float(timeout_s)
        self.describe = describe  # extra context for the message (process index, peers)
        self._exit = exit
        self._last: float | None = None  # monotonic time of the last beat; None = not armed
        self._where = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "HangWatchdog":
        if self.timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, name="vlalign-hang-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def beat(self, where: str) -> None:
        """The loop made progress; `where` names what it does next (kept for the report)."""
        self._last, self._where = time.monotonic(), where

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        last = self._last
        self._last = None
        try:
            yield
        finally:
            if last is not None:
                self.beat(self._where)

    def _watch(self) -> None:
        poll = min(1.0, self.timeout_s / 10)
        while not self._stop.wait(poll):
            last = self._last
            if last is None or time.monotonic() - last < self.timeout_s:
                continue
            message = (f"no training progress for {time.monotonic() - last:.0f} s (hang timeout "
                       f"{self.timeout_s:g} s) while {self._where}: a peer process has most likely died or "
                       f"hung inside a collective. {self.describe()} Committed checkpoints are intact; "
                       f"rerun the same command on all processes to resume. Exiting with status "
                       f"{HUNG_EXIT_STATUS}.")
            log.error(message)
            print(f"vlalign train: error: {message}", file=sys.stderr, flush=True)
            self._exit(HUNG_EXIT_STATUS)
            return
