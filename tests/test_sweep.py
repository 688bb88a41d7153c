"""The sweeps' shared bookkeeping: selecting a variant's runs in seed order."""

import pytest

from benchmarks import sweep

_RESULTS = {
  "relaxed/seed10": {"loss": 10},
  "relaxed/seed2": {"loss": 2},
  "relaxed-notebook_kl/seed1": {"loss": -1},
  "relaxed/seed0": {"loss": 0},
  "mnist/relaxed/seed3": {"loss": -3},
  "relaxed/seed1x": {"loss": -4},
  "mnist/imle/seed1": {"loss": 21},
  "mnist/imle/seed0": {"loss": 20},
}


@pytest.mark.parametrize(
  ("prefix", "losses"),
  [("relaxed", [0, 2, 10]), ("mnist/imle", [20, 21]), ("relaxed-notebook_kl", [-1]), ("imle", [])],
)
def test_runs_by_seed_selects_exactly_the_prefix_in_numeric_seed_order(prefix, losses):
  assert [r["loss"] for r in sweep.runs_by_seed(_RESULTS, prefix)] == losses


def test_record_keeps_earlier_entries(tmp_path):
  path = tmp_path / "results.json"
  sweep.record(path, "relaxed/seed1", {"loss": 1})
  sweep.record(path, "relaxed/seed0", {"loss": 0})
  assert [r["loss"] for r in sweep.runs_by_seed(sweep.load(path), "relaxed")] == [0, 1]
