"""`implementation="cpu_kernel"` (the fused C++ CPU kernel) against XLA, NumPy and float64."""

import os
import pathlib
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import subsets_jax as sj
from subsets_jax._src import cpu_kernel
from tests import reference

# The kernel is compiled with the machine's C++ compiler; without one it cannot run (the
# reason is printed in the summary, `-ra`).
pytestmark = pytest.mark.skipif(cpu_kernel.compiler() is None, reason="no C++ compiler")
KERNEL = {"implementation": "cpu_kernel"}


def _scores(rng, rows, n):
  scores = reference.hard_rows(rng, rows, n)
  scores[3, :4] = scores[3, 4] + 3.0  # a four-way tie at the top
  return scores


def _errors(ours, lib, exact):
  """Max abs errors of `ours` and `lib` against `exact`, and the scale of `exact`."""
  exact = np.asarray(exact, np.float64)
  err = lambda x: float(np.abs(np.asarray(x, np.float64) - exact).max())
  return err(ours), err(lib), float(np.abs(exact).max())


def _assert_as_accurate_as_xla(scores, w, k, tau):
  """Against float64: values, score and tau gradients within 3x XLA's own float32 errors."""

  def value_and_grads(dtype, **kw):
    s, ww = jnp.asarray(scores, dtype), jnp.asarray(w, dtype)
    loss = lambda s, t: jnp.sum(ww * sj.soft_topk(s, k, t, **kw))
    grads = jax.grad(loss, argnums=(0, 1))(s, jnp.asarray(tau, dtype))
    return sj.soft_topk(s, k, tau, **kw), *grads

  ours = value_and_grads(jnp.float32, **KERNEL)
  lib = value_and_grads(jnp.float32)
  with jax.enable_x64(True):
    exact = [np.asarray(x) for x in value_and_grads(jnp.float64)]
  # d/dtau sums n k terms that largely cancel (the scaled scores' range times their
  # gradients): both float32 implementations are off by up to about 4e-4 of its scale at
  # tau = 1/16 here; a dropped step or term is off by far more.
  floors = {"value": 1e-6, "d/dscores": 1e-6, "d/dtau": 1e-3}
  for name, o, lb, ex in zip(floors, ours, lib, exact, strict=True):
    ours_error, lib_error, scale = _errors(o, lb, ex)
    bound = max(3 * lib_error, floors[name] * scale)
    assert ours_error <= bound, (name, ours_error, lib_error, scale)
  np.testing.assert_allclose(np.sum(ours[0], axis=-1), k, rtol=1e-5)
  return ours


# (40, 20) and (200, 40) replay the backward in 2 and 3 segments of 16 steps; tau = 1/32 takes
# the forward's exact shift, tau >= 1/16 the carried one.
@pytest.mark.parametrize("n,k", [(300, 5), (40, 20), (9, 8), (200, 40)])
@pytest.mark.parametrize("tau", [1 / 32, 0.0625, 2.0])
def test_values_and_gradients_as_accurate_as_xla(n, k, tau, rng):
  scores = _scores(rng, 5, n)
  w = rng.normal(size=(5, n)).astype(np.float32)
  ours = _assert_as_accurate_as_xla(scores, w, k, tau)
  assert float(ours[0][0, 5]) == 0.0 and float(ours[1][0, 5]) == 0.0  # the excluded item


@pytest.mark.parametrize("k", [9, 40])
def test_wide_rows_where_every_step_has_only_small_p(k, rng):
  """Every p below 1/64 at every step: the passes that skip the per-block tests."""
  scores = rng.normal(size=(4, 3000)) * 0.5
  w = rng.normal(size=(4, 3000)).astype(np.float32)
  e = np.exp(scores - scores.max(-1, keepdims=True))
  p_max = e.max(-1) / e.sum(-1)
  assert p_max.max() < 1 / 64 / 4  # and stays below 1/64 as the top items drop out
  _assert_as_accurate_as_xla(scores, w, k, 1.0)


