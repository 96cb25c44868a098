"""The training input pipeline on grain: source -> seeded shuffle (per epoch) -> read + preprocess
(with a per-example rng) -> [worker processes] -> drop counted bad records -> batch.

Every process shuffles the same global order and keeps the examples p, p + P, p + 2P, ... of it, so
global batch i is exactly the examples [i*B, (i+1)*B) of the shuffled order whatever the number of
processes (while no record is skipped). The rng handed to `preprocess` is derived from the seed and
the example's position in the repeated order, so random crops differ per epoch, do not depend on
the number of processes or workers, and replay exactly on resume. The iterator state (a position
per worker) is saved with each checkpoint; resume with the same `data.num_workers`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding

from vlalign_jax.data.records import GuardedRead, RecordErrors

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
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    local = global_batch_size // process_count
    return iter(iterable.filter(errors.keep).batch(local, drop_remainder=True))


def eval_batches(source: Any, preprocess: Callable[[Any], dict], batch_size: int,
                 num_examples: int | None = None) -> list[dict]:
    """The first `num_examples` of `source` in order, preprocessed and batched (the last may be short).

    Evaluation never skips: a bad record raises, naming its file and index.
    """
    n = len(source) if num_examples is None else min(num_examples, len(source))
    read = GuardedRead(source, lambda example, rng: preprocess(example), "raise")
    dataset = grain.MapDataset.range(n).random_map(read, seed=0).batch(batch_size)
    return list(dataset)


def to_global(batch: Mapping[str, np.ndarray], sharding: NamedSharding, fields: Sequence[str]) -> dict:
    """Assemble each process's rows into one global, sharded jax.Array per field."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in fields}
