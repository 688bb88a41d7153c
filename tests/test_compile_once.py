"""Every public function compiles once per shape, dtype and static arguments.

A second identical eager call, and a second eager gradient, must compile nothing: the
counter listens to JAX's backend-compile events.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

import subsets_jax as sj

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_counting = []


def _listener(event, duration, **kwargs):
  if event == _COMPILE_EVENT:
    for counter in _counting:
      counter.append(event)


monitoring.register_event_duration_secs_listener(_listener)


@contextlib.contextmanager
def count_compiles():
  counter = []
  _counting.append(counter)
  try:
    yield counter
  finally:
    _counting.remove(counter)


_KEY = jax.random.key(0)
_S = jnp.log(jnp.arange(1.0, 11.0)).reshape(2, 5)
_IDX = jnp.array([[4, 2], [0, 1]])
_Q, _X = jnp.linspace(0, 1, 12).reshape(4, 3), jnp.linspace(1, 0, 18).reshape(6, 3)
_QL, _XL = jnp.array([0, 1, 0, 1]), jnp.array([0, 1, 1, 0, 1, 0])

# name -> (a call of the public function, a scalar function of a float array to differentiate)
CALLS = {
  "gumbel_noise": (lambda: sj.gumbel_noise(_KEY, _S), None),
  "gumbel_topk": (lambda: sj.gumbel_topk(_KEY, _S, 2), None),
  "khot": (lambda: sj.khot(_IDX, 5), None),
  "soft_topk": (
    lambda: sj.soft_topk(_S, 2, 0.5),
    lambda s: jnp.sum(sj.soft_topk(s, 2, 0.5)[:, 0]),
  ),
  "soft_topk_autodiff": (
    lambda: sj.soft_topk(_S, 2, 0.5, vjp="autodiff"),
    lambda s: jnp.sum(sj.soft_topk(s, 2, 0.5, vjp="autodiff")[:, 0]),
  ),
  "gumbel_topk_relaxed": (
    lambda: sj.gumbel_topk_relaxed(_KEY, _S, 2, 0.5),
    lambda s: jnp.sum(sj.gumbel_topk_relaxed(_KEY, s, 2, 0.5)[:, 0]),
  ),
  "gumbel_topk_relaxed_hard": (
    lambda: sj.gumbel_topk_relaxed(_KEY, _S, 2, 0.5, hard=True),
    lambda s: jnp.sum(sj.gumbel_topk_relaxed(_KEY, s, 2, 0.5, hard=True)[:, 0]),
  ),
  "subset_log_prob": (
    lambda: sj.subset_log_prob(_S, _IDX),
    lambda s: jnp.sum(sj.subset_log_prob(s, _IDX)),
  ),
  "unordered_subset_log_prob": (
    lambda: sj.unordered_subset_log_prob(_S, _IDX),
    lambda s: jnp.sum(sj.unordered_subset_log_prob(s, _IDX)),
  ),
  "pairwise_sq_distances": (
    lambda: sj.pairwise_sq_distances(_Q, _X),
    lambda q: jnp.sum(sj.pairwise_sq_distances(q, _X)),
  ),
  "dknn_loss": (
    lambda: sj.dknn_loss(_KEY, _Q, _X, _QL, _XL, k=2, tau=1.0, num_samples=2),
    lambda q: sj.dknn_loss(_KEY, q, _X, _QL, _XL, k=2, tau=1.0, num_samples=2),
  ),
  "knn_predict": (lambda: sj.knn_predict(_Q, _X, _XL, k=3, num_classes=2), None),
  "inclusion_probs": (
    lambda: sj.inclusion_probs(_S, 2),
    lambda s: jnp.sum(sj.inclusion_probs(s, 2)[:, 0]),
  ),
  "exactly_k_log_partition": (
    lambda: sj.exactly_k_log_partition(_S, 2),
    lambda s: jnp.sum(sj.exactly_k_log_partition(s, 2)),
  ),
  "exactly_k_marginals": (
    lambda: sj.exactly_k_marginals(_S, 2),
    lambda s: jnp.sum(sj.exactly_k_marginals(s, 2)[:, 0]),
  ),
  "exactly_k_log_prob": (
    lambda: sj.exactly_k_log_prob(_S, _IDX),
    lambda s: jnp.sum(sj.exactly_k_log_prob(s, _IDX)),
  ),
  "exactly_k_sample": (lambda: sj.exactly_k_sample(_KEY, _S, 2), None),
  "simple_topk": (
    lambda: sj.simple_topk(_KEY, _S, 2),
    lambda s: jnp.sum(sj.simple_topk(_KEY, s, 2)[:, 0]),
  ),
  "dknn_loss_simple": (
    lambda: sj.dknn_loss(_KEY, _Q, _X, _QL, _XL, k=2, tau=1.0, estimator="simple"),
    lambda q: sj.dknn_loss(_KEY, q, _X, _QL, _XL, k=2, tau=1.0, estimator="simple"),
  ),
  "exactly_k_entropy": (
    lambda: sj.exactly_k_entropy(_S, 2),
    lambda s: jnp.sum(sj.exactly_k_entropy(s, 2)),
  ),
  "sum_of_gamma_noise": (lambda: sj.sum_of_gamma_noise(_KEY, _S, 2), None),
  "imle_topk": (
    lambda: sj.imle_topk(_KEY, _S, 2),
    lambda s: jnp.sum(sj.imle_topk(_KEY, s, 2)[:, 0] * jnp.arange(2.0)),
  ),
  "l2x_relaxed": (
    lambda: sj.l2x_relaxed(_KEY, _S, 2),
    lambda s: jnp.sum(sj.l2x_relaxed(_KEY, s, 2)[:, 0]),
  ),
  "dknn_loss_score_function": (
    lambda: sj.dknn_loss(
      _KEY, _Q, _X, _QL, _XL, k=2, tau=1.0, num_samples=2, estimator="score_function"
    ),
    lambda q: sj.dknn_loss(
      _KEY, q, _X, _QL, _XL, k=2, tau=1.0, num_samples=2, estimator="score_function"
    ),
  ),
}


def _row_loss(z):
  target = jnp.broadcast_to(jnp.array([1.0, 0.0, 1.0, 0.0, 0.0]), z.shape)
  return jnp.sum((z - target) ** 2, axis=-1)


# One entry per estimator (and family): the same `f` object, so a second call hits the cache.
for _name in sj.ESTIMATORS:
  _families = sj.FAMILIES if _name == "score_function" else (None,)
  for _family in _families:
    _kw = dict(estimator=_name, family=_family, num_samples=2 if _family else 1)
    _label = f"expectation_{_name}" + (f"_{_family}" if _family else "")
    CALLS[_label] = (
      lambda kw=_kw: sj.expectation(_row_loss, _KEY, _S, 2, tau=0.5, **kw),
      lambda s, kw=_kw: jnp.sum(sj.expectation(_row_loss, _KEY, s, 2, tau=0.5, **kw)),
    )
_GRAD_INPUT = {
  "pairwise_sq_distances": _Q,
  "dknn_loss": _Q,
  "dknn_loss_simple": _Q,
  "dknn_loss_score_function": _Q,
}


def test_every_public_function_is_covered():
  suffixes = ("_autodiff", "_hard", "_simple", "_score_function")
  names = {next((n[: -len(x)] for x in suffixes if n.endswith(x)), n) for n in CALLS}
  names = {"expectation" if n.startswith("expectation_") else n for n in names}
  functions = {name for name in sj.__all__ if callable(getattr(sj, name))}
  assert names == functions
  assert {n for n in CALLS if n.startswith("expectation_")} == {
    f"expectation_{e}" for e in sj.ESTIMATORS if e != "score_function"
  } | {f"expectation_score_function_{f}" for f in sj.FAMILIES}


def test_a_new_lam_or_noise_temperature_compiles_nothing():
  jax.block_until_ready(sj.imle_topk(_KEY, _S, 2, lam=1.0, noise_temperature=0.5))
  with count_compiles() as counter:
    jax.block_until_ready(sj.imle_topk(_KEY, _S, 2, lam=3.0, noise_temperature=2.0))
  assert counter == []


@pytest.mark.parametrize("name", sorted(CALLS))
def test_second_eager_call_compiles_nothing(name):
  call, _ = CALLS[name]
  # Other tests may have compiled the same shapes: start cold, so the first call must compile.
  jax.clear_caches()
  with count_compiles() as first:
    jax.block_until_ready(call())
  assert first, "the counter saw no compilation on the first call"
  with count_compiles() as second:
    jax.block_until_ready(call())
  assert second == []


@pytest.mark.parametrize("name", sorted(n for n, (_, f) in CALLS.items() if f is not None))
def test_second_eager_gradient_compiles_nothing(name):
  _, fn = CALLS[name]
  x = _GRAD_INPUT.get(name, _S)
  grad = jax.grad(fn)
  first = np.asarray(grad(x))
  with count_compiles() as second:
    again = np.asarray(grad(x))
  assert second == []
  np.testing.assert_array_equal(first, again)


def test_a_new_tau_value_compiles_nothing():
  jax.block_until_ready(sj.gumbel_topk_relaxed(_KEY, _S, 2, 0.25))
  with count_compiles() as counter:
    jax.block_until_ready(sj.gumbel_topk_relaxed(_KEY, _S, 2, 0.75))
  assert counter == []