def test_tau_gradient_of_rows_with_only_small_p_matches_central_differences(rng):
  """The backward's untested passes carry tau's terms too: d/dtau against float64."""
  scores, w = rng.normal(size=(4, 400)) * 0.3, rng.normal(size=(4, 400))
  tau, h = 1.0, 1e-4
  grad = jax.grad(
    lambda t: jnp.sum(w * sj.soft_topk(jnp.asarray(scores, jnp.float32), 9, t, **KERNEL))
  )
  fd = lambda t: float(np.sum(w * reference.soft_topk_numpy(scores, 9, t)))
  expected = (fd(tau + h) - fd(tau - h)) / (2 * h)
  # XLA's float32 form is off by 6e-7 here; log(1 - p) as -p in those passes, by 2e-5.
  np.testing.assert_allclose(float(grad(jnp.float32(tau))), expected, rtol=4e-6)


def test_items_far_below_the_maximum_get_exactly_zero_as_in_xla():
  """exp underflows between 87 and 150 below the shift (subnormals, flushed) and beyond."""
  scores = np.zeros((2, 40), np.float32)
  scores[:, 3], scores[:, 20], scores[:, 35] = -95.0, -120.0, -1e4  # vector blocks and tail
  ours = np.asarray(jax.jit(lambda s: sj.soft_topk(s, 2, 1.0, **KERNEL))(scores))
  lib = np.asarray(sj.soft_topk(scores, 2, 1.0))
  np.testing.assert_array_equal(ours[:, [3, 20, 35]], 0.0)
  np.testing.assert_array_equal(lib[:, [3, 20, 35]], 0.0)


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_matches_float64_numpy_reference(tau, rng):
  scores = rng.normal(size=(6, 200)) * 2
  ours = sj.soft_topk(jnp.asarray(scores, jnp.float32), 9, tau, **KERNEL)
  np.testing.assert_allclose(ours, reference.soft_topk_numpy(scores, 9, tau), atol=3e-6, rtol=0)


def test_tau_gradient_matches_central_differences_in_float64_reference(rng):
  """d/dtau of a weighted sum against central differences of the NumPy reference."""
  scores, w = rng.normal(size=(4, 60)), rng.normal(size=(4, 60))
  tau, h = 0.7, 1e-4
  s32 = jnp.asarray(scores, jnp.float32)
  grad = jax.grad(lambda t: jnp.sum(w * sj.soft_topk(s32, 6, t, **KERNEL)))
  fd = lambda t: float(np.sum(w * reference.soft_topk_numpy(scores, 6, t)))
  expected = (fd(tau + h) - fd(tau - h)) / (2 * h)
  np.testing.assert_allclose(float(grad(jnp.float32(tau))), expected, rtol=2e-4)


def test_batch_axes_jit_and_vmap_with_a_batched_tau(rng):
  """Leading axes are rows; a vmapped tau gives each batch element its own temperature."""
  scores = jnp.asarray(rng.normal(size=(6, 4, 3, 50)).astype(np.float32))
  taus = jnp.linspace(0.04, 2.0, 6)  # the first ones below 1/16: the exact shift
  topk = lambda impl: jax.jit(jax.vmap(lambda s, t: sj.soft_topk(s, 5, t, implementation=impl)))
  # At tau = 0.04 both float32 forms are off by up to about 5e-6 (errors grow as 1 / tau).
  np.testing.assert_allclose(topk("cpu_kernel")(scores, taus), topk("xla")(scores, taus), atol=2e-5)

  def tau_grads(impl):
    per_tau = lambda s, t: sj.soft_topk(s, 5, t, implementation=impl)[..., :7].sum()
    return jax.grad(lambda ts: jnp.sum(jax.vmap(per_tau)(scores, ts)))(taus)

  np.testing.assert_allclose(tau_grads("cpu_kernel"), tau_grads("xla"), rtol=1e-4, atol=1e-5)


