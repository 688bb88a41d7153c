"""End-to-end dKNN training: digits accuracy, exact resume, the example's CLI on MNIST."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from dknn import configs
from dknn import train as training

REPO = pathlib.Path(__file__).resolve().parents[2]
DIGITS = dataclasses.replace(configs.digits(), progress=False)


def _records(workdir):
  return [json.loads(line) for line in (workdir / training.METRICS).read_text().splitlines()]


def _params(workdir, name=training.LATEST):
  from flax import serialization

  payload = serialization.msgpack_restore((workdir / name).read_bytes())
  return jax.tree_util.tree_leaves(payload["state"]["params"])


def test_digits_end_to_end_reaches_accuracy(tmp_path):
  summary = training.train_and_evaluate(DIGITS, tmp_path, log=lambda _: None)
  # An untrained ConvNet's kNN already does well on digits; training must reach 95 %.
  assert summary["test_accuracy"] >= 0.95
  records = _records(tmp_path)
  assert [r["epoch"] for r in records[:-1]] == [1, 2, 3]
  assert records[-1]["final"] and records[-1]["test_accuracy"] == summary["test_accuracy"]
  assert records[0]["train_top_k_correctness"] < records[-2]["train_top_k_correctness"]


def test_resume_after_interruption_is_exact(tmp_path):
  straight = tmp_path / "straight"
  training.train_and_evaluate(DIGITS, straight, log=lambda _: None)
  interrupted = tmp_path / "interrupted"
  # Stop mid-run (the budget is hit inside epoch 1), then resume without a budget.
  cut = dataclasses.replace(DIGITS, time_budget_s=1e-3)
  first = training.train_and_evaluate(cut, interrupted, log=lambda _: None)
  assert first["stopped_by_time_budget"] and first["steps"] < 3 * 24
  training.train_and_evaluate(DIGITS, interrupted, resume=True, log=lambda _: None)
  for a, b in zip(_params(straight), _params(interrupted), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_example_cli_on_mnist_subset_writes_metrics_checkpoints_and_resumes(tmp_path):
  workdir = tmp_path / "run"
  base = [
    sys.executable,
    str(REPO / "examples" / "train_mnist.py"),
    "--max_train_examples",
    "1000",
    "--max_test_examples",
    "500",
    "--validation_size",
    "300",
    "--workdir",
    str(workdir),
    "--no_progress",
    "--time_budget_min",
    "0",
  ]
  run = subprocess.run([*base, "--epochs", "1"], capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr
  assert "val acc" in run.stdout and "test accuracy" in run.stdout
  assert (workdir / training.BEST).exists() and (workdir / training.LATEST).exists()
  first = _records(workdir)
  assert first[-1]["final"] and first[-1]["test_accuracy"] > 0.5
  # Without --host_devices the script takes one CPU device per core (at most 8) and the
  # mesh the most of them that divide the batch of 100.
  cores = min(len(os.sched_getaffinity(0)), 8)
  expected = max(d for d in range(1, cores + 1) if 100 % d == 0)
  assert f"devices: {expected} x cpu" in run.stdout
  # Resume on 2 host devices (jax_num_cpu_devices): data-parallel, the same run continued.
  run = subprocess.run(
    [*base, "--epochs", "2", "--resume", "--host_devices", "2"],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert run.returncode == 0, run.stderr
  assert "resumed from" in run.stdout and "devices: 2 x cpu" in run.stdout
  epochs = [r["epoch"] for r in _records(workdir) if "epoch" in r]
  assert epochs == [1, 2]


def test_example_help_lists_flags():
  run = subprocess.run(
    [sys.executable, str(REPO / "examples" / "train_mnist.py"), "--help"],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert run.returncode == 0
  for flag in (
    "--dataset",
    "--data_dir",
    "--k",
    "--tau",
    "--num_samples",
    "--lr",
    "--epochs",
    "--queries",
    "--neighbors",
    "--seed",
    "--workdir",
    "--resume",
    "--time_budget_min",
    "--config",
    "--host_devices",
  ):
    assert flag in run.stdout


def test_query_and_neighbor_embeddings_equal_one_batch_pass():
  """`train_step(..., separate_passes=True)` embeds in two passes: same as one batch."""
  state = training.create_train_state(jax.random.key(0), DIGITS, (28, 28, 1), 10)
  images = jax.random.uniform(jax.random.key(1), (7, 28, 28, 1))
  query_emb, neighbor_emb = jax.jit(training._embed_pair, static_argnums=(0, 4))(
    state.apply_fn, state.params, images[:3], images[3:], True
  )
  together = state.apply_fn({"params": state.params}, images)
  np.testing.assert_allclose(query_emb, together[:3], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(neighbor_emb, together[3:], rtol=1e-5, atol=1e-6)
