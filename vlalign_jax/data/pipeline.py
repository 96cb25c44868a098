"""The training input pipeline on grain: source -> seeded shuffle (per epoch) -> read + preprocess
(with a per-example rng) -> batch of good records -> [worker processes] -> count the skipped ones.

Every process shuffles the same global order and keeps the examples p, p + P, p + 2P, ... of it, so
global batch i is exactly the examples [i*B, (i+1)*B) of the shuffled order whatever the number of
processes (with no worker processes and no record skipped; W workers each batch every W-th example,
so W consecutive batches hold the same examples). The rng handed to `preprocess` is derived from the seed and
the example's position in the repeated order, so random crops differ per epoch, do not depend on
the number of processes or workers, and replay exactly on resume. The iterator state (a position
per worker) is saved with each checkpoint; resume with the same `data.num_workers`.

Batches are stacked inside the workers, as torch's DataLoader collates in its workers: one shared
memory transfer per batch instead of one per example. A bad record (with `data.on_error=skip`) is left
out of its batch, which is topped up from the next records, and its message rides along with the
batch to the training process, where `RecordErrors` counts and reports it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding

from vlalign_jax.data.records import GuardedRead, RecordErrors, SkippedRecord

Preprocess = Callable[[Any, np.random.Generator], dict]


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; a program that never parsed them (pytest, a
    notebook, our CLI) would fail with UnparsedFlagAccessError."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def train_iterator(source: Any, preprocess: Preprocess, global_batch_size: int, seed: int,
                   process_index: int = 0, process_count: int = 1, num_threads: int = 2,
                   prefetch: int = 4, num_workers: int = 0,
                   errors: RecordErrors | None = None) -> grain.DatasetIterator:
    """An endless, resumable iterator of this process's share of each global batch (numpy dicts).

    `preprocess(example, rng)` turns one source record into the batch fields. `num_workers > 0` runs
    read + preprocess in that many worker processes (each with `num_threads` threads). `errors`
    decides what a bad record does (default: raise naming its file and index) and counts skips.
    """
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} does not split over {process_count} processes")
    errors = errors or RecordErrors()
    read = GuardedRead(source, preprocess, errors.on_error)
    dataset = (grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(None)
               .random_map(read, seed=seed))[process_index::process_count]
    iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    local = global_batch_size // process_count
    iterable = _GoodRecordBatches(iterable, local)
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(iterable.map(errors.count_batch))


def _stack_into_shared_memory(rows: Sequence[np.ndarray]) -> np.ndarray:
    """np.stack straight into a shared-memory array that grain hands to the training process without
    another copy (what grain's own batch does in a worker; grain exposes the array type only
    privately, so without it this is a plain stack)."""
    if _SharedMemoryArray is None or np.asarray(rows[0]).dtype.hasobject:
        return np.stack(rows)
    first = np.asarray(rows[0])
    return np.stack(rows, out=_SharedMemoryArray((len(rows),) + first.shape, dtype=first.dtype))


try:
    from grain._src.python.ipc.shared_memory_array import SharedMemoryArray as _SharedMemoryArray
except ImportError:  # a grain without it: batches are copied into shared memory once more
    _SharedMemoryArray = None


class _GoodRecordBatches(grain.IterDataset):
    """Batches of `batch_size` good records, each paired with the messages of the bad ones it passed."""

    def __init__(self, parent: grain.IterDataset, batch_size: int):
        super().__init__(parent)
        self.batch_size = batch_size
        self.shared_memory_output = False

    def enable_shared_memory_output(self) -> None:
        """Called by grain in each worker process."""
        self.shared_memory_output = True

    def __iter__(self) -> grain.DatasetIterator:
        stack = _stack_into_shared_memory if self.shared_memory_output else np.stack
        return _GoodRecordBatchIterator(self._parent.__iter__(), self.batch_size, stack)


class _GoodRecordBatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, batch_size: int, stack: Callable):
        super().__init__(parent)
        self.batch_size, self.stack = batch_size, stack

    def __next__(self) -> tuple[dict, list[str]]:
        good, skipped = [], []
        while len(good) < self.batch_size:
            element = next(self._parent)
            if isinstance(element, SkippedRecord):
                skipped.append(element.message)
            else:
                good.append(element)
        return jax.tree.map(lambda *rows: self.stack(rows), *good), skipped

    # A batch is only ever cut whole, so the position is the parent's.
    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)


def eval_batches(source: Any, preprocess: Callable[[Any], dict], batch_size: int,
                 num_examples: int | None = None) -> list[dict]:
    """The first `num_examples` of `source` in order, preprocessed and batched (the last may be short).

    Evaluation never skips: a bad record raises, naming its file and index.
    """
    n = len(source) if num_examples is None else min(num_examples, len(source))
    read = GuardedRead(source, lambda example, rng: preprocess(example), "raise")
    dataset = grain.MapDataset.range(n).random_map(read, seed=0).batch(batch_size)
    return list(dataset)


def iter_eval_batches(source: Any, preprocess: Callable[[dict], dict], batch_size: int,
                      num_examples: int | None = None, num_threads: int = 8) -> Iterable[dict]:
    """`eval_batches`, streamed: the first `num_examples` of `source` in order, read and
    preprocessed on `num_threads` threads, without holding a whole split's pixels in memory."""
    n = len(source) if num_examples is None else min(num_examples, len(source))
    read = GuardedRead(source, lambda example, rng: preprocess(example), "raise")
    dataset = grain.MapDataset.range(n).random_map(read, seed=0).batch(batch_size)
    return dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads))


def to_global(batch: Mapping[str, np.ndarray], sharding: NamedSharding, fields: Sequence[str]) -> dict:
    """Assemble each process's rows into one global, sharded jax.Array per field."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in fields}
