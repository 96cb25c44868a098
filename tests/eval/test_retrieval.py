"""Retrieval recall against a brute-force loop."""

import numpy as np

from vlalign_jax.eval.retrieval import retrieval_recall


def brute_force(sims, k):
    hits = 0
    for i, row in enumerate(sims):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j != i))  # ties count in our favour
        hits += i in order[:k]
    return hits / len(sims)


def test_matches_brute_force():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((50, 8)).astype(np.float32)
    text = image + 0.8 * rng.standard_normal((50, 8)).astype(np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    got = retrieval_recall(image, text, ks=(1, 5))
    sims = image @ text.T
    for k in (1, 5):
        assert got[f"i2t_R@{k}"] == brute_force(sims, k)
        assert got[f"t2i_R@{k}"] == brute_force(sims.T, k)
    assert 0 < got["i2t_R@1"] < got["i2t_R@5"] <= 1


def test_ties_count_as_chosen():
    same = np.tile(np.asarray([[1.0, 0.0]], np.float32), (3, 1))  # a collapsed model: every score ties
    assert retrieval_recall(same, same, ks=(1,), ties="hit")["i2t_R@1"] == 1.0
    assert retrieval_recall(same, same, ks=(1,), ties="miss")["i2t_R@1"] == 0.0
