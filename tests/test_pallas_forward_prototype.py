"""The Pallas forward prototype (benchmarks/pallas_forward.py), run in interpret mode on CPU."""

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import pallas_forward
from subsets_jax._src import relaxed_topk
from tests import reference


# chunk < n exercises the online merge of chunk statistics and the masked last chunk.
@pytest.mark.parametrize("n,k,chunk", [(300, 5, 128), (100, 9, 16), (40, 20, 16)])
@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_matches_reference_and_library_scalars(n, k, chunk, tau, rng):
  scores = reference.hard_rows(rng, 4, n)
  b = pallas_forward.scaled_rows(jnp.asarray(scores), tau)
  total, aux = pallas_forward.forward_rows(b, tau, k, chunk=chunk, interpret=True)
  lib_total, lib_aux = relaxed_topk._forward_rows(b, jnp.float32(tau), k, blocked=False)
  np.testing.assert_allclose(total, lib_total, atol=1e-5, rtol=0)
  # Shift, log s, log(1 - p_top) and 1 / (1 - p_top) of every step, as the library stores them.
  np.testing.assert_allclose(aux, lib_aux, rtol=2e-5, atol=2e-5)
  finite_rows = [0, 3]  # rows 1 and 2 leave the reference's exact log(1 - p) range
  ref = reference.soft_topk_numpy(scores[finite_rows].astype(np.float64), k, tau)
  np.testing.assert_allclose(np.asarray(total)[finite_rows], ref, atol=2e-5, rtol=0)
  np.testing.assert_allclose(np.sum(total, axis=-1), k, rtol=1e-5)
  assert float(total[0, 5]) == 0.0