def test_vmap_with_a_shared_tau_sums_its_gradient(rng):
  scores = jnp.asarray(rng.normal(size=(5, 2, 30)).astype(np.float32))

  def grad(impl):
    first = lambda s, t: sj.soft_topk(s, 4, t, implementation=impl)[:, 0]
    loss = lambda t: jnp.sum(jax.vmap(first, in_axes=(0, None))(scores, t))
    return jax.grad(loss)(jnp.float32(0.8))

  np.testing.assert_allclose(grad("cpu_kernel"), grad("xla"), rtol=1e-4)


def test_gumbel_relaxed_uses_the_same_noise_and_hard_is_exact(key, rng):
  scores = jnp.asarray(rng.normal(size=(3, 40)).astype(np.float32))
  ours = sj.gumbel_topk_relaxed(key, scores, 6, 0.5, **KERNEL)
  np.testing.assert_allclose(ours, sj.gumbel_topk_relaxed(key, scores, 6, 0.5), atol=3e-6)
  hard = sj.gumbel_topk_relaxed(key, scores, 6, 0.5, hard=True, **KERNEL)
  np.testing.assert_array_equal(hard, sj.khot(sj.gumbel_topk(key, scores, 6), 40))

  def grad(impl):
    relaxed = lambda s: sj.gumbel_topk_relaxed(key, s, 6, 0.5, hard=True, implementation=impl)
    return jax.grad(lambda s: jnp.sum(scores * relaxed(s)))(scores)

  np.testing.assert_allclose(grad("cpu_kernel"), grad("xla"), atol=1e-5)


def test_dknn_loss_with_the_kernel(key, rng):
  q, x = (jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in [(8, 5), (30, 5)])
  yq, yx = jnp.asarray(rng.integers(0, 3, 8)), jnp.asarray(rng.integers(0, 3, 30))
  args = (key, q, x, yq, yx)
  loss = lambda impl: jax.value_and_grad(
    lambda q: sj.dknn_loss(key, q, *args[2:], k=5, tau=0.5, num_samples=3, implementation=impl)
  )(q)
  (v_ker, g_ker), (v_xla, g_xla) = loss("cpu_kernel"), loss("xla")
  np.testing.assert_allclose(v_ker, v_xla, rtol=1e-5)
  np.testing.assert_allclose(g_ker, g_xla, atol=1e-5)


def test_rejects_what_the_kernel_does_not_compute(x64):
  s = jnp.zeros((2, 4))
  with pytest.raises(ValueError, match="implementation must be one of"):
    sj.soft_topk(s, 2, implementation="triton")
  with pytest.raises(ValueError, match="own VJP"):
    sj.soft_topk(s, 2, vjp="autodiff", **KERNEL)
  with pytest.raises(ValueError, match=r"float32.*got float64"):
    sj.soft_topk(jnp.zeros((2, 4), jnp.float64), 2, **KERNEL)


def test_a_missing_or_failing_compiler_is_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setenv(cpu_kernel.CACHE_ENV, str(tmp_path))
  monkeypatch.delenv("CXX", raising=False)
  monkeypatch.setattr(cpu_kernel.shutil, "which", lambda name: None)
  with pytest.raises(RuntimeError, match=r"no C\+\+ compiler.*implementation='xla'"):
    cpu_kernel._build()
  for cxx in ("false", str(tmp_path / "no-such-compiler")):  # fails; does not exist
    monkeypatch.setenv("CXX", cxx)
    with pytest.raises(RuntimeError, match="building the cpu_kernel failed"):
      cpu_kernel._build()


def test_backward_scratch_is_bounded_by_segments_not_k(rng):
  """The pool grows by at most (19 + k / 16) rows of n per thread at k = 256, not k rows."""
  scores = jnp.asarray(rng.normal(size=(2, 3000)).astype(np.float32))
  grad = jax.grad(lambda s: sj.soft_topk(s, 256, 1.0, **KERNEL)[:, 0].sum())
  before = cpu_kernel.scratch_bytes()
  jax.block_until_ready(grad(scores))
  grown = cpu_kernel.scratch_bytes() - before
  threads = 2  # two rows: at most two participants
  assert grown <= threads * (3 + 15 + 17) * 3000 * 4, grown


