"""`expectation`: Monte-Carlo values and gradients against float64 NumPy enumeration, per-row
outputs, gradients to what `f` closes over, composition with jit / vmap, errors and NaN rows."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import subsets_jax as sj
from tests import reference

N, K = 5, 2
THETA = np.array([1.2, 0.4, 0.0, -0.5, -1.1])
B = np.array([1.0, 0.0, 1.0, 0.0, 0.0])
D = np.array([0.5, -1.0, 2.0, 0.3, -0.7])
C = np.array([1.0, -2.0, 0.5, 3.0, -1.5])


def _f_numpy(z):
  z = np.asarray(z, np.float64)
  return float(np.sum((z - B) ** 2) + np.dot(D, z) ** 2)


def _f_jax(z):
  return jnp.sum((z - B) ** 2) + jnp.sum(D * z) ** 2


def _khot(s, n=N):
  z = np.zeros(n)
  z[list(s)] = 1.0
  return z


def _set_probs(theta, k, family):
  """float64 NumPy: every k-set and its probability under `family`."""
  theta = np.asarray(theta, np.float64)
  sets = reference.all_sets(len(theta), k)
  if family == "exactly_k":
    w = np.array([np.exp(theta[list(s)].sum()) for s in sets])
    return sets, w / w.sum()
  w = np.exp(theta)
  probs = np.array(
    [
      sum(reference.ordered_prob_numpy(w, order) for order in itertools.permutations(s))
      for s in sets
    ]
  )
  return sets, probs


def _exact_value(theta, k, family, f=_f_numpy):
  sets, probs = _set_probs(theta, k, family)
  return float(sum(p * f(_khot(s, len(theta))) for s, p in zip(sets, probs, strict=True)))


def _exact_grad(theta, k, family, f=_f_numpy, h=1e-6):
  """Central finite differences of the enumerated expectation (float64)."""
  theta = np.asarray(theta, np.float64)
  grad = np.zeros_like(theta)
  for i in range(len(theta)):
    e = np.zeros_like(theta)
    e[i] = h
    grad[i] = (_exact_value(theta + e, k, family, f) - _exact_value(theta - e, k, family, f)) / (
      2 * h
    )
  return grad


def _covariance_grad(theta, k, c):
  """float64 analytic gradient of sum_S p(S) c.1_S for exactly-k: Cov_p(1_S) c."""
  sets, probs = _set_probs(theta, k, "exactly_k")
  z = np.array([_khot(s, len(theta)) for s in sets])
  mu = probs @ z
  cov = (z - mu).T @ ((z - mu) * probs[:, None])
  return cov @ np.asarray(c, np.float64)


def test_enumeration_references_agree():
  # The two float64 references of the exactly-k gradient (FD and covariance) agree.
  fd = _exact_grad(THETA, K, "exactly_k", lambda z: float(np.dot(C, z)))
  np.testing.assert_allclose(fd, _covariance_grad(THETA, K, C), atol=1e-8)
  for family in sj.FAMILIES:
    assert abs(_set_probs(THETA, K, family)[1].sum() - 1) < 1e-12


# --- 1. Values: the mean over keys matches the exact expectation of the estimator's family.

VALUE_CASES = [
  ("straight_through", None, 1, "gumbel_topk"),
  ("simple", None, 1, "exactly_k"),
  ("score_function", None, 2, "gumbel_topk"),
  ("score_function", "gumbel_topk", 2, "gumbel_topk"),
  ("score_function", "exactly_k", 2, "exactly_k"),
]


@pytest.mark.parametrize("estimator,family,num_samples,law", VALUE_CASES)
def test_value_mean_matches_enumeration(estimator, family, num_samples, law, key, x64):
  count = 4000
  theta = jnp.asarray(THETA)
  keys = jax.random.split(key, count)
  values = jax.vmap(
    lambda kk: sj.expectation(
      _f_jax, kk, theta, K, estimator=estimator, family=family, num_samples=num_samples
    )
  )(keys)
  values = np.asarray(values, np.float64)
  assert values.shape == (count,)
  se = values.std(ddof=1) / np.sqrt(count)
  exact = _exact_value(THETA, K, law)
  assert abs(values.mean() - exact) < 5 * se, (values.mean(), exact, se)
  # The check can fail: the expectation under the reversed scores is far outside the tolerance.
  assert abs(values.mean() - _exact_value(-THETA, K, law)) > 10 * se


# --- 2. The score function is unbiased for the gradient of E_p[f].


def _score_function_grads(key, family, count, num_samples, theta=THETA):
  theta = jnp.asarray(theta)

  def grad_one(kk):
    return jax.grad(
      lambda s: sj.expectation(
        _f_jax, kk, s, K, estimator="score_function", family=family, num_samples=num_samples
      )
    )(theta)

  return np.asarray(jax.vmap(grad_one)(jax.random.split(key, count)), np.float64)


@pytest.mark.parametrize("family", sj.FAMILIES)
def test_score_function_gradient_is_unbiased(family, key, x64):
  count = 4000
  grads = _score_function_grads(key, family, count, 4)
  assert grads.shape == (count, N)
  mean = grads.mean(axis=0)
  se = grads.std(axis=0, ddof=1) / np.sqrt(count)
  exact = _exact_grad(THETA, K, family)
  assert np.all(np.abs(mean - exact) <= 5 * se + 1e-9), (mean, exact, se)
  if family == "exactly_k":
    # Analytic: sum_S p(S) f(S) (1_S - mu).
    sets, probs = _set_probs(THETA, K, family)
    z = np.array([_khot(s) for s in sets])
    values = np.array([_f_numpy(r) for r in z])
    analytic = ((z - probs @ z) * (probs * values)[:, None]).sum(axis=0)
    np.testing.assert_allclose(exact, analytic, atol=1e-7)
  # The other family's gradient differs: the same mean is far outside its tolerance.
  other = _exact_grad(THETA, K, "exactly_k" if family == "gumbel_topk" else "gumbel_topk")
  assert np.max(np.abs(mean - other) / (se + 1e-9)) > 6


# --- 3. SIMPLE's gradient is exact for a linear f.


@pytest.mark.parametrize("seed", [0, 7])
def test_simple_gradient_exact_for_linear_f(seed, x64):
  c = jnp.asarray(C)
  f = lambda z: jnp.sum(c * z)
  grad = jax.grad(lambda s: sj.expectation(f, jax.random.key(seed), s, K, estimator="simple"))(
    jnp.asarray(THETA)
  )
  np.testing.assert_allclose(grad, _covariance_grad(THETA, K, C), rtol=0, atol=1e-10)
  # Not the Gumbel-top-k law's gradient (so the check can fail).
  pl = _exact_grad(THETA, K, "gumbel_topk", lambda z: float(np.dot(C, z)))
  assert np.max(np.abs(np.asarray(grad) - pl)) > 1e-3


# --- 4. Per-row outputs.


@pytest.mark.parametrize("estimator", ["relaxed", "simple", "score_function"])
def test_per_row_output_shape(estimator, key, rng):
  scores = jnp.asarray(rng.normal(size=(3, N)), jnp.float32)
  f = lambda z: jnp.sum(z * jnp.asarray(C, jnp.float32)[None, :], axis=-1)
  num_samples = 3 if estimator == "score_function" else 1
  value = sj.expectation(f, key, scores, K, estimator=estimator, num_samples=num_samples)
  assert value.shape == (3,)
  assert value.dtype == jnp.float32
  assert np.all(np.isfinite(value))
  grad = jax.grad(
    lambda s: jnp.sum(sj.expectation(f, key, s, K, estimator=estimator, num_samples=num_samples))
  )(scores)
  assert grad.shape == (3, N)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("family", sj.FAMILIES)
def test_score_function_rows_use_their_own_log_likelihood(family, key, x64):
  scores = jnp.asarray(np.stack([np.zeros(N), THETA, -THETA]))  # row 0 uniform: varied draws
  row0 = lambda z: _f_jax(z[0])

  def grad(f):
    return np.asarray(
      jax.grad(
        lambda s: jnp.sum(
          sj.expectation(f, key, s, K, estimator="score_function", family=family, num_samples=8)
        )
      )(scores)
    )

  per_row = grad(lambda z: jnp.stack([row0(z), 0.0 * z[1, 0], 0.0 * z[2, 0]]))
  assert np.all(per_row[1:] == 0.0)
  assert np.any(per_row[0] != 0.0)
  if family == "exactly_k":
    return  # the scalar contrast below, once (it compiles again)
  # A scalar f depends on every row's draw: every row's log-likelihood carries it.
  scalar = grad(row0)
  np.testing.assert_allclose(scalar[0], per_row[0], rtol=1e-12, atol=1e-12)
  assert np.any(scalar[1] != 0.0) and np.any(scalar[2] != 0.0)


# --- 5. Gradients to the parameters f closes over.


@pytest.mark.parametrize("estimator", sj.ESTIMATORS)
def test_gradient_to_closed_over_parameter(estimator, key, x64):
  c = jnp.asarray(C)
  theta = jnp.asarray(THETA)
  num_samples = 3 if estimator == "score_function" else 2

  def objective(w):
    f = lambda z: w * jnp.sum(z * c)
    return sj.expectation(f, key, theta, K, estimator=estimator, num_samples=num_samples)

  w = 1.7
  value, grad = jax.value_and_grad(objective)(w)
  assert abs(float(value)) > 1e-3
  np.testing.assert_allclose(grad, value / w, rtol=1e-12)


# --- 6. Composition with jit and vmap.


@pytest.mark.parametrize("estimator", ["relaxed", "straight_through"])
def test_jit_with_traced_tau_matches_eager(estimator, key):
  scores = jnp.asarray(THETA, jnp.float32)
  c = jnp.asarray(C, jnp.float32)
  f = lambda z: jnp.sum((z - c) ** 2)
  call = lambda s, tau: sj.expectation(f, key, s, K, estimator=estimator, num_samples=4, tau=tau)
  jitted = jax.jit(call)
  for tau in (0.5, 2.0):
    np.testing.assert_allclose(jitted(scores, tau), call(scores, tau), rtol=1e-6)
  # Gradients under jit match the eager ones too.
  g_eager = jax.grad(call)(scores, 0.5)
  g_jit = jax.jit(jax.grad(call))(scores, 0.5)
  np.testing.assert_allclose(g_jit, g_eager, rtol=1e-5, atol=1e-6)
  assert np.any(np.asarray(g_eager) != 0.0)
  # The temperature changes the relaxed values: tau is read, not ignored.
  if estimator != "straight_through":
    assert float(jitted(scores, 0.5)) != float(jitted(scores, 2.0))


def test_traced_tau_does_not_recompile(key):
  scores = jnp.asarray(THETA, jnp.float32)
  f = lambda z: jnp.sum(z * z)
  cache = sj._src.expectation._expectation_jit
  sj.expectation(f, key, scores, K, estimator="relaxed", tau=0.5)
  before = cache._cache_size()
  for tau in (0.7, 1.3, 2.0):
    sj.expectation(f, key, scores, K, estimator="relaxed", tau=tau)
  assert cache._cache_size() == before


@pytest.mark.parametrize("estimator", ["straight_through", "simple", "score_function"])
def test_vmap_over_keys_matches_loop(estimator, key):
  scores = jnp.asarray(THETA, jnp.float32)
  f = lambda z: jnp.sum(z * jnp.asarray(C, jnp.float32))
  num_samples = 2
  keys = jax.random.split(key, 3)
  call = lambda kk: sj.expectation(f, kk, scores, K, estimator=estimator, num_samples=num_samples)
  batched = jax.vmap(call)(keys)
  looped = jnp.stack([call(kk) for kk in keys])
  np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-6)


# --- 7. Errors.


def _ok(z):
  return jnp.sum(z)


@pytest.mark.parametrize(
  "kwargs,error,match",
  [
    ({"estimator": "reinforce"}, ValueError, "estimator must be one of"),
    (
      {"estimator": "score_function", "num_samples": 2, "family": "pl"},
      ValueError,
      "family must be one of",
    ),
    (
      {"estimator": "relaxed", "family": "gumbel_topk"},
      ValueError,
      "family applies to estimator 'score_function' only",
    ),
    ({"estimator": "score_function"}, ValueError, "num_samples >= 2"),
    ({"estimator": "imle", "lam": 0.0}, ValueError, "lam must be finite and > 0"),
    (
      {"estimator": "imle", "noise_temperature": -1.0},
      ValueError,
      "noise_temperature must be finite and >= 0",
    ),
    ({"estimator": "relaxed", "tau": 0.0}, ValueError, "tau must be finite and > 0"),
    ({"estimator": "simple", "num_samples": 0}, ValueError, "num_samples must be"),
  ],
)
def test_bad_arguments_raise(kwargs, error, match, key):
  with pytest.raises(error, match=match):
    sj.expectation(_ok, key, jnp.zeros(N), K, **kwargs)


@pytest.mark.parametrize(
  "f,error,match",
  [
    (lambda z: z, ValueError, "f must map"),
    (lambda z: z[0], ValueError, "f must map"),
    ("not a function", TypeError, "f must be a callable"),
    (lambda z: jnp.sum(z).astype(jnp.int32), TypeError, "f must return a real floating"),
  ],
)
def test_bad_f_raises(f, error, match, key):
  with pytest.raises(error, match=match):
    sj.expectation(f, key, jnp.zeros((2, N)), K, estimator="straight_through")


def test_good_f_shapes_pass(key):
  # The checks above can fail: the valid shapes pass for the same scores.
  scores = jnp.zeros((2, N))
  assert sj.expectation(_ok, key, scores, K, estimator="straight_through").shape == ()
  f = lambda z: jnp.sum(z, axis=-1)
  assert sj.expectation(f, key, scores, K, estimator="straight_through").shape == (2,)


# --- 8. NaN rule under jit.


@pytest.mark.parametrize(
  "estimator,bad",
  [(e, np.nan) for e in sj.ESTIMATORS] + [("straight_through", np.inf), ("simple", np.inf)],
)
def test_nan_row_under_jit(estimator, bad, key):
  scores = np.stack([THETA, THETA[::-1], THETA * 0.5]).astype(np.float32)
  scores[1, 2] = bad
  num_samples = 2 if estimator == "score_function" else 1
  c = jnp.asarray(C, jnp.float32)
  per_row = lambda z: jnp.sum(z * c[None, :], axis=-1)
  scalar = lambda z: jnp.sum(z * c[None, :])
  call = lambda s, f: sj.expectation(f, key, s, K, estimator=estimator, num_samples=num_samples)
  value = np.asarray(jax.jit(lambda s: call(s, per_row))(jnp.asarray(scores)))
  assert value.shape == (3,)
  assert np.isnan(value[1])
  assert np.all(np.isfinite(value[[0, 2]]))
  assert np.isnan(jax.jit(lambda s: call(s, scalar))(jnp.asarray(scores)))
