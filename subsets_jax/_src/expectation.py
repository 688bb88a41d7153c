"""Monte-Carlo expectations over k-subsets, with every gradient estimator behind one call."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from subsets_jax._src import exactly_k, gumbel, imle, l2x, log_prob, relaxed_topk, validation

# The estimators of `expectation` (and of `dknn_loss`), and the families of "score_function".
ESTIMATORS = ("relaxed", "straight_through", "simple", "imle", "score_function", "l2x")
FAMILIES = ("gumbel_topk", "exactly_k")


def _estimate(estimator, key, scores, k, tau, lam, noise_temperature, vjp):
  """One differentiable k-hot draw of a pathwise estimator, in the compute dtype of `scores`."""
  if estimator in ("relaxed", "straight_through"):
    hard = estimator == "straight_through"
    return relaxed_topk.relaxed_sample(key, scores, tau, k, hard, vjp, scores.dtype)
  if estimator == "simple":
    return exactly_k.simple_core(key, scores, k)
  if estimator == "imle":
    return imle.imle_core(key, scores, k, lam, noise_temperature, imle.DEFAULT_TERMS)
  return l2x.l2x_core(key, scores, k, tau)


def _sample_with_log_prob(family, key, scores, k):
  """An exact sample of `family` (a k-hot without gradient) and its differentiable log p."""
  if family == "gumbel_topk":
    indices = jax.lax.top_k(gumbel.perturb(key, scores, scores.dtype), k)[1]
    log_p = log_prob.unordered_log_prob_core(scores, indices)
  else:
    indices = exactly_k.mask_to_indices(exactly_k.sample_core(key, scores, k), k)
    log_p = exactly_k.log_prob_core(scores, indices)
  khot = gumbel.khot_core(indices, scores.shape[-1], scores.dtype)
  return khot, log_p


def _score_function(f, keys, scores, k, family):
  """The mean of f over the draws; its gradient, the score function with a leave-one-out
  baseline: (1 / T) sum_t (f_t - mean of the other f) grad log p(S_t)."""

  def one(draw_key):
    khot, log_p = _sample_with_log_prob(family, draw_key, scores, k)
    return f(khot), log_p

  values, log_p = jax.vmap(one)(keys)  # [T, *out], [T, *batch]
  if values.ndim == 1:  # one scalar per draw: it depends on every row's sample
    log_p = jnp.sum(log_p.reshape(log_p.shape[0], -1), axis=-1)
  count = values.shape[0]
  baseline = (jnp.sum(values, axis=0, keepdims=True) - values) / (count - 1)
  advantage = jax.lax.stop_gradient(values - baseline)
  # The surrogate's value is f itself (x - x is exactly 0); its gradient adds the score term.
  surrogate = values + advantage * (log_p - jax.lax.stop_gradient(log_p))
  return jnp.mean(surrogate, axis=0)


def expectation_core(
  f, key, scores, k, *, estimator, num_samples, tau, family, lam, noise_temperature, vjp
):
  """`expectation` of checked arguments, `scores` in the compute dtype (under `jit`)."""
  keys = jax.random.split(key, num_samples)
  if estimator == "score_function":
    return _score_function(f, keys, scores, k, family or "gumbel_topk")

  def one(draw_key):
    return f(_estimate(estimator, draw_key, scores, k, tau, lam, noise_temperature, vjp))

  return jnp.mean(jax.vmap(one)(keys), axis=0)


@functools.partial(jax.jit, static_argnames=("f", "k", "estimator", "num_samples", "family", "vjp"))
def _expectation_jit(key, scores, tau, lam, noise_temperature, *, f, k, **static):
  dtype = validation.compute_dtype(scores.dtype)
  wrapped = lambda z: f(z.astype(scores.dtype))
  value = expectation_core(
    wrapped,
    key,
    scores.astype(dtype),
    k,
    tau=jnp.asarray(tau, dtype),
    lam=jnp.asarray(lam, dtype),
    noise_temperature=jnp.asarray(noise_temperature, dtype),
    **static,
  )
  bad = validation.bad_rows(scores)[..., 0]
  return validation.nan_where(jnp.any(bad) if value.ndim == 0 else bad, value)


def check_estimator(estimator, family=None, num_samples: int = 1) -> None:
  """The estimator name, the family it uses and its number of samples."""
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}.")
  if family is not None:
    if family not in FAMILIES:
      raise ValueError(f"family must be one of {FAMILIES} or None; got {family!r}.")
    if estimator != "score_function":
      raise ValueError(
        f"family applies to estimator 'score_function' only; estimator {estimator!r} has "
        "its own family (leave family=None)."
      )
  if estimator == "score_function" and num_samples < 2:
    raise ValueError(
      "estimator 'score_function' needs num_samples >= 2 (each draw's baseline is the mean "
      f"of the others); got num_samples={num_samples}."
    )


def _check_output(f, scores: jax.Array) -> None:
  if not callable(f):
    raise TypeError(f"f must be a callable of a k-hot array; got {type(f).__name__}.")
  out = jax.eval_shape(f, jax.ShapeDtypeStruct(scores.shape, scores.dtype))
  batch = scores.shape[:-1]
  if not hasattr(out, "shape") or out.shape not in ((), batch):
    got = getattr(out, "shape", type(out).__name__)
    raise ValueError(
      f"f must map an array of shape {scores.shape} to a scalar or to shape {batch} (one "
      f"value per row); got {got}."
    )
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise TypeError(f"f must return a real floating value; got dtype {out.dtype}.")


def expectation(
  f: Callable[[jax.Array], jax.Array],
  key: ArrayLike,
  scores: ArrayLike,
  k: int,
  *,
  estimator: str,
  num_samples: int = 1,
  tau: ArrayLike = 1.0,
  family: str | None = None,
  lam: ArrayLike = imle.DEFAULT_LAM,
  noise_temperature: ArrayLike = 1.0,
) -> jax.Array:
  r"""Monte-Carlo estimate of :math:`\mathbb{E}_S[f(\text{k-hot}(S))]` with a chosen gradient.

  The value is the mean of `f` over `num_samples` draws (keys `jax.random.split(key,
  num_samples)`, computed with `jax.vmap`); its gradient with respect to `scores`, and to
  whatever `f` closes over, is the chosen estimator's:

  ======================  ==============  ===============================================
  estimator               draws from      f is evaluated at / gradient
  ======================  ==============  ===============================================
  ``"relaxed"``           Gumbel-top-k    `gumbel_topk_relaxed(key, scores, k, tau)`;
                                          pathwise (Xie & Ermon 2019)
  ``"straight_through"``  Gumbel-top-k    the exact k-hot; the relaxed gradient
  ``"simple"``            exactly-k       the exact k-hot; the gradient of the exact
                                          marginals (`simple_topk`, Ahmed et al. 2023)
  ``"imle"``              perturbed MAP   `imle_topk(key, scores, k, lam=lam,
                                          noise_temperature=noise_temperature)`
  ``"score_function"``    `family`        the exact k-hot; :math:`\frac{1}{T} \sum_t
                                          (f_t - b_t) \nabla \log p(S_t)` with the
                                          leave-one-out baseline :math:`b_t` (Kool et al.
                                          2019), unbiased
  ``"l2x"``               k categoricals  `l2x_relaxed(key, scores, k, tau)` (Chen et al.
                                          2018)
  ======================  ==============  ===============================================

  `family` ("gumbel_topk", the default, or "exactly_k") is the distribution that
  "score_function" samples, with log-likelihoods from `unordered_subset_log_prob` and
  `exactly_k_log_prob`. For "simple", "imle" and "score_function" with "exactly_k", the
  scores are the exactly-k logits; `tau` is read by "relaxed", "straight_through" and
  "l2x" only, `lam` and `noise_temperature` by "imle" only.

  `f` maps an array shaped like `scores` (in its dtype) to a scalar or to one value per
  row, `scores.shape[:-1]`; it is traced with `jax.vmap` over the draws. With per-row
  values, each row's log-likelihood multiplies its own value in "score_function" (the
  rows are independent), which gives it a lower variance than a scalar sum.

  Args:
    f: a JAX-traceable function of a `[..., n]` k-hot (relaxed for "relaxed" and "l2x");
      static under `jit` (a new function object compiles anew).
    key: a PRNG key.
    scores: `[..., n]` real floating log-weights / logits; `-inf` excludes an item.
    k: subset size, a Python int with `1 <= k <= n` (static).
    estimator: one of "relaxed", "straight_through", "simple", "imle",
      "score_function", "l2x" (static).
    num_samples: draws, a Python int >= 1 (>= 2 for "score_function") (static).
    tau: temperature of "relaxed", "straight_through" and "l2x", a real scalar > 0; may
      be traced.
    family: "gumbel_topk" or "exactly_k" for "score_function"; None: "gumbel_topk".
    lam: I-MLE's :math:`\lambda`, a real scalar > 0 (as `imle_topk`); may be traced.
    noise_temperature: I-MLE's noise scale, a real scalar >= 0; may be traced.

  Returns:
    The estimate, with the shape and dtype of `f`'s output (a scalar, or one value per
    row); NaN where a traced row of `scores` holds NaN or `+inf` (every value for a scalar
    `f`).

  Raises:
    TypeError: `f` not callable or not returning a real floating value; `key` not a PRNG
      key; non-floating `scores`; non-int `k`; non-real `tau`, `lam`,
      `noise_temperature`.
    ValueError: an unknown `estimator` or `family`; a `family` with an estimator other
      than "score_function"; "score_function" with `num_samples < 2`; an `f` whose
      output has another shape; `k` outside `[1, n]`; concrete `tau` or `lam` not finite
      and > 0; concrete `scores` with NaN, `+inf` or fewer than `k` finite entries.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import subsets_jax as sj
    >>> b = jnp.array([1., 0., 1., 0.])
    >>> f = lambda z: jnp.sum((z - b) ** 2)
    >>> def objective(theta, estimator, **kw):
    ...   return sj.expectation(f, jax.random.key(0), theta, 2, estimator=estimator, **kw)
    >>> theta = jnp.zeros(4)
    >>> g = jax.grad(objective)(theta, "score_function", num_samples=4, family="exactly_k")
    >>> g.shape
    (4,)
    >>> # I-MLE without noise: f at the MAP state {0, 1} is 2; its gradient is (z - z') / lam.
    >>> theta = jnp.array([2., 1., 0., -1.])
    >>> float(objective(theta, "imle", noise_temperature=0.0))
    2.0

  References:
    Xie & Ermon, IJCAI 2019; Ahmed, Zeng, Niepert & Van den Broeck, ICLR 2023; Niepert,
    Minervini & Franceschi, NeurIPS 2021; Kool, van Hoof & Welling, "Buy 4 REINFORCE
    Samples, Get a Baseline for Free!", ICLR Workshops 2019; Chen, Song, Wainwright &
    Jordan, ICML 2018.
  """
  num_samples = validation.check_positive_int(num_samples, "num_samples")
  check_estimator(estimator, family, num_samples)
  scores = validation.check_scores(scores)
  k = validation.check_k(k, scores.shape[-1])
  validation.check_enough_finite(scores, k)
  tau = validation.check_tau(tau)
  lam = validation.check_tau(lam, name="lam")
  noise_temperature = validation.check_tau(
    noise_temperature, name="noise_temperature", allow_zero=True
  )
  key = validation.check_key(key)
  _check_output(f, scores)
  return _expectation_jit(
    key,
    scores,
    tau,
    lam,
    noise_temperature,
    f=f,
    k=k,
    estimator=estimator,
    num_samples=num_samples,
    family=family,
    vjp="recompute",
  )