# The plain loops (no AVX-512: most of this repository's tests run the intrinsics here) in a
# child process, so that its build and FFI registration do not meet this process's.
_PLAIN_LOOPS_CHECK = """
import jax, jax.numpy as jnp, numpy as np
import subsets_jax as sj
from subsets_jax._src import cpu_kernel
from tests import reference
assert cpu_kernel.vector_lanes() == 0, cpu_kernel.vector_lanes()
rng = np.random.default_rng(5)
# The edge-case rows, a backward in 3 segments, and the exact shift (tau < 1/16) on ordinary
# rows (with the edge cases at such tau both float32 forms are far off float64, see above).
for n, k, tau, hard in [(300, 5, 1.0, 1), (200, 40, 0.5, 1), (9, 8, 2.0, 1), (37, 20, 0.04, 0)]:
  s = reference.hard_rows(rng, 4, n) if hard else rng.normal(size=(4, n)).astype(np.float32)
  s = jnp.asarray(s)
  w = jnp.asarray(rng.normal(size=(4, n)).astype(np.float32))
  def run(impl):
    loss = lambda s, t: jnp.sum(w * sj.soft_topk(s, k, t, implementation=impl))
    return sj.soft_topk(s, k, tau, implementation=impl), *jax.grad(loss, (0, 1))(s, tau)
  for ours, xla in zip(run("cpu_kernel"), run("xla")):
    scale = float(jnp.abs(xla).max())
    assert float(jnp.abs(ours - xla).max()) <= 2e-5 * max(scale, 1), (n, k, tau, ours, xla)
from subsets_jax._src import threefry
data = threefry.key_data(jax.random.key(11))
low = jax.lax.iota(jnp.uint32, 3 * 37).reshape(3, 37)
b0, b1 = threefry._threefry2x32(data[0], data[1], jnp.zeros_like(low), low)
assert bool(jnp.all(cpu_kernel.threefry_bits(data, (3, 37)) == b0 ^ b1))
# The scalar Gumbel transform (std::fma without the FMA instructions of x86-64-v2) is XLA's.
assert cpu_kernel.gumbel_transform_is_xlas()
from subsets_jax._src import gumbel
key, z = jax.random.key(2), jnp.zeros((3, 37), jnp.float32)
assert bool(jnp.all(gumbel.perturb(key, z, "cpu_kernel") == jax.random.gumbel(key, (3, 37))))
print("plain loops agree")
"""


@pytest.mark.skipif(
  platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 -march names only"
)
def test_plain_loops_without_avx512_agree_with_xla(tmp_path):
  env = os.environ | {cpu_kernel.MARCH_ENV: "x86-64-v2", cpu_kernel.CACHE_ENV: str(tmp_path)}
  root = pathlib.Path(__file__).parent.parent
  done = subprocess.run(
    [sys.executable, "-c", _PLAIN_LOOPS_CHECK], env=env, cwd=root, capture_output=True, text=True
  )
  assert done.returncode == 0 and "plain loops agree" in done.stdout, done.stderr[-3000:]


def test_rows_with_too_few_finite_items_under_jit_match_xla():
  """Unchecked under jit: a row with no finite item gives zeros, one with 2 of k = 3 recycles."""
  neg_inf = -jnp.inf
  scores = jnp.array(
    [[neg_inf] * 6, [0.5, neg_inf, neg_inf, 1.0, neg_inf, neg_inf], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]
  )
  topk = lambda impl: jax.jit(lambda s: sj.soft_topk(s, 3, 0.7, implementation=impl))(scores)
  ours = topk("cpu_kernel")
  np.testing.assert_allclose(ours, topk("xla"), atol=1e-6)
  np.testing.assert_array_equal(ours[0], 0.0)
  np.testing.assert_allclose(ours[1:].sum(axis=-1), 3.0, rtol=1e-6)


