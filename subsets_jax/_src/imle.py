"""Implicit maximum likelihood estimation (I-MLE) for k-subsets, and its sum-of-gamma noise."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from subsets_jax._src import gumbel, validation

# The I-MLE discrete VAE's lambda (Niepert et al. 2021, tf-imle DVAE experiment), whose
# gradient is divided by lambda as here.
DEFAULT_LAM = 10.0
# Terms of the gamma series per copy, as torch-imle's SumOfGammaNoiseDistribution.
DEFAULT_TERMS = 10
_EULER_GAMMA = 0.5772156649015329


def _gamma_at_least_one(
  key: jax.Array, alpha: float, shape, dtype, *, buffer: int | None = None
) -> jax.Array:
  """Gamma(alpha, 1) for a static alpha >= 1: Marsaglia & Tsang's rejection sampler.

  Every element draws one candidate (each accepts with probability above 0.95); the
  rejected ones are gathered into a buffer of `buffer` slots (default: an eighth of the
  array, at least 256) that redraws until all its elements have accepted, as often as
  rejected elements remain. Each element's accepted value is an exact Gamma draw, and a
  round of redraws costs a fraction of a whole-array draw.
  """
  d = alpha - 1 / 3
  c = 1 / (9 * d) ** 0.5

  def candidates(key, candidate_shape):
    normal_key, uniform_key = jax.random.split(key)
    x = jax.random.normal(normal_key, candidate_shape, dtype)
    u = jax.random.uniform(uniform_key, candidate_shape, dtype, minval=jnp.finfo(dtype).tiny)
    v = (1 + c * x) ** 3
    log_v = jnp.log(jnp.where(v > 0, v, 1))
    return d * v, (v > 0) & (jnp.log(u) < 0.5 * x * x + d - d * v + d * log_v)

  first_key, rounds_key = jax.random.split(key)
  out, done = candidates(first_key, shape)
  out, done = out.reshape(-1), done.reshape(-1)
  size = out.size
  slots = min(size, buffer or max(256, size // 8))

  def fill(key, out, rows, valid):
    """Candidates for the `rows` until every valid one has accepted."""

    def draw(state):
      key, value, accepted = state
      key, round_key = jax.random.split(key)
      candidate, accept = candidates(round_key, (slots,))
      value = jnp.where(accepted, value, candidate)
      return key, value, accepted | accept

    init = (key, out.at[rows].get(mode="fill", fill_value=0), ~valid)
    return jax.lax.while_loop(lambda s: ~jnp.all(s[2]), draw, init)[1]

  def redraw(state):
    key, out, done = state
    key, fill_key = jax.random.split(key)
    # The first `slots` rejected elements, redrawn in the buffer until all accept; indices
    # past the array fill the rest of the buffer and are dropped.
    (rows,) = jnp.nonzero(~done, size=slots, fill_value=size)
    value = fill(fill_key, out, rows, rows < size)
    return key, out.at[rows].set(value, mode="drop"), done.at[rows].set(True, mode="drop")

  init = (rounds_key, out, done)
  return jax.lax.while_loop(lambda s: ~jnp.all(s[2]), redraw, init)[1].reshape(shape)


def _gamma(key: jax.Array, alpha: float, shape, dtype) -> jax.Array:
  """Gamma(alpha, 1) for a static alpha > 0 (below 1: Gamma(alpha + 1) U^(1 / alpha))."""
  if alpha >= 1:
    return _gamma_at_least_one(key, alpha, shape, dtype)
  gamma_key, uniform_key = jax.random.split(key)
  u = jax.random.uniform(uniform_key, shape, dtype, minval=jnp.finfo(dtype).tiny)
  return _gamma_at_least_one(gamma_key, alpha + 1, shape, dtype) * u ** (1 / alpha)


def sum_of_gamma_core(key: jax.Array, shape, dtype, k: int, terms: int) -> jax.Array:
  """`sum_of_gamma_noise` for a static shape and compute dtype (under `jit`)."""
  series_key, tail_key = jax.random.split(key)
  # The terms lie on the last axis: with them on a leading axis, XLA:CPU (jax 0.10.2) fuses
  # the draw, the division by j and the sum into a kernel that repeats one row's values
  # across rows once a row has about 20,000 entries.
  j = jnp.arange(1, terms + 1, dtype=dtype).reshape((1,) * len(shape) + (terms,))
  series = jnp.sum(_gamma(series_key, 1 / k, (*shape, terms), dtype) / j, axis=-1)
  # The tail -log Gamma(s + 1) shared by k copies, each with the tail's mean / k and its
  # spread / sqrt(k): the k-fold sum has the tail's exact mean and variance.
  digamma = sum(1 / i for i in range(1, terms + 1)) - _EULER_GAMMA  # psi(s + 1)
  log_tail = jnp.log(_gamma(tail_key, terms + 1, shape, dtype))
  return series - (log_tail - digamma) / k**0.5 - digamma / k


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "k", "terms"))
def _sum_of_gamma(key, *, shape, dtype, k, terms):
  return sum_of_gamma_core(key, shape, dtype, k, terms)


def sum_of_gamma_noise(key: ArrayLike, scores, k: int, *, terms: int = DEFAULT_TERMS) -> jax.Array:
  r"""Sum-of-gamma noise: `k` independent copies add up to a standard Gumbel variable.

  A standard Gumbel variable is :math:`G = \sum_{j=1}^{s} E_j / j - \log \Gamma_{s+1}`
  with independent :math:`E_j \sim \mathrm{Exp}(1)` and
  :math:`\Gamma_{s+1} \sim \mathrm{Gamma}(s + 1)` (the top of a Gumbel point process
  written as its first `s` gaps plus its `(s+1)`-th point). Splitting each
  :math:`E_j` into `k` independent :math:`\mathrm{Gamma}(1/k)` parts gives the noise

  .. math::

     \epsilon = \sum_{j=1}^{s} \frac{\gamma_j}{j}
       - \frac{\log \Gamma' - \psi(s+1)}{\sqrt{k}} - \frac{\psi(s+1)}{k}, \qquad
     \gamma_j \sim \mathrm{Gamma}(1/k),\ \Gamma' \sim \mathrm{Gamma}(s + 1),

  the noise of I-MLE's perturb-and-MAP for k-subsets (Niepert et al. 2021, with
  `s = terms`). The sum of `k` independent copies has the series part of `G` exactly and
  the tail term's exact mean :math:`-\psi(s+1)` and variance :math:`\psi'(s+1) \approx
  1/(s+1)`; only the tail's higher cumulants differ from Gumbel's. (torch-imle's version
  subtracts the constant :math:`\log(s)/k` instead, so its k-fold sum misses the tail's
  variance and, by :math:`\psi(s+1) - \log s`, its mean.)

  Args:
    key: a PRNG key.
    scores: `[..., n]` real floating array or `jax.ShapeDtypeStruct`; only its shape and
      dtype are used.
    k: the number of copies that add up to a Gumbel variable (the subset size), a Python
      int >= 1.
    terms: `s`, the terms of the gamma series, a Python int >= 1.

  Returns:
    `[..., n]` noise, float32 (float64 for float64 `scores`).

  Raises:
    TypeError: `key` is not a PRNG key; `scores` is not a real floating array.
    ValueError: `scores` is a scalar; `k` or `terms` is not a Python int >= 1.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> eps = sj.sum_of_gamma_noise(jax.random.key(0), jnp.zeros((4, 3)), 2)
    >>> eps.shape, eps.dtype
    ((4, 3), dtype('float32'))

  References:
    Niepert, Minervini & Franceschi, "Implicit MLE: Backpropagating Through Discrete
    Exponential Family Distributions", NeurIPS 2021; Marsaglia & Tsang, "A simple method
    for generating gamma variables", ACM TOMS 26(3), 2000.
  """
  validation.check_shape_source(scores)
  k = validation.check_positive_int(k, "k")
  terms = validation.check_positive_int(terms, "terms")
  key = validation.check_key(key)
  dtype = validation.compute_dtype(scores.dtype)
  return _sum_of_gamma(key, shape=tuple(scores.shape), dtype=dtype, k=k, terms=terms)


def _map_khot(theta: jax.Array, k: int) -> jax.Array:
  """The k-hot of the `k` largest entries of each row: the MAP state of the k-subset model."""
  return gumbel.khot_core(jax.lax.top_k(theta, k)[1], theta.shape[-1], theta.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _imle(perturbed: jax.Array, lam: jax.Array, k: int) -> jax.Array:
  return _map_khot(perturbed, k)


def _imle_fwd(perturbed, lam, k):
  z = _map_khot(perturbed, k)
  return z, (perturbed, lam, z)


def _imle_bwd(k, residuals, z_bar):
  perturbed, lam, z = residuals
  # The target distribution's MAP state with the same noise: theta + eps - lam * dL/dz.
  # Excluded items (-inf) stay excluded whatever their cotangent.
  target = jnp.where(jnp.isfinite(perturbed), perturbed - lam * z_bar, perturbed)
  return (z - _map_khot(target, k)) / lam, jnp.zeros_like(lam)


_imle.defvjp(_imle_fwd, _imle_bwd)


def imle_core(key, logits, k, lam, noise_temperature, terms):
  """`imle_topk` of checked logits in the compute dtype (under `jit`)."""
  eps = sum_of_gamma_core(key, logits.shape, logits.dtype, k, terms)
  # noise_temperature = 0 is the noise-free MAP state (0 * eps, never 0 * inf: eps is finite).
  perturbed = logits + jax.lax.stop_gradient(noise_temperature * eps)
  out = _imle(perturbed, jnp.asarray(lam, logits.dtype), k)
  return validation.nan_where(validation.bad_rows(logits), out)


@functools.partial(jax.jit, static_argnames=("k", "terms"))
def _imle_jit(key, logits, lam, noise_temperature, *, k, terms):
  dtype = validation.compute_dtype(logits.dtype)
  temperature = jnp.asarray(noise_temperature, dtype)
  return imle_core(key, logits.astype(dtype), k, lam, temperature, terms).astype(logits.dtype)


def imle_topk(
  key: ArrayLike,
  logits: ArrayLike,
  k: int,
  *,
  lam: ArrayLike = DEFAULT_LAM,
  noise_temperature: ArrayLike = 1.0,
  terms: int = DEFAULT_TERMS,
) -> jax.Array:
  r"""I-MLE for k-subsets: the perturbed MAP k-hot forward, a finite-difference backward.

  Forward: :math:`z = \mathrm{MAP}(\theta + \epsilon)`, the k-hot of the `k` largest
  entries of `logits + noise_temperature * eps`, with `eps =
  sum_of_gamma_noise(key, logits, k, terms=terms)` (so that summed over the `k` chosen
  items the noise is about one Gumbel variable). Backward, for the upstream gradient
  :math:`g = \partial L / \partial z`: the target distribution's MAP state with the same
  noise, :math:`z' = \mathrm{MAP}(\theta + \epsilon - \lambda g)`, and

  .. math::

     \nabla_\theta L \approx \frac{z - z'}{\lambda}.

  With `noise_temperature = 0` the forward is the noise-free MAP state and the gradient
  is the finite difference of MAP states.

  Args:
    key: a PRNG key.
    logits: `[..., n]` real floating logits :math:`\theta`; `-inf` excludes an item.
    k: subset size, a Python int with `1 <= k <= n` (static under `jit`).
    lam: :math:`\lambda`, the step to the target distribution, a real scalar > 0; may be
      traced. The default, 10, is the I-MLE paper's discrete-VAE setting (its gradient is
      divided by :math:`\lambda` too).
    noise_temperature: scale of the noise, a real scalar >= 0; may be traced.
    terms: terms of the gamma series, as `sum_of_gamma_noise` (static).

  Returns:
    `[..., n]` k-hot in the dtype of `logits`, differentiable in `logits` (NaN for a row
    with traced NaN or `+inf` logits).

  Raises:
    TypeError: `key` is not a PRNG key; non-floating `logits`; non-int `k`; non-real
      `lam` or `noise_temperature`.
    ValueError: `k` outside `[1, n]`; concrete `lam` not finite and > 0; concrete
      `noise_temperature` not finite and >= 0; concrete `logits` with NaN, `+inf` or
      fewer than `k` finite entries in a row.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> theta = jnp.array([0., 1., 2., 3.])
    >>> sj.imle_topk(jax.random.key(0), theta, 2, noise_temperature=0.0)
    Array([0., 0., 1., 1.], dtype=float32)
    >>> c = jnp.array([0., 0., 0., 1.])  # a loss c . z: item 3 is costly
    >>> jax.grad(lambda t: c @ sj.imle_topk(jax.random.key(0), t, 2, lam=4.0,
    ...                                     noise_temperature=0.0))(theta)
    Array([ 0.  , -0.25,  0.  ,  0.25], dtype=float32)

  References:
    Niepert, Minervini & Franceschi, "Implicit MLE: Backpropagating Through Discrete
    Exponential Family Distributions", NeurIPS 2021; Minervini, Franceschi & Niepert,
    "Adaptive Perturbation-Based Gradient Estimation for Discrete Latent Variable
    Models", AAAI 2023.
  """
  logits = validation.check_scores(logits, name="logits")
  k = validation.check_k(k, logits.shape[-1])
  validation.check_enough_finite(logits, k, name="logits")
  lam = validation.check_tau(lam, name="lam")
  noise_temperature = validation.check_tau(
    noise_temperature, name="noise_temperature", allow_zero=True
  )
  terms = validation.check_positive_int(terms, "terms")
  key = validation.check_key(key)
  return _imle_jit(key, logits, lam, noise_temperature, k=k, terms=terms)
