"""Bad-record policy: raise with the file and record named, or skip and count.

`data.on_error = "raise"` (default) turns any failure to read or decode a record into a
`RecordError` naming the source file and the record index. With `"skip"` the record is dropped,
counted and logged, and once more than `data.max_skip_fraction` of the records read are bad the run
stops: a dataset that is mostly broken should not train quietly on what is left.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)
ON_ERROR = ("raise", "skip")
# Too few records read says nothing about the fraction: judge only after this many.
MIN_RECORDS_FOR_FRACTION = 100


class RecordError(ValueError):
    """A record that cannot be used; the message names its file (or source) and index."""


@dataclasses.dataclass
class RecordErrors:
    """Counts records read and skipped; shared by the pipeline's reader threads."""

    on_error: str = "raise"
    max_skip_fraction: float = 0.01
    seen: int = 0
    skipped: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"data.on_error must be one of {ON_ERROR}, got {self.on_error!r}")

    def guard(self, read: Callable[[int], Any], describe: Callable[[int], str]) -> Callable[[int], Any]:
        """Wrap `read(index)`: errors become `RecordError`s, or `None` (skipped and counted)."""

        def guarded(index: int) -> Any:
            try:
                value = read(index)
            except RecordError as e:
                return self._failed(index, e)
            except (OSError, ValueError, KeyError, SyntaxError) as e:  # PIL, json, csv, missing fields
                return self._failed(index, RecordError(f"{describe(index)}: {type(e).__name__}: {e}"))
            with self._lock:
                self.seen += 1
            return value

        return guarded

    def _failed(self, index: int, error: RecordError) -> None:
        if self.on_error == "raise":
            raise error
        with self._lock:
            self.seen += 1
            self.skipped += 1
            count = self.skipped
        log.warning("skipping bad record (%d so far): %s", count, error)
        return None

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
