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


def _rescaled_numpy(values, log_scale):
  """Rows of `values` divided by their maximum (an all-zero row stays, at log-scale -inf)."""
  top = values.max(axis=1)
  safe = np.where(top > 0, top, 1.0)
  with np.errstate(divide="ignore"):
    return values / safe[:, None], log_scale + np.where(top > 0, np.log(safe), -np.inf)


def inclusion_probs_numpy(scores, k, nodes=3000):
  """float64 P(i in S) of the Gumbel-top-k draw by the exponential race, plainly.

  pi_i = int_0^inf w_i e^(-w_i t) P(N_-i(t) <= k - 1) dt, N_-i(t) the number of other items
  arrived by t (item j with probability 1 - e^(-w_j t)), by the trapezoidal rule in log t on
  a fine uniform grid over a generous range; P(N_-i <= k - 1) from a forward recursion over
  the items (the count before i) and a backward one (the count after i), per node, in
  linear space rescaled after every item.
  """
  s = np.asarray(scores, np.float64)
  s = s - np.sort(s)[::-1][k - 1]  # the k-th largest weight is 1
  z = np.linspace(np.log(1e-13) - np.log(np.sum(np.exp(s))), np.log(np.log(k) + 40), nodes)
  came = -np.expm1(-np.exp(s[:, None] + z[None, :]))  # [n, nodes]
  n = len(s)
  before = np.zeros((n, nodes, k))
  log_before = np.zeros((n, nodes))
  counts, log_scale = np.zeros((nodes, k)), np.zeros(nodes)
  counts[:, 0] = 1
  for i in range(n):
    before[i], log_before[i] = counts, log_scale
    shifted = np.concatenate([np.zeros((nodes, 1)), counts[:, :-1]], axis=1)
    counts = (1 - came[i])[:, None] * counts + came[i][:, None] * shifted
    counts, log_scale = _rescaled_numpy(counts, log_scale)
  log_cdf = np.zeros((n, nodes))
  tail, log_tail = np.ones((nodes, k)), np.zeros(nodes)  # P(items after add <= k-1-m)
  for i in reversed(range(n)):
    with np.errstate(divide="ignore"):  # a count that cannot stay below k: log 0
      log_cdf[i] = np.log(np.sum(before[i] * tail, axis=1)) + log_before[i] + log_tail
    shifted = np.concatenate([tail[:, 1:], np.zeros((nodes, 1))], axis=1)
    tail = (1 - came[i])[:, None] * tail + came[i][:, None] * shifted
    tail, log_tail = _rescaled_numpy(tail, log_tail)
  rate = np.exp(s[:, None] + z[None, :])
  terms = np.exp(s[:, None] + z[None, :] - rate + log_cdf)
  return np.trapezoid(terms, z, axis=1)