def test_train_step_with_the_kernel_matches_xla(rng):
  from subsets_jax import dknn_training as training

  config = training.TrainConfig(dataset="digits", num_queries=6, num_neighbors=12, progress=False)
  state = training.create_train_state(jax.random.key(0), config, (28, 28, 1), 10)
  images = rng.uniform(size=(18, 28, 28, 1)).astype(np.float32)
  labels = rng.integers(0, 3, 18)
  batch = {
    "query_images": images[:6],
    "query_labels": labels[:6],
    "neighbor_images": images[6:],
    "neighbor_labels": labels[6:],
  }

  def step(impl):
    new, metrics = training.train_step(
      state, batch, jax.random.key(3), 0.5, k=3, num_samples=2, implementation=impl
    )
    updates = jax.tree_util.tree_map(lambda a, b: a - b, new.params, state.params)
    return metrics["loss"], jax.tree_util.tree_leaves(updates)

  (loss_ker, updates_ker), (loss_xla, updates_xla) = step("cpu_kernel"), step("xla")
  np.testing.assert_allclose(loss_ker, loss_xla, rtol=1e-5)
  for a, b in zip(updates_ker, updates_xla, strict=True):
    scale = float(np.abs(b).max())
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * scale)


def test_lowered_for_a_gpu_it_is_the_xla_form():
  """`jax.export` for CUDA (no GPU needed): no kernel call in the module, XLA's recursion."""
  from jax import export

  loss = lambda s, t: jnp.sum(sj.soft_topk(s, 3, t, **KERNEL)[:, 0])
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  args = (jax.ShapeDtypeStruct((4, 20), jnp.float32), jax.ShapeDtypeStruct((), jnp.float32))
  module = export.export(grad, platforms=["cuda"])(*args).mlir_module()
  assert "SjRelaxedTopk" not in module and "stablehlo.while" in module
  with pytest.raises(ValueError, match="SjRelaxedTopkForward"):  # no stability guarantee on CPU
    export.export(grad, platforms=["cpu"])(*args)


@pytest.mark.parametrize("shape", [(3, 37), (3, 20000), (5,)])  # a partial block; 4 tasks
def test_threefry_bits_are_the_hash_and_the_noise_is_jax_random_gumbel(shape):
  from subsets_jax._src import gumbel, threefry

  key = jax.random.key(7)
  data = threefry.key_data(key)
  low = jax.lax.iota(jnp.uint32, int(np.prod(shape))).reshape(shape)
  b0, b1 = threefry._threefry2x32(data[0], data[1], jnp.zeros_like(low), low)
  np.testing.assert_array_equal(cpu_kernel.threefry_bits(data, shape), b0 ^ b1)
  expected = jax.random.gumbel(key, shape, jnp.float32)
  zeros = jnp.zeros(shape, jnp.float32)
  for k in (key, data):  # a typed key and raw key data
    np.testing.assert_array_equal(gumbel.perturb(k, zeros, "cpu_kernel"), expected)
    jitted = jax.jit(lambda k, s: gumbel.perturb(k, s, "cpu_kernel"))
    np.testing.assert_array_equal(jitted(k, zeros), expected)


def test_vmapped_keys_draw_each_key_s_noise():
  from subsets_jax._src import gumbel

  keys = jax.random.split(jax.random.key(3), 4)
  zeros = jnp.zeros((4, 2, 50), jnp.float32)
  ours = jax.jit(jax.vmap(lambda k, s: gumbel.perturb(k, s, "cpu_kernel")))(keys, zeros)
  expected = jax.vmap(lambda k: jax.random.gumbel(k, (2, 50), jnp.float32))(keys)
  np.testing.assert_array_equal(ours, expected)


def test_the_kernel_s_gumbel_transform_is_xla_s_for_every_word():
  """All 2^23 words' mantissas, through the vector code (one row) and the scalar code (rows
  of 5), bit for bit XLA's transform; so the fused perturbation is in use here."""
  from subsets_jax._src import threefry

  bits = jnp.asarray(np.arange(2**23, dtype=np.uint32) << np.uint32(9))
  expected = np.asarray(threefry.gumbel_from_bits(bits, jnp.float32)).view(np.uint32)
  vector = np.asarray(cpu_kernel.gumbel_from_bits(bits)).view(np.uint32)
  scalar = np.asarray(cpu_kernel.gumbel_from_bits(bits[: 5 * 2**20].reshape(-1, 5)))
  np.testing.assert_array_equal(vector, expected)
  np.testing.assert_array_equal(scalar.reshape(-1).view(np.uint32), expected[: 5 * 2**20])
  assert cpu_kernel.gumbel_transform_is_xlas()


