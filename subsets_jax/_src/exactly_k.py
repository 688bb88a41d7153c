"""The exactly-k distribution: p(S) ∝ exp(sum of the logits in S) over sets of size k."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from subsets_jax._src import validation


def log_add(a: jax.Array, b: jax.Array) -> jax.Array:
  """log(e^a + e^b), exact at -inf on either side and with finite gradients there."""
  m = jnp.maximum(a, b)
  finite = jnp.isfinite(m)
  m_safe = jnp.where(finite, m, 0)
  total = jnp.exp(a - m_safe) + jnp.exp(b - m_safe)
  return jnp.where(finite, m_safe + jnp.log(jnp.where(finite, total, 1)), m)


def _shift_up(e: jax.Array) -> jax.Array:
  """`[..., k + 1]` -> the same with entry m holding entry m - 1 (entry 0: -inf)."""
  neg_inf = jnp.full((*e.shape[:-1], 1), -jnp.inf, e.dtype)
  return jnp.concatenate([neg_inf, e[..., :-1]], axis=-1)


def _empty_table(logits: jax.Array, k: int) -> jax.Array:
  """`[..., k + 1]`: log e_m of no items (0 for m = 0, -inf above)."""
  return jnp.full((*logits.shape[:-1], k + 1), -jnp.inf, logits.dtype).at[..., 0].set(0)


def _add_item(e: jax.Array, logit: jax.Array) -> jax.Array:
  """One step of the recursion: e_m(w_1..w_j) = e_m(w_1..w_{j-1}) + w_j e_{m-1}(w_1..w_{j-1})."""
  return log_add(e, logit[..., None] + _shift_up(e))


def _log_convolve(a: jax.Array, b: jax.Array) -> jax.Array:
  """Truncated product of two polynomials in log space: `[..., k + 1]` twice -> `[..., k + 1]`.

  Entry m is log sum_{j <= m} exp(a_j + b_{m - j}), exact at -inf like `log_add`.
  """
  k = a.shape[-1] - 1
  j = np.arange(k + 1)[:, None]
  m = np.arange(k + 1)[None, :]
  b_shifted = jnp.where(m >= j, b[..., np.clip(m - j, 0, k)], -jnp.inf)  # [..., j, m]
  terms = a[..., :, None] + b_shifted
  top = jax.lax.stop_gradient(jnp.max(terms, axis=-2))
  finite = jnp.isfinite(top)
  top_safe = jnp.where(finite, top, 0)
  total = jnp.sum(jnp.exp(terms - top_safe[..., None, :]), axis=-2)
  return jnp.where(finite, top_safe + jnp.log(jnp.where(finite, total, 1)), top)


def _block_size(n: int, k: int) -> int:
  """Items per block of the recursion: at least k + 1 and about sqrt(n), at most n.

  The scan within the blocks takes `block` sequential steps over all blocks at once; the
  tree over the blocks' polynomials takes log2(n / block) more, each a truncated product
  costing (k + 1)^2 per pair: with `block >= k + 1` the tree costs no more than the scan,
  and with `block ~ sqrt(n)` neither the depth nor the number of blocks is large.
  """
  return min(n, max(k + 1, math.isqrt(n)))


def _blocks(logits: jax.Array, block: int) -> jax.Array:
  """`[..., n]` logits -> `[block, ..., count]`: item j of block c at (j, ..., c), -inf after n.

  An item with logit -inf leaves every polynomial unchanged, so the padding changes nothing.
  """
  n = logits.shape[-1]
  count = -(-n // block)
  pad = [(0, 0)] * (logits.ndim - 1) + [(0, count * block - n)]
  x = jnp.pad(logits, pad, constant_values=-jnp.inf)
  return jnp.moveaxis(x.reshape(*logits.shape[:-1], count, block), -1, 0)


def _block_polynomials(items: jax.Array, k: int, *, tables: bool = False) -> jax.Array:
  """The recursion within every block at once, over `[block, ..., count]` items.

  Returns the blocks' `[..., count, k + 1]` log e_m or, with `tables`, the prefix tables
  `[block + 1, ..., count, k + 1]`: entry (j, ..., c, m) is log e_m of the first j items of
  block c (the last entry is the blocks' polynomials).
  """
  e0 = _empty_table(items[0][..., None], k)

  def step(e, logit):
    e = _add_item(e, logit)
    return e, (e if tables else None)

  e, prefix = jax.lax.scan(step, e0, items)
  return jnp.concatenate([e0[None], prefix]) if tables else e


def _tree(polys: jax.Array) -> list[jax.Array]:
  """Levels of the product tree over `[..., count, k + 1]` polynomials, leaves first.

  The leaves are padded to a power of two with the polynomial 1; each level multiplies
  neighbouring pairs of the one below; the last level holds one polynomial.
  """
  count = polys.shape[-2]
  width = 1 << (count - 1).bit_length()
  one = _empty_table(
    jnp.zeros((*polys.shape[:-2], width - count, 1), polys.dtype), polys.shape[-1] - 1
  )
  levels = [jnp.concatenate([polys, one], axis=-2)]
  while levels[-1].shape[-2] > 1:
    below = levels[-1]
    levels.append(_log_convolve(below[..., 0::2, :], below[..., 1::2, :]))
  return levels


def _log_partition(logits: jax.Array, k: int) -> jax.Array:
  """log e_k(exp(logits)) of checked `[..., n]` logits in the compute dtype (under `jit`).

  The items run in blocks (`_block_size`): the recursion within every block at once, then a
  product tree over the blocks' polynomials.
  """
  block = _block_size(logits.shape[-1], k)
  polys = _block_polynomials(_blocks(logits, block), k)
  return _tree(polys)[-1][..., 0, k]


def marginals_core(logits: jax.Array, k: int) -> jax.Array:
  """`exactly_k_marginals` of checked logits in the compute dtype (under `jit`)."""
  return jax.grad(lambda x: jnp.sum(_log_partition(x, k)))(logits)


def _check_logits(logits, k):
  logits = validation.check_scores(logits, name="logits")
  k = validation.check_k(k, logits.shape[-1])
  validation.check_enough_finite(logits, k, name="logits")
  return logits, k


def _compute(logits: jax.Array) -> jax.Array:
  return logits.astype(validation.compute_dtype(logits.dtype))


@functools.partial(jax.jit, static_argnames=("k",))
def _log_partition_jit(logits, *, k):
  bad = validation.bad_rows(logits)[..., 0]
  return validation.nan_where(bad, _log_partition(_compute(logits), k))


@functools.partial(jax.jit, static_argnames=("k",))
def _marginals_jit(logits, *, k):
  return validation.nan_where(validation.bad_rows(logits), marginals_core(_compute(logits), k))


def exactly_k_log_partition(logits: ArrayLike, k: int) -> jax.Array:
  r"""Log-normaliser of the exactly-k distribution: :math:`\log e_k(e^{x_1}, \dots, e^{x_n})`.

  The exactly-k distribution over sets :math:`S` of `k` of the `n` items is

  .. math::

     p(S) = \frac{\exp \sum_{i \in S} x_i}{e_k(w)}, \qquad
     e_k(w) = \sum_{|S| = k} \prod_{i \in S} w_i, \quad w_i = e^{x_i},

  independent Bernoulli(sigmoid(x_i)) variables conditioned on their sum being `k`
  ("conditional Poisson sampling"). The elementary symmetric polynomials up to degree `k`
  are computed in log space, with no overflow or underflow at any logit scale: the items
  are split into blocks of :math:`b = \min(n, \max(k + 1, \lfloor\sqrt n\rfloor))`; within
  every block at once, the recursion :math:`e_m(w_{1..j}) = e_m(w_{1..j-1}) + w_j\,
  e_{m-1}(w_{1..j-1})` (a `lax.scan` of `b` steps); then a binary tree of truncated
  polynomial products over the blocks (:math:`\lceil\log_2(n / b)\rceil` levels). O(n k)
  time in :math:`b + \log_2(n / b)` sequential steps.

  Args:
    logits: `[..., n]` real floating logits :math:`x`; `-inf` excludes an item.
    k: set size, a Python int with `1 <= k <= n` (static under `jit`).

  Returns:
    `[...]` log-partition in the compute dtype (float32 at least, float64 stays float64);
    NaN for a row with traced NaN or `+inf` logits (as every output of this family).

  Raises:
    TypeError: non-floating `logits` or non-int `k`.
    ValueError: `k` outside `[1, n]`, or concrete `logits` with NaN, `+inf` or fewer than
      `k` finite entries in a row.

  Example:
    >>> import jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> w = jnp.array([1., 2., 3.])
    >>> round(float(jnp.exp(sj.exactly_k_log_partition(jnp.log(w), 2))), 4)  # 2 + 3 + 6
    11.0

  References:
    Chen, Dempster & Liu, "Weighted finite population sampling to maximize entropy",
    Biometrika 81(3), 1994.
  """
  logits, k = _check_logits(logits, k)
  return _log_partition_jit(logits, k=k)


def exactly_k_marginals(logits: ArrayLike, k: int) -> jax.Array:
  r"""Inclusion probabilities :math:`P(i \in S)` of the exactly-k distribution.

  Exact: the gradient of `exactly_k_log_partition` with respect to the logits,
  :math:`\partial \log e_k / \partial x_i = w_i\, e_{k-1}(w_{-i}) / e_k(w)`, computed by
  reverse-mode differentiation of the log-space computation of `exactly_k_log_partition`
  (blocks and their product tree): O(n k) time and memory per row.
  The marginals lie in `[0, 1]` and sum to `k`; `-inf` items get 0.

  Args:
    logits: `[..., n]` real floating logits; `-inf` excludes an item.
    k: set size, a Python int with `1 <= k <= n` (static under `jit`).

  Returns:
    `[..., n]` marginals in the compute dtype (NaN for a row with traced NaN or `+inf`).

  Raises:
    Same as `exactly_k_log_partition`.

  Example:
    >>> import jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> m = sj.exactly_k_marginals(jnp.log(jnp.array([1., 2., 3.])), 2)
    >>> [round(float(v), 4) for v in m * 11]  # (2 + 3, 2 + 6, 3 + 6)
    [5.0, 8.0, 9.0]

  References:
    Chen, Dempster & Liu, Biometrika 1994; Ahmed, Zeng, Niepert & Van den Broeck,
    "SIMPLE: A Gradient Estimator for k-Subset Sampling", ICLR 2023.
  """
  logits, k = _check_logits(logits, k)
  return _marginals_jit(logits, k=k)


@jax.jit
def _log_prob_jit(logits, indices):
  return log_prob_core(_compute(logits), indices)


def log_prob_core(logits: jax.Array, indices: jax.Array) -> jax.Array:
  """`exactly_k_log_prob` of checked arguments, logits in the compute dtype (under `jit`)."""
  chosen = jnp.take_along_axis(logits, indices, axis=-1)
  log_p = jnp.sum(chosen, axis=-1) - _log_partition(logits, indices.shape[-1])
  return validation.nan_where(validation.bad_rows(logits)[..., 0], log_p)


def exactly_k_log_prob(logits: ArrayLike, indices: ArrayLike) -> jax.Array:
  r"""Log-probability of the set `indices` under the exactly-k distribution.

  :math:`\log p(S) = \sum_{i \in S} x_i - \log e_k(e^x)` with `k = indices.shape[-1]`;
  the order of `indices` does not matter. Summed over all sets of size `k`, the
  probabilities are 1.

  Args:
    logits: `[..., n]` real floating logits; `-inf` excludes an item.
    indices: integer `[..., k]` with the logits' leading shape, distinct in `[0, n)`.

  Returns:
    `[...]` log-probabilities in the compute dtype (`-inf` for a set with an excluded item).

  Raises:
    TypeError: non-floating `logits` or non-integer `indices`.
    ValueError: mismatched shapes, `k` outside `[1, n]`; concrete `logits` with NaN or
      `+inf`; concrete `indices` outside `[0, n)` or repeated within a row.

  Example:
    >>> import jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> lp = sj.exactly_k_log_prob(jnp.log(jnp.array([1., 2., 3.])), jnp.array([2, 1]))
    >>> round(float(jnp.exp(lp)), 4)  # 6 / 11
    0.5455

  References:
    Chen, Dempster & Liu, Biometrika 1994.
  """
  logits = validation.check_scores(logits, name="logits")
  indices = validation.check_indices(indices, logits)
  return _log_prob_jit(logits, indices)


def _split_counts(key: jax.Array, levels: list[jax.Array], k: int) -> jax.Array:
  """Counts `[..., count]` of the sampled set in every leaf of the product tree.

  From the root (count k) down: a node holding `r` items gives `j` of them to its left
  child with probability exp(L_j + R_{r - j}) / exp(P_r), drawn by the Gumbel-max trick.
  """
  counts = jnp.full((*levels[-1].shape[:-2], 1), k, jnp.int32)
  for depth, below in enumerate(reversed(levels[:-1])):
    left, right = below[..., 0::2, :], below[..., 1::2, :]
    item = jax.lax.broadcasted_iota(jnp.int32, left.shape, left.ndim - 1)
    rest = counts[..., None] - item  # [..., nodes, k + 1]: the right child's share
    take_right = jnp.take_along_axis(right, jnp.clip(rest, 0, k), axis=-1)
    log_w = jnp.where(rest >= 0, left + take_right, -jnp.inf)
    noise = jax.random.gumbel(jax.random.fold_in(key, depth), log_w.shape, log_w.dtype)
    to_left = jnp.argmax(log_w + noise, axis=-1).astype(jnp.int32)
    counts = jnp.stack([to_left, counts - to_left], axis=-1).reshape(*counts.shape[:-1], -1)
  return counts


def sample_core(key: jax.Array, logits: jax.Array, k: int) -> jax.Array:
  """`exactly_k_sample` of checked logits in the compute dtype (under `jit`): a bool mask.

  The product tree's counts say how many items each block holds; within each block the
  items are drawn backwards through its prefix tables.
  """
  n = logits.shape[-1]
  block = _block_size(n, k)
  items = _blocks(logits, block)  # [block, ..., count]
  tables = _block_polynomials(items, k, tables=True)
  tree_key, item_key = jax.random.split(key)
  counts = _split_counts(tree_key, _tree(tables[-1]), k)[..., : items.shape[-1]]
  u = jax.random.uniform(item_key, items.shape, logits.dtype)

  def step(remaining, xs):
    # Item j of each block, given `remaining` of the block's share still to place among
    # its items 1..j.
    logit, before, here, u_j = xs  # before: log e_m(w_1..w_{j-1}); here: log e_m(w_1..w_j)
    take = lambda table, r: jnp.take_along_axis(table, r[..., None], axis=-1)[..., 0]
    r = remaining
    r_minus = jnp.maximum(r - 1, 0)
    log_p = logit + take(before, r_minus) - take(here, r)
    # Forced in where the earlier items cannot hold all `r` (the ratio is 1 up to rounding).
    forced = ~jnp.isfinite(take(before, r))
    include = (r > 0) & jnp.isfinite(logit) & (forced | (jnp.log(u_j) < log_p))
    return remaining - include.astype(remaining.dtype), include

  xs = (items, tables[:-1], tables[1:], u)
  _, mask = jax.lax.scan(step, counts, xs, reverse=True)  # [block, ..., count]
  mask = jnp.moveaxis(mask, 0, -1).reshape(*logits.shape[:-1], -1)
  return mask[..., :n]


def mask_to_indices(mask: jax.Array, k: int) -> jax.Array:
  """Ascending indices of the `k` True entries of each row of a bool `[..., n]` mask."""
  n = mask.shape[-1]
  item = jax.lax.broadcasted_iota(jnp.int32, mask.shape, mask.ndim - 1)
  order = jnp.where(mask, item, n + item)
  return -jax.lax.top_k(-order, k)[0]


@functools.partial(jax.jit, static_argnames=("k",))
def _sample_jit(key, logits, *, k):
  return mask_to_indices(sample_core(key, _compute(logits), k), k)


def exactly_k_sample(key: ArrayLike, logits: ArrayLike, k: int) -> jax.Array:
  r"""Draws an exact sample of the exactly-k distribution, :math:`p(S) \propto \prod_{i\in S} w_i`.

  Conditional Poisson sampling, top-down through the blocks and product tree of
  `exactly_k_log_partition`: a node holding `r` of the set gives `j` of them to its left
  child with probability :math:`P_j^{\text{left}} P_{r-j}^{\text{right}} / P_r`, where
  :math:`P_m` is that subtree's :math:`e_m`; then, backwards through each block, with `r`
  items still to place among its items `1..j`, item `j` is taken with probability
  :math:`w_j\, e_{r-1}(w_{1..j-1}) / e_r(w_{1..j})`. O(n k) time and memory per row. This
  is not Gumbel-top-k: for `k >= 2` the two distributions over sets differ.

  Args:
    key: a PRNG key.
    logits: `[..., n]` real floating logits; `-inf` excludes an item.
    k: set size, a Python int with `1 <= k <= n` (static under `jit`).

  Returns:
    int32 `[..., k]` the sampled items in ascending index order (unspecified for a row
    with traced NaN or `+inf` logits).

  Raises:
    TypeError: `key` is not a PRNG key, non-floating `logits` or non-int `k`.
    ValueError: as `exactly_k_log_partition`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> idx = sj.exactly_k_sample(jax.random.key(0), jnp.zeros(5), 3)
    >>> idx.shape, idx.dtype, bool(jnp.all(jnp.diff(idx) > 0))
    ((3,), dtype('int32'), True)

  References:
    Chen, Dempster & Liu, Biometrika 1994.
  """
  logits, k = _check_logits(logits, k)
  key = validation.check_key(key)
  return _sample_jit(key, logits, k=k)


@functools.partial(jax.jit, static_argnames=("k",))
def _simple_jit(key, logits, *, k):
  dtype = validation.compute_dtype(logits.dtype)
  return simple_core(key, logits.astype(dtype), k).astype(logits.dtype)


def simple_core(key: jax.Array, logits: jax.Array, k: int) -> jax.Array:
  """`simple_topk` of checked logits in the compute dtype (under `jit`)."""
  sample = sample_core(key, logits, k).astype(logits.dtype)
  marginals = marginals_core(logits, k)
  # x - x is exactly 0 for finite x: the forward value is the exact k-hot sample.
  out = sample + (marginals - jax.lax.stop_gradient(marginals))
  return validation.nan_where(validation.bad_rows(logits), out)


def simple_topk(key: ArrayLike, logits: ArrayLike, k: int) -> jax.Array:
  r"""The SIMPLE gradient estimator for k-subsets (Ahmed et al., ICLR 2023).

  Forward: the k-hot of an exact `exactly_k_sample(key, logits, k)`. Backward: the
  vector-Jacobian product of `exactly_k_marginals(logits, k)`, i.e. the straight-through
  estimator with the exact marginals :math:`\mu = \mathbb{E}[\text{k-hot}]` in place of
  the sample: :math:`\partial f / \partial x \approx (\partial \mu / \partial x)^\top
  \nabla_z f(z)` at the sample `z`.

  Args:
    key: a PRNG key.
    logits: `[..., n]` real floating logits; `-inf` excludes an item.
    k: set size, a Python int with `1 <= k <= n` (static under `jit`).

  Returns:
    `[..., n]` exact k-hot sample in the dtype of `logits`, differentiable in `logits`
    (NaN for a row with traced NaN or `+inf` logits).

  Raises:
    Same as `exactly_k_sample`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> z = sj.simple_topk(jax.random.key(0), jnp.zeros(5), 2)
    >>> float(z.sum()), sorted(set(z.tolist()))
    (2.0, [0.0, 1.0])

  References:
    Ahmed, Zeng, Niepert & Van den Broeck, "SIMPLE: A Gradient Estimator for k-Subset
    Sampling", ICLR 2023.
  """
  logits, k = _check_logits(logits, k)
  key = validation.check_key(key)
  return _simple_jit(key, logits, k=k)


def entropy_core(logits: jax.Array, k: int) -> jax.Array:
  """`exactly_k_entropy` of checked logits in the compute dtype (under `jit`)."""
  finite = jnp.isfinite(logits)
  # H is invariant to a shift of every logit; shifting by the largest keeps the two terms
  # of H = log Z - <mu, x> as small as the logits' spread allows.
  top = jnp.max(jnp.where(finite, logits, -jnp.inf), axis=-1, keepdims=True)
  top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0))
  return _entropy(jnp.where(finite, logits - top, -jnp.inf), k)


def _log_partition_and_marginals(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """log Z and, by the VJP of the same pass of the recursion, mu = d log Z / dx."""
  log_z, vjp = jax.vjp(lambda x: _log_partition(x, k), x)
  (mu,) = vjp(jnp.ones_like(log_z))
  return log_z, mu


def _entropy_of(log_z: jax.Array, mu: jax.Array, x_finite: jax.Array) -> jax.Array:
  # H >= 0; rounding can leave a few ulp below 0 where the distribution is (nearly) a point.
  return jnp.maximum(log_z - jnp.sum(mu * x_finite, axis=-1), 0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _entropy(x: jax.Array, k: int) -> jax.Array:
  """H = log Z - <mu, x> of shifted logits `x` (-inf for excluded items)."""
  # Excluded items have mu = 0; multiplying by 0 rather than -inf keeps every term finite.
  x_finite = jnp.where(jnp.isfinite(x), x, 0)
  return _entropy_of(*_log_partition_and_marginals(x, k), x_finite)


@_entropy.defjvp
def _entropy_jvp(k, primals, tangents):
  r"""dH = -<J x, dx>, with J = d mu / dx the (symmetric) covariance of the k-hot vector:
  one forward-mode pass over the marginals' VJP, instead of reverse mode over it."""
  (x,), (dx,) = primals, tangents
  finite = jnp.isfinite(x)
  x_finite = jnp.where(finite, x, 0)
  (log_z, mu), (_, j_x) = jax.jvp(lambda x: _log_partition_and_marginals(x, k), (x,), (x_finite,))
  d_entropy = -jnp.sum(jnp.where(finite, j_x * dx, 0), axis=-1)
  return _entropy_of(log_z, mu, x_finite), d_entropy


@functools.partial(jax.jit, static_argnames=("k",))
def _entropy_jit(logits, *, k):
  bad = validation.bad_rows(logits)[..., 0]
  return validation.nan_where(bad, entropy_core(_compute(logits), k))


def exactly_k_entropy(logits: ArrayLike, k: int) -> jax.Array:
  r"""Exact entropy (nats) of the exactly-k distribution, :math:`p(S) \propto \prod_{i\in S} w_i`.

  Since :math:`\log p(S) = \sum_{i \in S} x_i - \log e_k(e^x)`, the entropy is

  .. math::

     H = -\sum_{|S| = k} p(S) \log p(S) = \log e_k(e^x) - \sum_i \mu_i x_i,

  with :math:`\mu = \texttt{exactly\_k\_marginals}(x, k)`: O(n k) time per row, no
  enumeration. The logits are shifted by their row maximum first (H does not change), so
  the two terms stay small; rounding can still cost precision when the logits span many
  orders of magnitude. The KL divergence to the uniform distribution over the
  :math:`\binom{n}{k}` subsets is :math:`\log \binom{n}{k} - H` (with `n` the number of
  finite logits). Differentiable in `logits` by automatic differentiation of the
  recursion: :math:`\nabla H = -\operatorname{Cov}_p(z)\, x`.

  Args:
    logits: `[..., n]` real floating logits; `-inf` excludes an item (it never enters a set
      and adds nothing to H).
    k: set size, a Python int with `1 <= k <= n` (static under `jit`).

  Returns:
    `[...]` entropy in nats, `>= 0`, in the compute dtype (float32 at least, float64
    stays float64); NaN for a row with traced NaN or `+inf` logits.

  Raises:
    Same as `exactly_k_log_partition`.

  Example:
    >>> import math
    >>> import jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> h = sj.exactly_k_entropy(jnp.zeros(6), 3)  # uniform over C(6, 3) = 20 sets
    >>> round(float(h), 4), round(math.log(20), 4)
    (2.9957, 2.9957)

  References:
    Chen, Dempster & Liu, Biometrika 1994; Ahmed, Zeng, Niepert & Van den Broeck,
    "SIMPLE: A Gradient Estimator for k-Subset Sampling", ICLR 2023 (the exact KL of the
    discrete VAE).
  """
  logits, k = _check_logits(logits, k)
  return _entropy_jit(logits, k=k)
