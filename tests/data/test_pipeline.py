"""The grain training pipeline: per-process slices compose the global batch, and resume is exact."""

import numpy as np

from vlalign_jax.data.pipeline import train_iterator
from vlalign_jax.data.word_tokenizer import WordTokenizer


class Numbers:
    def __len__(self):
        return 37

    def __getitem__(self, i):
        return {"x": np.int64(i)}


def identity(example):
    return example


def test_processes_split_each_global_batch():
    single = train_iterator(Numbers(), identity, 8, seed=3)
    halves = [train_iterator(Numbers(), identity, 8, seed=3, process_index=p, process_count=2) for p in (0, 1)]
    for _ in range(10):  # crosses epoch boundaries (37 examples)
        whole = next(single)["x"]
        np.testing.assert_array_equal(np.concatenate([next(h)["x"] for h in halves]), whole)


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
