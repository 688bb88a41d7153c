"""Data-parallel training on 4 simulated CPU devices (in a subprocess)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def four_device_results():
  # The device count is fixed when JAX starts, so the worker runs in its own process.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run(
    [sys.executable, "-m", "dknn.parallel_worker", "4"],
    cwd=EXAMPLES,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout)


def test_four_devices_really_used(four_device_results):
  assert four_device_results["device_count"] == 4
  assert four_device_results["devices_1"] == 1 and four_device_results["devices_4"] == 4


def test_data_parallel_steps_match_single_device(four_device_results):
  for one, four in zip(
    four_device_results["params_1"], four_device_results["params_4"], strict=True
  ):
    np.testing.assert_allclose(np.array(four), np.array(one), rtol=1e-5, atol=1e-6)
