"""knn_predict over a device mesh (4 simulated CPU devices, in a subprocess) equals one device."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

WORKER = pathlib.Path(__file__).with_name("knn_mesh_worker.py")


@pytest.fixture(scope="module")
def results():
  # The device count is fixed when JAX starts, so the worker runs in its own process.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run(
    [sys.executable, str(WORKER), "4"], env=env, capture_output=True, text=True, timeout=600
  )
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout)


def test_four_devices(results):
  assert results["device_count"] == 4


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_mesh_from_make_mesh_equals_single_device(results, axis_type):
  assert results[axis_type] == results["plain"]


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_sharded_inputs_equal_single_device(results, axis_type):
  assert results[axis_type + "_sharded_inputs"] == results["plain_full"]
