"""The L2X example: its data, its metric, short runs on the harness, exact resume, the CLI."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from harness import checkpoints, loop, metric_writers

from l2x import configs, data
from l2x import train as training

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "train_l2x.py"
SMALL = configs.TrainConfig(
  train_size=4000,
  val_size=1000,
  explain_size=1000,
  batch_size=500,
  num_epochs=2,
  checkpoint_every_steps=3,
  progress=False,
)


def _quiet(_):
  pass


@pytest.mark.parametrize("name", data.DATASETS)
def test_data_is_seeded_and_marks_the_relevant_features(name):
  a, b = data.make(name, 2000, 7), data.make(name, 2000, 7)
  np.testing.assert_array_equal(a.x, b.x)
  assert not np.array_equal(a.x, data.make(name, 2000, 8).x)
  assert a.x.shape == (2000, 10) and a.x.dtype == np.float32
  assert np.all((a.p >= 0) & (a.p <= 1))
  counts = a.relevant.sum(axis=1)
  assert np.all(counts == (5 if name == "switch" else data.K[name]))


def test_the_probabilities_follow_the_formulas():
  x = data.make("xor", 5, 0).x.astype(np.float64)
  np.testing.assert_allclose(data.make("xor", 5, 0).p, 1 / (1 + np.exp(x[:, 0] * x[:, 1])), 1e-6)
  x = data.make("orange_skin", 5, 0).x.astype(np.float64)
  expected = 1 / (1 + np.exp((x[:, :4] ** 2).sum(1) - 4))
  np.testing.assert_allclose(data.make("orange_skin", 5, 0).p, expected, rtol=1e-5)
  x = data.make("nonlinear_additive", 5, 0).x.astype(np.float64)
  t = -100 * np.sin(0.2 * x[:, 0]) + np.abs(x[:, 1]) + x[:, 2] + np.exp(-x[:, 3]) - 2.4
  additive = data.make("nonlinear_additive", 5, 0).p
  np.testing.assert_allclose(additive, 1 / (1 + np.exp(t)), atol=1e-3)


def test_switch_chooses_the_model_by_the_sign_of_x10():
  d = data.make("switch", 4000, 0)
  orange = d.relevant[:, 0]
  assert abs(orange.mean() - 0.5) < 1e-3
  # X10 is shifted by +3 for orange-skin rows and -3 for additive rows.
  assert d.x[orange, 9].mean() > 2.5 and d.x[~orange, 9].mean() < -2.5
  x = d.x.astype(np.float64)
  t = -100 * np.sin(0.2 * x[:, 4]) + np.abs(x[:, 5]) + x[:, 6] + np.exp(-x[:, 7]) - 2.4
  # -100 sin(0.2 X5) amplifies the float32 rounding of the stored features.
  np.testing.assert_allclose(d.p[~orange], (1 / (1 + np.exp(t)))[~orange], atol=1e-3)
  assert np.all(d.relevant[~orange, 4:8]) and not np.any(d.relevant[~orange, :4])


def test_median_ranks_by_hand():
  logits = np.array([[9.0, 8.0, 7.0, 6.0, 5.0], [0.0, 1.0, 2.0, 3.0, 4.0]], np.float32)
  relevant = np.array([[True, True, False, False, False], [True, False, True, False, True]])
  # Row 0: ranks 1 and 2 -> 1.5; row 1: ranks 5, 3, 1 -> 3.
  np.testing.assert_array_equal(training.median_ranks(logits, relevant), [1.5, 3.0])
  # A perfect explainer of the switch data reaches the optimum, (5 + 1) / 2.
  d = data.make("switch", 50, 1)
  noise = np.random.default_rng(0).normal(size=(50, 10)).astype(np.float32) * 0.1
  perfect = np.where(d.relevant, 5.0, 0.0).astype(np.float32) + noise
  np.testing.assert_array_equal(training.median_ranks(perfect, d.relevant), np.full(50, 3.0))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("l2x")
  return workdir, training.train_and_evaluate(SMALL, workdir, log=_quiet)


def test_a_short_run_records_its_metrics(straight):
  workdir, summary = straight
  records = metric_writers.read_records(workdir)
  assert [r["epoch"] for r in records[:-1]] == [1, 2]
  assert records[-1]["final"] and records[-1]["median_rank"] == summary["median_rank"]
  assert 1.5 <= summary["median_rank"] <= 9.5 and 0 <= summary["posthoc_accuracy"] <= 1
  assert summary["optimal_median_rank"] == 1.5 and summary["steps"] == 16
  assert summary["best_val_posthoc_accuracy"] == max(
    r["val_posthoc_accuracy"] for r in records[:-1]
  )


class _Crash(Exception):
  pass


@pytest.mark.slow
def test_resume_after_a_crash_is_exact(straight, tmp_path, monkeypatch):
  _, reference = straight
  real_step = training.L2XTask.train_step

  def crashing(self, state, epoch, step):
    if (epoch, step) == (1, 5):
      raise _Crash
    return real_step(self, state, epoch, step)

  monkeypatch.setattr(training.L2XTask, "train_step", crashing)
  with pytest.raises(_Crash):
    training.train_and_evaluate(SMALL, tmp_path, log=_quiet)
  monkeypatch.setattr(training.L2XTask, "train_step", real_step)
  resumed = training.train_and_evaluate(SMALL, tmp_path, resume=True, log=_quiet)
  for name in ("median_rank", "posthoc_accuracy", "best_val_posthoc_accuracy", "steps"):
    assert resumed[name] == reference[name], name


def test_resume_refuses_a_changed_estimator(straight):
  workdir, _ = straight
  changed = dataclasses.replace(SMALL, estimator="simple")
  with pytest.raises(checkpoints.ConfigMismatchError, match="estimator: saved 'l2x', now 'simple'"):
    training.train_and_evaluate(changed, workdir, resume=True, log=_quiet)


@pytest.mark.parametrize("estimator", ["simple", "imle", "score_function"])
def test_other_estimators_train(estimator, tmp_path):
  config = dataclasses.replace(
    SMALL, estimator=estimator, num_epochs=1, checkpoint_every_steps=None
  )
  summary = training.train_and_evaluate(config, tmp_path, log=_quiet)
  assert np.isfinite(summary["median_rank"]) and summary["diverged_at_step"] is None
  state = training.create_train_state(jax.random.key(0), config)
  assert summary["steps"] == 8 and state.step == 0


def test_the_harness_rejects_zero_epochs(tmp_path):
  task = training.L2XTask(SMALL)
  with pytest.raises(ValueError, match="num_epochs must be >= 1"):
    loop.train_and_evaluate(task, dataclasses.replace(SMALL, num_epochs=0), tmp_path)


def test_the_cli_runs_and_its_help_lists_every_config_field(tmp_path):
  run = subprocess.run(
    [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120
  )
  assert run.returncode == 0
  for field in dataclasses.fields(configs.TrainConfig):
    assert f"--{field.name}" in run.stdout
  flags = ["--train_size", "2000", "--val_size", "500", "--explain_size", "500"]
  run = subprocess.run(
    [
      *(sys.executable, str(SCRIPT), *flags, "--batch_size", "500", "--no-progress"),
      *("--dataset", "orange_skin", "--estimator", "simple", "--workdir", str(tmp_path)),
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert set(result) == {"median_rank", "posthoc_accuracy", "train_time_s", "diverged_at_step"}
  config = metric_writers.read_records(tmp_path)[-1]["config"]
  assert (config["dataset"], config["estimator"], config["train_size"]) == (
    "orange_skin",
    "simple",
    2000,
  )
