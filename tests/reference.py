"""Independent float64 NumPy references for the tests (not the library), and shared inputs."""

import itertools

import numpy as np


def soft_topk_numpy(scores, k, tau):
  """The seed's recursion in float64 with an exact log(1 - p): a + log(1 - softmax(a / tau))."""
  a = np.array(scores, dtype=np.float64)
  total = np.zeros_like(a)
  for _ in range(k):
    z = a / tau
    z = z - z.max(axis=-1, keepdims=True)
    w = np.exp(z)
    s = w.sum(axis=-1, keepdims=True)
    p = w / s
    # log(1 - p_i) = log(sum_{l != i} w_l) - log(s): computed per item without cancellation.
    others = np.empty_like(a)
    for i in range(a.shape[-1]):
      others[..., i] = np.delete(w, i, axis=-1).sum(axis=-1)
    total += p
    a = a + np.log(others) - np.log(s)
  return total


def ordered_prob_numpy(weights, order):
  weights = np.asarray(weights, dtype=np.float64)
  left = np.ones(len(weights), bool)
  prob = 1.0
  for i in order:
    # Sum what is left rather than subtracting from Z: no cancellation.
    prob *= weights[i] / weights[left].sum()
    left[i] = False
  return prob


def all_orders(n, k):
  return list(itertools.permutations(range(n), k))


def all_sets(n, k):
  return list(itertools.combinations(range(n), k))


def hard_rows(rng, rows, n):
  """float32 `[rows >= 3, n >= 8]` scores whose first rows stress the relaxation's edge cases."""
  scores = rng.normal(size=(rows, n)).astype(np.float32) * 2
  scores[0, 5] = -np.inf  # excluded item
  scores[1, 3] = 25.0  # dominant: others' weight about 1e-9 of its own
  scores[2, 7] = 150.0  # others' weight underflows: the runner-up gap stands in
  return scores


def exactly_k_marginals_numpy(logits, k):
  """float64 P(i in S) of the exactly-k law, item by item: w_i e_{k-1}(w_{-i}) / e_k(w).

  Each e_m comes from the plain recursion over the items in linear space, after scaling the
  weights to a largest of 1 (a common factor cancels in the ratio).
  """
  w = np.exp(np.asarray(logits, np.float64) - np.max(logits))

  def esp(weights):
    e = np.zeros(k + 1)
    e[0] = 1.0
    for x in weights:
      e[1:] = e[1:] + x * e[:-1]
    return e

  e_k = esp(w)[k]
  return np.array([w[i] * esp(np.delete(w, i))[k - 1] / e_k for i in range(len(w))])
