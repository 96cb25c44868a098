"""The training input pipeline on grain: source -> seeded shuffle (per epoch) -> preprocess -> batch.

Each process reads only its own slice of every global batch: the shuffled, preprocessed dataset is
batched at the per-process size and process p takes batches p, p + P, p + 2P, ..., so global batch i
is exactly examples [i*B, (i+1)*B) of the shuffled order whatever the number of processes. The
iterator's state is tiny (the next index) and is saved with each checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding


def train_iterator(source: Any, preprocess: Callable[[dict], dict], global_batch_size: int, seed: int,
                   process_index: int = 0, process_count: int = 1, num_threads: int = 2,
                   prefetch: int = 4) -> grain.DatasetIterator:
    """An endless, resumable iterator of this process's share of each global batch (numpy dicts)."""
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} does not split over {process_count} processes")
    local = global_batch_size // process_count
    dataset = (grain.MapDataset.source(source).shuffle(seed=seed).repeat(None).map(preprocess)
               .batch(local, drop_remainder=True))
    dataset = dataset[process_index::process_count]
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(dataset.to_iter_dataset(options))


def eval_batches(source: Any, preprocess: Callable[[dict], dict], batch_size: int,
                 num_examples: int | None = None) -> list[dict]:
    """The first `num_examples` of `source` in order, preprocessed and batched (the last may be short)."""
    n = len(source) if num_examples is None else min(num_examples, len(source))
    dataset = grain.MapDataset.source(source)[:n].map(preprocess).batch(batch_size)
    return list(dataset)


def to_global(batch: Mapping[str, np.ndarray], sharding: NamedSharding, fields: Sequence[str]) -> dict:
    """Assemble each process's rows into one global, sharded jax.Array per field."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in fields}
