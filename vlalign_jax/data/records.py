"""Bad-record policy: raise with the file and record named, or skip and count.

`data.on_error = "raise"` (default) turns any failure to read, decode or preprocess a record into a
`RecordError` naming the source file and the record index. With `"skip"` the record becomes a
`SkippedRecord` marker: the pipeline leaves it out of its batch and hands its message to the training
process, where `RecordErrors` counts it; once more than `data.max_skip_fraction`
of the records read are bad the run stops: a dataset that is mostly broken should not train
quietly on what is left.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)
ON_ERROR = ("raise", "skip")
# Too few records read says nothing about the fraction: judge only after this many.
MIN_RECORDS_FOR_FRACTION = 100
# What a reader may raise on bad data: PIL (OSError, SyntaxError), json/csv (ValueError), a missing
# field (KeyError), a wrong shape or type (IndexError, TypeError).
DATA_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, SyntaxError)


class RecordError(ValueError):
    """A record that cannot be used; the message names its file (or source) and index."""


@dataclasses.dataclass(frozen=True)
class SkippedRecord:
    """Stands in for a bad record until the training process counts and drops it."""

    message: str


def _as_record_error(error: Exception, where: str) -> RecordError:
    """`error` as a `RecordError` whose message starts with `where` (unless it already names it)."""
    if isinstance(error, RecordError):
        return error if where in str(error) else RecordError(f"{where}: {error}")
    return RecordError(f"{where}: {type(error).__name__}: {error}")


class GuardedRead:
    """`(index, rng) -> preprocess(source[index], rng)`, where any failure of either is a bad record:
    a `RecordError` naming the source file and record (raise), or a `SkippedRecord` (skip).

    One wrapper around read and preprocess so that errors found late (an empty caption, a box outside
    the image) still name the file and record. A class, not a closure, so it pickles into grain's
    worker processes.
    """

    def __init__(self, source: Any, preprocess: Callable[[Any, np.random.Generator], dict],
                 on_error: str = "raise"):
        if on_error not in ON_ERROR:
            raise ValueError(f"data.on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.source, self.preprocess, self.on_error = source, preprocess, on_error

    def describe(self, index: int) -> str:
        describe = getattr(self.source, "describe", None)
        return describe(index) if describe else f"{type(self.source).__name__} record {index}"

    def __call__(self, index: int, rng: np.random.Generator) -> Any:
        try:
            return self.preprocess(self.source[int(index)], rng)
        except DATA_ERRORS as e:
            error = _as_record_error(e, self.describe(int(index)))
            if self.on_error == "raise":
                raise error from e
            return SkippedRecord(str(error))


@dataclasses.dataclass
class RecordErrors:
    """Counts records read and skipped in the training process; thread-safe."""

    on_error: str = "raise"
    max_skip_fraction: float = 0.01
    seen: int = 0
    skipped: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"data.on_error must be one of {ON_ERROR}, got {self.on_error!r}")

    def keep(self, element: Any) -> bool:
        """Count `element`; False (drop it) for a `SkippedRecord`, logging why."""
        bad = isinstance(element, SkippedRecord)
        with self._lock:
            self.seen += 1
            self.skipped += bad
            count = self.skipped
        if bad:
            log.warning("skipping bad record (%d so far): %s", count, element.message)
        return not bad

    def count_batch(self, batch_and_skipped: tuple[Any, list[str]]) -> Any:
        """Count a batch of good records and the bad ones skipped to fill it; return the batch."""
        batch, skipped = batch_and_skipped
        good = len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)
        with self._lock:
            self.seen += good + len(skipped)
            self.skipped += len(skipped)
            count = self.skipped
        for message in skipped:
            log.warning("skipping bad record (%d so far): %s", count, message)
        return batch

    def guard(self, read: Callable[[int], Any], describe: Callable[[int], str]) -> Callable[[int], Any]:
        """Wrap `read(index)` for use outside the pipeline: errors become `RecordError`s (raise) or
        `None` (skip, counted)."""

        def guarded(index: int) -> Any:
            try:
                value = read(index)
            except DATA_ERRORS as e:
                error = _as_record_error(e, describe(index))
                if self.on_error == "raise":
                    raise error from e
                value = SkippedRecord(str(error))
            return value if self.keep(value) else None

        return guarded

    def check(self) -> None:
        """Raise once the skipped fraction exceeds `max_skip_fraction` (after enough records)."""
        with self._lock:
            seen, skipped = self.seen, self.skipped
        if seen >= MIN_RECORDS_FOR_FRACTION and skipped > self.max_skip_fraction * seen:
            raise RecordError(f"{skipped} of {seen} records were bad, more than data.max_skip_fraction="
                              f"{self.max_skip_fraction}; fix the data or raise the limit")

    def metrics(self) -> dict[str, float]:
        with self._lock:
            return {"data/records_seen": float(self.seen), "data/records_skipped": float(self.skipped)}
