"""The grain training pipeline: per-process slices compose the global batch, per-epoch random
preprocessing, worker processes, bad records raised or skipped and counted, and exact resume."""

import numpy as np
import pytest

from vlalign_jax.data.pipeline import eval_batches, train_iterator
from vlalign_jax.data.records import RecordError, RecordErrors
from vlalign_jax.data.word_tokenizer import WordTokenizer


class Numbers:
    def __init__(self, n=37, bad=()):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def describe(self, i):
        return f"numbers.txt line {i + 1}"

    def __getitem__(self, i):
        if i in self.bad:
            raise OSError("truncated")
        return {"x": np.int64(i)}


def identity(example, rng):
    return example


def with_draw(example, rng):
    return {**example, "draw": rng.integers(0, 2**31)}


def test_processes_split_each_global_batch():
    single = train_iterator(Numbers(), with_draw, 8, seed=3)
    halves = [train_iterator(Numbers(), with_draw, 8, seed=3, process_index=p, process_count=2) for p in (0, 1)]
    for _ in range(10):  # crosses epoch boundaries (37 examples)
        whole = next(single)
        parts = [next(h) for h in halves]
        # The same examples with the same random draws, whichever process reads them.
        pairs = sorted(zip(np.concatenate([p["x"] for p in parts]), np.concatenate([p["draw"] for p in parts])))
        assert pairs == sorted(zip(whole["x"], whole["draw"]))


def test_random_preprocessing_differs_per_epoch_and_replays_with_the_seed():
    draws = {}
    it = train_iterator(Numbers(), with_draw, 37, seed=0)
    for epoch in range(2):
        batch = next(it)
        draws[epoch] = dict(zip(batch["x"], batch["draw"]))
    assert all(draws[0][i] != draws[1][i] for i in range(37))
    again = next(train_iterator(Numbers(), with_draw, 37, seed=0))
    assert dict(zip(again["x"], again["draw"])) == draws[0]


def test_each_epoch_is_a_new_permutation_of_all_examples():
    it = train_iterator(Numbers(), identity, 37, seed=0)
    first, second = next(it)["x"], next(it)["x"]
    assert sorted(first) == list(range(37)) == sorted(second)
    assert not np.array_equal(first, second)


def test_state_restores_the_exact_position():
    it = train_iterator(Numbers(), identity, 4, seed=1)
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it)["x"] for _ in range(3)]
    fresh = train_iterator(Numbers(), identity, 4, seed=1)
    fresh.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["x"], want)


def test_word_tokenizer_follows_clip_conventions():
    tok = WordTokenizer(["a", "red", "circle"], context_length=6)
    ids = tok(["A red circle", "a a a a a a a"])
    assert ids.dtype == np.int32 and ids.shape == (2, 6)
    assert ids[0, 0] == 1 and ids[0, 5] == 0 and ids[0, 4] == tok.eot_token_id == ids.max()
    assert ids[1, -1] == tok.eot_token_id  # truncated, end token kept
    try:
        tok("a blue circle")
    except ValueError as e:
        assert "'blue'" in str(e)
    else:
        raise AssertionError("unknown word accepted")


def test_bad_record_raises_naming_file_and_line():
    it = train_iterator(Numbers(bad={5}), identity, 37, seed=0)
    with pytest.raises(RecordError, match=r"numbers.txt line 6: OSError: truncated"):
        next(it)


def test_skipped_records_are_counted_and_never_batched():
    errors = RecordErrors("skip", max_skip_fraction=0.5)
    it = train_iterator(Numbers(bad={3, 4, 20}), identity, 17, seed=0, errors=errors)
    batches = [next(it)["x"] for _ in range(4)]  # 68 good examples: just under two epochs of 34
    for batch in batches:
        assert not {3, 4, 20} & set(batch.tolist())
    assert sorted(np.concatenate(batches[:2]).tolist()) == sorted(set(range(37)) - {3, 4, 20})
    metrics = errors.metrics()
    assert metrics["data/records_skipped"] >= 3 and metrics["data/records_seen"] >= 68 + 3


def test_mostly_bad_data_stops_the_run():
    errors = RecordErrors("skip", max_skip_fraction=0.05)
    it = train_iterator(Numbers(200, bad=range(0, 200, 5)), identity, 100, seed=0, errors=errors)
    next(it)
    with pytest.raises(RecordError, match=r"records were bad, more than data.max_skip_fraction=0.05"):
        errors.check()


def test_eval_batches_keep_order_and_raise_on_bad_records():
    batches = eval_batches(Numbers(10), lambda e: e, 4)
    assert [b["x"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(RecordError, match="numbers.txt line 3"):
        eval_batches(Numbers(10, bad={2}), lambda e: e, 4)


def test_worker_processes_read_the_same_examples_and_resume_exactly():
    """Each of W workers batches every W-th example, so W consecutive batches hold the same examples
    (with the same random draws) as W batches made in process; a restored state replays exactly."""
    in_process = train_iterator(Numbers(), with_draw, 8, seed=5)
    workers = train_iterator(Numbers(), with_draw, 8, seed=5, num_workers=2)
    try:
        for _ in range(3):
            mine = [next(in_process) for _ in range(2)]
            theirs = [next(workers) for _ in range(2)]
            pairs = lambda batches: sorted((int(x), int(d)) for b in batches for x, d in zip(b["x"], b["draw"]))  # noqa: E731
            assert pairs(mine) == pairs(theirs)
        state = workers.get_state()
        expected = [next(workers) for _ in range(4)]
    finally:
        workers.close()
    resumed = train_iterator(Numbers(), with_draw, 8, seed=5, num_workers=2)
    try:
        resumed.set_state(state)
        for want in expected:
            got = next(resumed)
            np.testing.assert_array_equal(got["x"], want["x"])
            np.testing.assert_array_equal(got["draw"], want["draw"])
    finally:
        resumed.close()
