"""knn_predict against a brute-force NumPy kNN with the same tie rules."""

import numpy as np
import pytest

import subsets_jax as sj


def brute_force_knn(queries, bank, labels, k, num_classes):
  predictions = []
  for q in queries.astype(np.float64):
    d = ((bank.astype(np.float64) - q) ** 2).sum(-1)
    nearest = np.argsort(d, kind="stable")[:k]  # equal distances: lower index first
    votes = labels[nearest]
    counts = np.bincount(votes, minlength=num_classes)
    tied = set(np.flatnonzero(counts == counts.max()))
    predictions.append(next(c for c in votes if c in tied))  # nearest member wins ties
  return np.array(predictions)


@pytest.mark.parametrize("k", [1, 4, 9])
@pytest.mark.parametrize("chunk_size", [7, 64, 1000])
def test_matches_brute_force_with_ties(k, chunk_size, rng):
  # Integer coordinates create many equal distances and split votes.
  bank = rng.integers(0, 4, size=(300, 3)).astype(np.float32)
  labels = rng.integers(0, 5, size=300).astype(np.int32)
  queries = rng.integers(0, 4, size=(123, 3)).astype(np.float32) + 0.5 * (k % 2)
  ours = np.asarray(
    sj.knn_predict(queries, bank, labels, k=k, num_classes=5, chunk_size=chunk_size)
  )
  np.testing.assert_array_equal(ours, brute_force_knn(queries, bank, labels, k, 5))


def test_continuous_embeddings(rng):
  bank = rng.normal(size=(2000, 16)).astype(np.float32)
  labels = (bank[:, 0] > 0).astype(np.int32) + 2 * (bank[:, 1] > 0)
  queries = rng.normal(size=(500, 16)).astype(np.float32)
  ours = np.asarray(sj.knn_predict(queries, bank, labels, k=5, num_classes=4, chunk_size=128))
  np.testing.assert_array_equal(ours, brute_force_knn(queries, bank, labels, 5, 4))


@pytest.mark.parametrize(
  "k,label_dtype,error,match",
  [(5, np.int32, ValueError, "1 <= k"), (2, np.float32, TypeError, "neighbor_labels")],
)
def test_rejects_bad_input(k, label_dtype, error, match):
  bank = np.zeros((4, 3), np.float32)
  with pytest.raises(error, match=match):
    sj.knn_predict(bank[:2], bank, np.zeros(4, label_dtype), k=k, num_classes=2)