@pytest.mark.parametrize("code", ["vector", "scalar"])
def test_the_check_fails_when_one_word_differs(monkeypatch, code):
  """One word's noise one ulp off, in the vector or the scalar code: the check says False."""
  real = cpu_kernel.gumbel_from_bits

  def off_by_one_ulp(bits):
    noise = np.array(real(bits))
    if (bits.ndim == 1) == (code == "vector") and int(bits.reshape(-1)[0]) == 5 << 20 << 9:
      noise.reshape(-1)[3] = np.nextafter(noise.reshape(-1)[3], np.float32(np.inf))
    return jnp.asarray(noise)

  monkeypatch.setattr(cpu_kernel, "gumbel_from_bits", off_by_one_ulp)
  assert not cpu_kernel.gumbel_transform_is_xlas.__wrapped__()


@pytest.mark.parametrize("fused", [True, False])
def test_perturbation_is_fused_only_where_the_check_passed(monkeypatch, fused):
  from subsets_jax._src import gumbel

  monkeypatch.setattr(cpu_kernel, "gumbel_transform_is_xlas", lambda: fused)
  key = jax.random.key(11)
  scores = jnp.asarray(np.random.default_rng(0).normal(size=(4, 333)), jnp.float32)
  scores = scores.at[1, :7].set(-jnp.inf)
  fn = lambda k, s: gumbel.perturb(k, s, "cpu_kernel")
  jaxpr = str(jax.make_jaxpr(fn)(key, scores))
  assert ("SjGumbelPerturb" in jaxpr) == fused
  assert ("SjThreefryBits" in jaxpr) != fused
  expected = scores + jax.random.gumbel(key, scores.shape, jnp.float32)
  np.testing.assert_array_equal(jax.jit(fn)(key, scores), expected)
  assert np.all(np.isneginf(np.asarray(jax.jit(fn)(key, scores))[1, :7]))


def test_fused_perturbation_passes_gradients_and_low_precision_scores():
  from subsets_jax._src import gumbel

  key = jax.random.key(5)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 40)), jnp.float32)
  loss = lambda s: jnp.sum(w * gumbel.perturb(key, s, "cpu_kernel") ** 2)
  s = jnp.zeros((3, 40), jnp.float32)
  g = gumbel.perturb(key, s, "cpu_kernel")
  np.testing.assert_allclose(jax.grad(loss)(s), 2 * w * g, rtol=1e-6)
  half = jnp.linspace(-2, 2, 120, dtype=jnp.bfloat16).reshape(3, 40)
  expected = half.astype(jnp.float32) + jax.random.gumbel(key, (3, 40), jnp.float32)
  np.testing.assert_array_equal(gumbel.perturb(key, half, "cpu_kernel"), expected)


