"""The gradient-size benchmark: norms per estimator and draw, and its table."""

import numpy as np
import pytest


def _state_and_batch():
  from benchmarks import dknn_gradient_size as bench

  state = bench.initial_state()
  rng = np.random.default_rng(0)
  images = rng.random((40, 28, 28, 1), dtype=np.float32)
  labels = rng.integers(0, 3, 40).astype(np.int32)
  batch = {
    "query_images": images[:20],
    "query_labels": labels[:20],
    "neighbor_images": images[20:],
    "neighbor_labels": labels[20:],
  }
  return state, batch


def test_gradient_norms_per_draw():
  from benchmarks import dknn_gradient_size as bench

  state, batch = _state_and_batch()
  contenders = [c for c in bench.CONTENDERS if c[0] in ("relaxed", "straight_through", "simple")]
  norms = bench.gradient_norms(state, batch, draws=3, contenders=contenders)
  assert list(norms) == ["relaxed", "straight_through", "simple"]
  # On this loss, linear in the k-hot vector, straight-through is the relaxed gradient bit
  # for bit, and SIMPLE's gradient (of the exact marginals) does not depend on the draw.
  assert norms["relaxed"] == norms["straight_through"]
  assert len(set(norms["relaxed"])) == 3
  assert len(set(norms["simple"])) == 1 and norms["simple"][0] > 0


def test_table_statistics():
  from benchmarks import dknn_gradient_size as bench

  rows = {
    "init": {"relaxed": [[1.0, 3.0], [2.0, 2.0]], "imle, lambda 10": [[4.0, 8.0], [6.0, 6.0]]}
  }
  lines = bench.table(rows).splitlines()
  assert lines[2] == "| init | relaxed | 2 | 0.5 | 3 | 1.00 |"
  assert lines[3] == "| init | imle, lambda 10 | 6 | 1 | 8 | 3.00 |"


@pytest.mark.parametrize("flag", ["--batches", "--draws"])
def test_help_names_the_flags(flag, capsys):
  from benchmarks import dknn_gradient_size as bench

  with pytest.raises(SystemExit):
    bench.main(["--help"])
  assert flag in capsys.readouterr().out
