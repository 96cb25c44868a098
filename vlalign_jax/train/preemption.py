"""SIGTERM as a preemption notice: finish the step, write a checkpoint, exit with its own status.

Schedulers (Slurm, Kubernetes, TPU/GPU spot VMs) send SIGTERM some seconds before they kill a job.
While `PreemptionWatcher` is active, SIGTERM no longer kills the trainer: the loop finishes the step
in flight, saves a checkpoint at that step (unless it just saved one), waits for the write, and
raises `Preempted`; `vlalign train` then exits with `PREEMPTED_EXIT_STATUS` (75, EX_TEMPFAIL: "try
again"), so a job script can tell a preemption from a failure and requeue. Re-running the same
command resumes exactly from that checkpoint.

With several processes every host must save the same step: JAX's coordination service catches
SIGTERM on any host and agrees on a step (`multihost_utils.reached_preemption_sync_point`), so
there the watcher asks it instead of installing a handler of its own.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

PREEMPTED_EXIT_STATUS = 75


class Preempted(Exception):
    """Training stopped on a preemption notice after checkpointing `step`."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"preempted: stopped after step {step}, checkpoint saved under {directory}; "
                         f"run the same command again to resume")
        self.step, self.directory = step, directory


class PreemptionWatcher:
    """A context manager: while active, `requested(step)` says whether to checkpoint and stop now."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self._received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "PreemptionWatcher":
        # Python delivers signals to the main thread only; elsewhere (a test runner's worker thread)
        # the process keeps the default behaviour.
        # (`jax.distributed.initialize`, later, lets the coordination service take SIGTERM over.)
        if threading.current_thread() is threading.main_thread():
            for number in self.signals:
                self._previous[number] = signal.signal(number, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        if self._received is None:
            log.warning("received %s: finishing this step, then checkpointing and stopping",
                        signal.Signals(number).name)
        self._received = number

    def requested(self, step: int) -> bool:
        """True once a notice arrived (single process) or at the step all hosts agreed on (several)."""
        import jax  # here, not at import: the CLI imports `Preempted` for every command

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._received is not None
