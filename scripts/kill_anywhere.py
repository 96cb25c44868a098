"""Kill a training command with SIGKILL at random moments, re-run it after each kill, and report.

    python scripts/kill_anywhere.py --kills 20 --workdir runs/killed -- vlalign train \\
        --config configs/demo/clip_shapes.py --workdir runs/killed --config.train.log_every=1 ...

Each attempt runs the same command. A kill lands at a random time in the attempt's start-up (imports,
set-up, restore, compile), at a random time shortly after its first step (steps and saves), or the
moment an asynchronous checkpoint write is seen in flight (an orbax `*.orbax-checkpoint-tmp*` folder).
Setting JAX_COMPILATION_CACHE_DIR makes each restart skip compiling. After each kill the harness records which steps
are committed and which writes were cut off, and checks the next attempt resumes from the newest
committed step (a partial write is never chosen). After the last kill the command runs to the end.
Compare the final checkpoint with an uninterrupted run's (`--reference WORKDIR`) for the bitwise check.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

IN_FLIGHT_MARK = ".orbax-checkpoint-tmp"
MOMENTS = ("start-up", "training", "saving")
START_PATTERN = re.compile(r"(?:resuming from \S+ at step (\d+)|no checkpoint under \S+: starting at step 0)")


@dataclasses.dataclass
class Kill:
    """One SIGKILL: when it landed and what the checkpoint folder held right after it."""

    attempt: int
    moment: str  # "start-up", "training" or "saving" (see `kill_anywhere`)
    after_s: float  # seconds from the attempt's start to the kill
    started_at: int | None  # the step this attempt resumed from (0: fresh start; None: killed before choosing)
    committed: list[int]  # steps whose write had committed when the process died
    cut_writes: list[str]  # checkpoint writes it started that were in flight when it died


@dataclasses.dataclass
class Report:
    kills: list[Kill]
    final_returncode: int
    final_started_at: int | None
    seconds: float

    @property
    def cut_writes(self) -> int:
        return sum(bool(k.cut_writes) for k in self.kills)

    def wrong_resumes(self) -> list[str]:
        """Attempts that started from anything but the newest committed step at their start."""
        wrong = []
        starts = [k.started_at for k in self.kills[1:]] + [self.final_started_at]
        for kill, started_at in zip(self.kills, starts):
            newest = max(kill.committed, default=0)
            if started_at is not None and started_at != newest:
                wrong.append(f"after kill {kill.attempt}: newest committed step {newest}, the next attempt "
                             f"started at {started_at}")
        return wrong

    def resumes_checked(self) -> int:
        """Attempts that got as far as choosing their starting step (the ones `wrong_resumes` checks)."""
        return sum(k.started_at is not None for k in self.kills[1:]) + (self.final_started_at is not None)

    def to_dict(self) -> dict:
        return {"kills": [dataclasses.asdict(k) for k in self.kills], "cut_writes": self.cut_writes,
                "final_returncode": self.final_returncode, "final_started_at": self.final_started_at,
                "resumes_checked": self.resumes_checked(), "wrong_resumes": self.wrong_resumes(),
                "seconds": round(self.seconds, 1)}


class FinishedEarly(RuntimeError):
    """The run completed before all kills landed: give it more steps."""


def committed_steps(checkpoints: Path) -> list[int]:
    """Steps orbax has committed (renamed from their temporary folder), quarantined ones excluded."""
    if not checkpoints.is_dir():
        return []
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.is_dir() and p.name.isdigit())


def writes_in_flight(checkpoints: Path) -> dict[str, int]:
    """Temporary folders of checkpoint writes not (yet) committed, by name, with their inode, so a write
    started by this attempt is told from one an earlier kill left behind (same name, other folder;
    cleaning the old one up changes its times, not its inode)."""
    if not checkpoints.is_dir():
        return {}
    found = {}
    for p in checkpoints.iterdir():
        if IN_FLIGHT_MARK in p.name:
            try:
                found[p.name] = p.stat().st_ino
            except FileNotFoundError:  # committed or cleaned up while listing
                continue
    return found


def _started_at(log: Path) -> int | None:
    """The step an attempt started from, by its log (0: fresh; None: it died before choosing)."""
    found = START_PATTERN.search(log.read_text(errors="replace"))
    return int(found.group(1) or 0) if found else None


class _MetricRows:
    """Counts the rows of a run's metrics.jsonl, re-reading it only when its size changed (the harness
    polls every millisecond, beside the run it watches)."""

    def __init__(self, workdir: Path):
        self.path, self.size, self.rows = workdir / "metrics.jsonl", -1, 0

    def __call__(self) -> int:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        if size != self.size:
            self.size, self.rows = size, self.path.read_bytes().count(b"\n")
        return self.rows


def _wait(proc: subprocess.Popen, workdir: Path, moment: str, delay: float, nth: int, timeout: float,
          stale: set[tuple[str, int]]) -> float | None:
    """Return when it is time to kill `proc` (or it has exited): after `delay` seconds ("start-up");
    `delay` seconds after its `nth` new metrics row, i.e. inside a random step ("training"); or once
    its `nth` checkpoint write is in flight ("saving"; `stale`: writes an earlier kill cut off).
    Returns the seconds it took to log its first row, when that was seen."""
    metric_rows = _MetricRows(workdir)
    start, rows, first_row, due = time.monotonic(), metric_rows(), None, None
    seen: set[tuple[str, int]] = set()
    while proc.poll() is None and time.monotonic() - start < timeout:
        now = time.monotonic() - start
        if moment == "start-up" and now >= delay:
            break
        new_rows = metric_rows() - rows
        if new_rows >= 1 and first_row is None:
            first_row = now
        if moment == "training" and due is None and new_rows >= nth:
            due = now + delay
        if due is not None and now >= due:
            break
        if moment == "saving":
            seen |= set(writes_in_flight(workdir / "checkpoints").items()) - stale
            if len(seen) >= nth:
                break
        time.sleep(0.001)
    return first_row


def kill_anywhere(command: Sequence[str], workdir: str | Path, kills: int = 20, seed: int = 0,
                  max_steps_between: int = 8, shares: tuple[float, float, float] = (0.3, 0.4, 0.3),
                  env: dict | None = None, logs: str | Path | None = None, timeout_s: float = 600.0) -> Report:
    """Run `command` `kills` times, SIGKILL-ing each attempt, then once to the end; see the module doc.

    Each kill is a "start-up" kill (a uniform time up to the last observed time from an attempt's
    start to its first logged step, 3 s until one is seen: imports, set-up, restore, compile), a
    "training" kill (within a random one of its first `max_steps_between` steps: the step, its logging
    or a checkpoint save) or a "saving" kill (the moment its first or second checkpoint write is seen
    in flight), drawn with probabilities `shares`. The run must log every step (`train.log_every=1`)
    and have steps enough not to finish before the last kill. Raises FinishedEarly if an attempt
    completes before its kill, and RuntimeError (with the log's tail) if an attempt fails on its own.
    """
    rng = random.Random(seed)
    workdir = Path(workdir)
    checkpoints = workdir / "checkpoints"
    log_dir = Path(logs) if logs else Path(tempfile.mkdtemp(prefix="kill-anywhere-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    startup_s = 3.0  # until the first attempt that logs a step has been timed
    done: list[Kill] = []

    def attempt(index: int) -> tuple[subprocess.Popen, Path]:
        log = log_dir / f"attempt-{index:02d}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(list(command), env=env, stdout=out, stderr=subprocess.STDOUT)
        return proc, log

    for index in range(kills):
        proc, log = attempt(index)
        before = set(writes_in_flight(checkpoints).items())
        moment = rng.choices(MOMENTS, weights=shares)[0]
        delay = rng.uniform(0.0, startup_s) if moment == "start-up" else rng.uniform(0.0, 0.05)
        nth = rng.randint(1, max_steps_between) if moment == "training" else rng.randint(1, 2)
        begin = time.monotonic()
        first_row = _wait(proc, workdir, moment, delay, nth, timeout_s, before)
        if proc.poll() is not None:
            _attempt_ended(proc, log, f"attempt {index} (before kill {len(done) + 1} of {kills})")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode != -signal.SIGKILL:  # it exited between the check and the signal
            _attempt_ended(proc, log, f"attempt {index}")
        if first_row is not None:
            startup_s = first_row
        done.append(Kill(index, moment, round(time.monotonic() - begin, 3), _started_at(log),
                         committed_steps(checkpoints),
                         sorted(name for name, made in writes_in_flight(checkpoints).items()
                                if (name, made) not in before)))

    proc, log = attempt(kills)
    proc.wait(timeout=timeout_s)
    if proc.returncode != 0:
        _attempt_ended(proc, log, "the final attempt")
    return Report(done, proc.returncode, _started_at(log), time.monotonic() - started)


def _attempt_ended(proc: subprocess.Popen, log: Path, what: str) -> None:
    tail = log.read_text(errors="replace")[-3000:]
    if proc.returncode == 0:  # only attempts meant to be killed can end here with 0
        raise FinishedEarly(f"{what} completed the run before it could be killed; give the run more steps "
                            f"or lower --max-steps-between (log: {log})")
    raise RuntimeError(f"{what} exited with status {proc.returncode} on its own (log: {log}):\n{tail}")


def _compare(workdir: Path, reference: Path) -> list[str]:
    """Leaves of the final params that differ between two runs (empty: bitwise identical)."""
    import jax
    import numpy as np

    from vlalign_jax.train.checkpoint import load_params

    got, want = load_params(workdir), load_params(reference)
    flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
    return [jax.tree_util.keystr(path) for path, value in jax.tree_util.tree_leaves_with_path(want)
            if not np.array_equal(np.asarray(flat_got.get(path)), value)]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: kill_anywhere.py [options] -- COMMAND ...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, type=Path, help="the workdir the command trains in")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps-between", type=int, default=8,
                        help="'training' kills land within one of an attempt's first this many steps")
    parser.add_argument("--shares", type=float, nargs=3, default=(0.3, 0.4, 0.3), metavar=("START", "TRAIN", "SAVE"),
                        help="how often each kind of moment is drawn")
    parser.add_argument("--reference", type=Path, help="an uninterrupted run's workdir to compare params with")
    parser.add_argument("--logs", type=Path, help="folder for each attempt's output (default: a temp folder)")
    parser.add_argument("--report", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv[:split])
    report = kill_anywhere(argv[split + 1:], args.workdir, args.kills, args.seed, args.max_steps_between,
                           tuple(args.shares), dict(os.environ), args.logs)
    summary = report.to_dict()
    if args.reference:
        summary["params_differing_from_reference"] = _compare(args.workdir, args.reference)
    for kill in report.kills:
        print(f"kill {kill.attempt:2d}  {kill.moment:8s} after {kill.after_s:6.2f} s  committed "
              f"{kill.committed[-3:]}  cut writes {kill.cut_writes}  started at {kill.started_at}")
    print(f"{len(report.kills)} kills ({report.cut_writes} during a checkpoint write), final status "
          f"{report.final_returncode}, {report.resumes_checked()} starts checked, wrong resumes "
          f"{len(summary['wrong_resumes'])}"
          + (f", params differing from the reference: {len(summary['params_differing_from_reference'])}"
             if args.reference else "") + f", {report.seconds:.0f} s")
    if args.report:
        args.report.write_text(json.dumps(summary, indent=2))
    failed = summary["wrong_resumes"] or summary.get("params_differing_from_reference")
    return 1 if failed or report.final_returncode else 0


if __name__ == "__main__":
    sys.exit(main())