@pytest.mark.parametrize("fused", [True, False])
def test_gumbel_relaxed_draws_the_noise_in_the_forward_call_where_the_check_passed(
  monkeypatch, fused
):
  """Where the transform check holds, one kernel call draws the noise and runs the forward
  (`SjGumbelForward`): the same perturbed scores as `jax.random.gumbel` and the same total
  as the kernel's forward on them, bit for bit; rows of 300 cross the 256-word blocks."""
  monkeypatch.setattr(cpu_kernel, "gumbel_transform_is_xlas", lambda: fused)
  key = jax.random.key(12)
  scores = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 300)), jnp.float32)
  scores = scores.at[1, 2, :9].set(-jnp.inf)
  fn = lambda k, s: sj.gumbel_topk_relaxed(k, s, 7, 0.5, **KERNEL)
  # hard=True needs the perturbed scores for their top k: the separate perturbation.
  hard_fn = lambda k, s: sj.gumbel_topk_relaxed(k, s, 7, 0.5, hard=True, **KERNEL)
  assert ("SjGumbelForward" in str(jax.make_jaxpr(fn)(key, scores))) == fused
  assert "SjGumbelForward" not in str(jax.make_jaxpr(lambda k, s: hard_fn(k, s))(key, scores))
  perturbed = scores + jax.random.gumbel(key, scores.shape, jnp.float32)
  expected = jax.jit(lambda p: cpu_kernel.relaxed_topk(p, jnp.float32(0.5), 7))(perturbed)
  np.testing.assert_array_equal(jax.jit(fn)(key, scores), expected)
  np.testing.assert_array_equal(hard_fn(key, scores), sj.khot(jax.lax.top_k(perturbed, 7)[1], 300))

  # Gradients: the kernel's backward on the perturbed scores, with and without tau's, with
  # the perturbed scores kept by the forward or drawn again by the backward.
  w = jnp.asarray(np.random.default_rng(3).normal(size=scores.shape), jnp.float32)
  ours = lambda s, t: jnp.sum(w * sj.gumbel_topk_relaxed(key, s, 7, t, **KERNEL))
  theirs = lambda p, t: jnp.sum(w * cpu_kernel.relaxed_topk(p, t, 7))
  for keep_max, backward in ((scores.size, "SjRelaxedTopkBackward"), (0, "SjGumbelBackward")):
    monkeypatch.setattr(cpu_kernel, "KEEP_PERTURBED_MAX", keep_max)
    if fused:
      assert backward in str(jax.make_jaxpr(jax.grad(ours))(scores, jnp.float32(0.5)))
    for argnums in (0, (0, 1)):
      got = jax.grad(ours, argnums)(scores, jnp.float32(0.5))
      want = jax.grad(theirs, argnums)(perturbed, jnp.float32(0.5))
      got, want = jax.tree.leaves(got), jax.tree.leaves(want)
      np.testing.assert_array_equal(got[0], want[0])
      if argnums != 0:  # tau's: the rows' terms summed, in the separate path after a reshape
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


@pytest.mark.parametrize("keep_max", [2**22, 0])
def test_fused_gumbel_forward_with_vmapped_keys_draws_each_key_s_noise(monkeypatch, keep_max):
  """Values and gradients under vmap, each key's own noise (or one shared key's), with the
  perturbed scores kept or drawn again in the backward."""
  monkeypatch.setattr(cpu_kernel, "KEEP_PERTURBED_MAX", keep_max)
  keys = jax.random.split(jax.random.key(4), 3)
  scores = jnp.asarray(np.random.default_rng(4).normal(size=(3, 5, 40)), jnp.float32)
  fn = lambda k, s: sj.gumbel_topk_relaxed(k, s, 4, 0.7, **KERNEL)
  batched = jax.jit(jax.vmap(fn))(keys, scores)
  one_by_one = jnp.stack([jax.jit(fn)(keys[i], scores[i]) for i in range(3)])
  np.testing.assert_array_equal(batched, one_by_one)
  shared = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(keys[0], scores)
  np.testing.assert_array_equal(shared[1], jax.jit(fn)(keys[0], scores[1]))
  relaxed = lambda k, s, t: sj.gumbel_topk_relaxed(k, s, 4, t, **KERNEL)
  grad = lambda k, s, t: jax.grad(lambda s, t: jnp.sum(relaxed(k, s, t) ** 2), (0, 1))(s, t)
  taus = jnp.asarray([0.5, 1.0, 2.0], jnp.float32)
  batched = jax.jit(jax.vmap(grad))(keys, scores, taus)
  for i in range(3):
    for g, e in zip(batched, jax.jit(grad)(keys[i], scores[i], taus[i]), strict=True):
      np.testing.assert_array_equal(g[i], e)


