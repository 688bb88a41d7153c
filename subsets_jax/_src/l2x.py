"""L2X's relaxation of a k-subset: the element-wise maximum of k Gumbel-softmax draws."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from subsets_jax._src import gumbel, validation

DEFAULT_TAU = 0.1  # L2X's synthetic and IMDB experiments


def l2x_core(key: jax.Array, logits: jax.Array, k: int, tau: jax.Array) -> jax.Array:
  """`l2x_relaxed` of checked logits in the compute dtype (under `jit`)."""
  # The k draws lie on the second-to-last axis: [..., k, n].
  draws = jnp.broadcast_to(logits[..., None, :], (*logits.shape[:-1], k, logits.shape[-1]))
  perturbed = gumbel.perturb(key, draws, logits.dtype)
  # Excluded items stay excluded whatever their noise.
  alive = jnp.isfinite(perturbed)
  scaled = jnp.where(alive, jnp.where(alive, perturbed, 0) / tau, -jnp.inf)
  out = jnp.max(jax.nn.softmax(scaled, axis=-1), axis=-2)
  return validation.nan_where(validation.bad_rows(logits), out)


@functools.partial(jax.jit, static_argnames=("k",))
def _l2x_jit(key, logits, tau, *, k):
  dtype = validation.compute_dtype(logits.dtype)
  return l2x_core(key, logits.astype(dtype), k, jnp.asarray(tau, dtype)).astype(logits.dtype)


def l2x_relaxed(
  key: ArrayLike, logits: ArrayLike, k: int, tau: ArrayLike = DEFAULT_TAU
) -> jax.Array:
  r"""L2X's relaxed k-hot: the element-wise maximum of `k` independent Gumbel-softmax draws.

  .. math::

     z_i = \max_{j = 1..k} \operatorname{softmax}\big((\theta + g^{(j)}) / \tau\big)_i,
     \qquad g^{(j)} \text{ i.i.d. standard Gumbel},

  the "Concrete" selector of Chen et al. (2018) for explaining a model with `k`
  features: each draw relaxes one categorical choice, so the output is a relaxation of
  `k` draws *with* replacement (fewer than `k` distinct items can dominate); entries lie
  in `[0, 1]` and sum to between 1 and `k`. Differentiable in `logits` and `tau`.

  Args:
    key: a PRNG key; the noise is `gumbel_noise(key, draws)` for `draws` of shape
      `[..., k, n]`.
    logits: `[..., n]` real floating logits; `-inf` excludes an item.
    k: number of draws (the subset size), a Python int with `1 <= k <= n` (static).
    tau: temperature, a real scalar > 0 (default 0.1, L2X's); may be traced.

  Returns:
    `[..., n]` relaxed selection in the dtype of `logits` (NaN for a row with traced NaN
    or `+inf` logits).

  Raises:
    TypeError: `key` is not a PRNG key; non-floating `logits`; non-int `k`; non-real
      `tau`.
    ValueError: `k` outside `[1, n]`; concrete `tau` not finite and > 0; concrete
      `logits` with NaN, `+inf` or fewer than `k` finite entries in a row.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> z = sj.l2x_relaxed(jax.random.key(0), jnp.array([0., 0., 5., 5.]), 2)
    >>> z.shape, bool(jnp.all((z >= 0) & (z <= 1)))
    ((4,), True)

  References:
    Chen, Song, Wainwright & Jordan, "Learning to Explain: An Information-Theoretic
    Perspective on Model Interpretation", ICML 2018; Maddison, Mnih & Teh, "The Concrete
    Distribution", ICLR 2017; Jang, Gu & Poole, "Categorical Reparameterization with
    Gumbel-Softmax", ICLR 2017.
  """
  logits = validation.check_scores(logits, name="logits")
  k = validation.check_k(k, logits.shape[-1])
  validation.check_enough_finite(logits, k, name="logits")
  tau = validation.check_tau(tau)
  key = validation.check_key(key)
  return _l2x_jit(key, logits, tau, k=k)