def test_backward_takes_tau_terms_only_when_tau_is_differentiated(rng):
  """A temperature that is not differentiated (a constant, or another argument's gradient)
  runs the backward without its terms (`tau_grad=False` in the call), and the scores'
  gradient is the same bit for bit."""
  scores = jnp.asarray(rng.normal(size=(4, 90)).astype(np.float32))
  w = jnp.asarray(rng.normal(size=(4, 90)).astype(np.float32))
  loss = lambda s, t: jnp.sum(w * sj.soft_topk(s, 6, t, **KERNEL))
  tau = jnp.float32(0.3)
  for argnums, tau_grad in ((0, False), ((0, 1), True), (1, True)):
    jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums))(scores, tau))
    assert f"('tau_grad', {tau_grad})" in jaxpr, (argnums, jaxpr[-2000:])
  alone = jax.jit(jax.grad(loss))(scores, tau)
  with_tau, tau_bar = jax.jit(jax.grad(loss, (0, 1)))(scores, tau)
  np.testing.assert_array_equal(alone, with_tau)
  assert np.isfinite(tau_bar) and tau_bar != 0


def test_short_rows_run_sixteen_at_a_time_as_the_row_kernel_does(rng):
  """Rows of at most 256 items (k <= 16, every tau >= 1/16) run 16 at a time, one row per
  lane; one more, excluded, item (257) sends the same rows through the row kernel. Values and
  gradients of both, and their difference, are within 3x XLA's own float32 error against
  float64 (as `_assert_as_accurate_as_xla`), with edge-case rows in several groups and a
  vmapped tau per 20 rows (groups of 16 straddle them); 60 rows leave the last group part
  empty."""
  scores = reference.hard_rows(rng, 60, 256)
  scores[17:20] = reference.hard_rows(rng, 3, 256)  # edge cases in the second group too
  scores = scores.reshape(3, 20, 256)
  w = rng.normal(size=(3, 20, 256)).astype(np.float32)
  taus = np.asarray([0.0625, 0.5, 3.0], np.float32)

  def run(s, ww, dtype, **kw):
    s, ww, t = (jnp.asarray(x, dtype) for x in (s, ww, taus))
    topk = lambda s, t: sj.soft_topk(s, 9, t, **kw)
    grads = jax.vmap(jax.grad(lambda s, t, ww: jnp.sum(ww * topk(s, t)), (0, 1)))(s, t, ww)
    return [np.asarray(x, np.float64) for x in (jax.vmap(topk)(s, t), *grads)]

  pad = lambda x, v: np.concatenate([x, np.full((3, 20, 1), v, np.float32)], axis=-1)
  short = run(scores, w, jnp.float32, **KERNEL)
  rows = run(pad(scores, -np.inf), pad(w, 0.0), jnp.float32, **KERNEL)
  np.testing.assert_array_equal(rows[0][..., 256], 0.0)
  xla = run(scores, w, jnp.float32)
  with jax.enable_x64(True):
    exact = run(scores, w, jnp.float64)
  floors = {"value": 1e-6, "d/dscores": 1e-6, "d/dtau": 1e-3}
  for name, s, r, lib, ex in zip(floors, short, rows, xla, exact, strict=True):
    r = r[..., :256] if name != "d/dtau" else r
    scale = float(np.abs(ex).max())
    bound = max(3 * float(np.abs(lib - ex).max()), floors[name] * scale)
    errors = [float(np.abs(x - y).max()) for x, y in ((s, ex), (r, ex), (s, r))]
    assert max(errors) <= bound, (name, errors, bound)


def test_a_batch_of_no_rows_gives_empty_results_and_gradients(key):
  scores = jnp.ones((2, 0, 7), jnp.float32)
  relaxed = lambda s: sj.gumbel_topk_relaxed(key, s, 3, 0.5, **KERNEL)
  assert relaxed(scores).shape == (2, 0, 7)
  assert jax.jit(jax.grad(lambda s: jnp.sum(relaxed(s) ** 2)))(scores).shape == (2, 0, 7)
  assert sj.soft_topk(scores, 3, 0.5, **KERNEL).shape == (2, 0, 7)
