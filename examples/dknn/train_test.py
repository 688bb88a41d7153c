"""End-to-end dKNN training: digits accuracy, exact resumes, interruption, the example's CLI."""

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import train_mnist
from harness import checkpoints, metric_writers, stopping
from tensorboardX.proto import event_pb2

from dknn import configs
from dknn import train as training

# The tests train the ConvNet for whole epochs: compiled with XLA's optimisations on.
pytestmark = pytest.mark.xla_optimized

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "train_mnist.py"
# Two epochs of 23 steps; a periodic checkpoint every 5 steps.
DIGITS = dataclasses.replace(
  configs.digits(), num_epochs=2, progress=False, checkpoint_every_steps=5
)
DIGITS_FLAGS = [
  *("--config", "digits", "--epochs", "2", "--checkpoint_every", "5"),
  *("--no_progress", "--host_devices", "1"),
]


def _quiet(_):
  pass


def _checkpoint(workdir, kind="latest"):
  """(step, parameter leaves) of a run's newest checkpoint, read with Orbax directly."""
  directory = workdir / checkpoints.CHECKPOINTS / kind
  step = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  path = directory / str(step) / "state"
  reader = ocp.PyTreeCheckpointer()
  as_numpy = jax.tree_util.tree_map(
    lambda _: ocp.RestoreArgs(restore_type=np.ndarray), reader.metadata(path).item_metadata.tree
  )
  tree = reader.restore(path, restore_args=as_numpy)
  return step, [np.asarray(x) for x in jax.tree_util.tree_leaves(tree["params"])]


def _assert_same_params(a, b):
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)


def _tensorboard_scalars(workdir):
  """{tag: [(step, value)]} from the TFRecord-framed event files (no TensorBoard needed)."""
  scalars = {}
  for path in sorted((workdir / metric_writers.TENSORBOARD).iterdir()):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset : offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted digits run: (workdir, summary)."""
  workdir = tmp_path_factory.mktemp("straight")
  return workdir, training.train_and_evaluate(DIGITS, workdir, log=_quiet)


def test_digits_end_to_end_reaches_accuracy(straight):
  workdir, summary = straight
  # An untrained ConvNet's kNN already does well on digits; training must reach 95 %.
  assert summary["test_accuracy"] >= 0.95
  records = metric_writers.read_records(workdir)
  assert [r["epoch"] for r in records[:-1]] == [1, 2]
  assert records[-1]["final"] and records[-1]["test_accuracy"] == summary["test_accuracy"]
  assert records[0]["train_top_k_correctness"] < records[-2]["train_top_k_correctness"]
  assert summary["train_time_s"] <= summary["wall_time_s"]
  assert summary["best_step"] == _checkpoint(workdir, "best")[0]
  assert _checkpoint(workdir)[0] == summary["steps"] == 2 * 23


def test_tensorboard_events_hold_the_curves(straight):
  workdir, summary = straight
  scalars = _tensorboard_scalars(workdir)
  records = metric_writers.read_records(workdir)
  assert [step for step, _ in scalars["epoch/val_accuracy"]] == [23, 46]
  np.testing.assert_allclose(
    [v for _, v in scalars["epoch/val_accuracy"]], [r["val_accuracy"] for r in records[:-1]]
  )
  assert [step for step, _ in scalars["train/loss"]] == [20, 40]
  assert scalars["test/accuracy"] == [(46, pytest.approx(summary["test_accuracy"]))]


@pytest.mark.slow
def test_resume_after_a_crash_continues_exactly_from_the_periodic_checkpoint(
  straight, tmp_path, monkeypatch
):
  calls = 0
  real_step = training.train_step_jit

  def crashing_step(*args, **kwargs):
    nonlocal calls
    calls += 1
    if calls == 31:  # epoch 2, step 8: as if killed; the last periodic save is step 5
      raise RuntimeError("killed")
    return real_step(*args, **kwargs)

  monkeypatch.setattr(training, "train_step_jit", crashing_step)
  with pytest.raises(RuntimeError, match="killed"):
    training.train_and_evaluate(DIGITS, tmp_path, log=_quiet)
  monkeypatch.setattr(training, "train_step_jit", real_step)
  assert _checkpoint(tmp_path)[0] == 23 + 5
  lines = []
  summary = training.train_and_evaluate(DIGITS, tmp_path, resume=True, log=lines.append)
  assert any("resumed at epoch 2, step 5 of 23" in line for line in lines)
  _assert_same_params(_checkpoint(tmp_path)[1], _checkpoint(straight[0])[1])
  assert summary["test_accuracy"] == straight[1]["test_accuracy"]
  records = metric_writers.read_records(tmp_path)
  assert [r.get("epoch") for r in records] == [1, 2, None] and records[-1]["final"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_the_step_and_resume_is_exact(straight, tmp_path, signum):
  lines, before = [], signal.getsignal(signal.SIGINT)

  def log(line):
    lines.append(line)
    if line.startswith("devices:"):  # before the first step: it finishes, then stops
      signal.raise_signal(signum)

  with pytest.raises(stopping.TrainingInterrupted) as stop:
    training.train_and_evaluate(DIGITS, tmp_path, resume=True, log=log)
  assert lines[0] == f"no checkpoint in {tmp_path}: starting a new run"
  assert (stop.value.epoch, stop.value.step, stop.value.exit_code) == (1, 1, 128 + signum)
  assert "interrupted at epoch 1, step 1 of 23; rerun with --resume" in str(stop.value)
  assert _checkpoint(tmp_path)[0] == 1
  assert signal.getsignal(signal.SIGINT) is before  # handlers restored
  summary = training.train_and_evaluate(DIGITS, tmp_path, resume=True, log=_quiet)
  _assert_same_params(_checkpoint(tmp_path)[1], _checkpoint(straight[0])[1])
  assert summary["test_accuracy"] == straight[1]["test_accuracy"]
  assert summary["train_time_s"] <= summary["wall_time_s"]


def test_a_time_budget_stop_inside_the_first_epoch_says_where_it_stopped(tmp_path):
  lines = []
  cut = dataclasses.replace(DIGITS, time_budget_s=1e-3)  # exceeded by the first step
  summary = training.train_and_evaluate(cut, tmp_path, log=lines.append)
  assert summary["stopped_by_time_budget"] and summary["steps"] == 1
  assert summary["best_epoch"] == summary["epochs_done"] == 1 / 23 and summary["best_step"] == 1
  assert "(epoch 0.04, step 1) (stopped by the time budget)" in lines[-1]
  records = metric_writers.read_records(tmp_path)
  assert [r.get("epoch") for r in records] == [1 / 23, None]
  assert summary["train_time_s"] <= summary["wall_time_s"]


def test_random_shifts_translate_each_image_with_zeros_shifted_in(rng):
  images = rng.random((6, 5, 7, 1)).astype(np.float32)
  shifted = training.random_shifts(images, 2, np.random.default_rng(0))
  dys, dxs = np.random.default_rng(0).integers(-2, 3, size=(6, 2)).T
  for image, out, dy, dx in zip(images, shifted, dys, dxs, strict=True):
    expected = np.zeros_like(image)
    src = image[max(0, -dy) : 5 - max(0, dy), max(0, -dx) : 7 - max(0, dx)]
    expected[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    np.testing.assert_array_equal(out, expected)


def test_an_augmented_run_resumes_exactly(tmp_path):
  augmented = dataclasses.replace(DIGITS, num_epochs=1, augment_shift=2)
  straight = training.train_and_evaluate(augmented, tmp_path / "straight", log=_quiet)

  def log(line):
    if line.startswith("devices:"):
      signal.raise_signal(signal.SIGINT)

  with pytest.raises(stopping.TrainingInterrupted):
    training.train_and_evaluate(augmented, tmp_path / "cut", log=log)
  resumed = training.train_and_evaluate(augmented, tmp_path / "cut", resume=True, log=_quiet)
  _assert_same_params(_checkpoint(tmp_path / "cut")[1], _checkpoint(tmp_path / "straight")[1])
  assert resumed["test_accuracy"] == straight["test_accuracy"]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_best_checkpoint(tmp_path, monkeypatch):
  calls = 0
  real_step = training.train_step_jit

  def diverging_step(*args, **kwargs):
    nonlocal calls
    calls += 1
    state, metrics = real_step(*args, **kwargs)
    if calls == 30:  # epoch 2, step 7; the last periodic save is epoch 2, step 5
      metrics = {**metrics, "loss": np.float32(np.nan)}
    return state, metrics

  monkeypatch.setattr(training, "train_step_jit", diverging_step)
  logged = []
  summary = training.train_and_evaluate(DIGITS, tmp_path, log=logged.append)
  assert calls == 30 and summary["diverged_at_step"] == 30 and summary["steps"] == 30
  assert any("diverged" in line and "step 30" in line for line in logged)
  records = metric_writers.read_records(tmp_path)
  assert [r.get("epoch") for r in records[:-1]] == [1]  # no validation of the diverged state
  assert records[-1]["final"] and records[-1]["diverged_at_step"] == 30
  # The test accuracy is the epoch-1 checkpoint's, the only validation before the divergence.
  assert summary["best_epoch"] == 1 and 0.9 < summary["test_accuracy"] <= 1
  assert _checkpoint(tmp_path)[0] == 23 + 5 and _checkpoint(tmp_path, "best")[0] == 23


def test_the_example_exits_with_3_when_the_loss_diverges(tmp_path):
  run = subprocess.run(
    [sys.executable, str(SCRIPT), *DIGITS_FLAGS, "--lr", "1e6", "--workdir", str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert run.returncode == 3, run.stderr
  assert "the run diverged" in run.stdout
  final = json.loads(run.stdout.strip().splitlines()[-1])
  assert final["test_accuracy"] is None and final["diverged_at_step"] is not None
  assert final["diverged_at_step"] <= 23  # within the first epoch: no validation came before


def test_a_run_that_stays_finite_records_no_divergence(straight):
  assert straight[1]["diverged_at_step"] is None


def test_the_second_signal_is_not_caught():
  before = signal.getsignal(signal.SIGINT)  # Python's handler, or SIG_IGN in a background job
  with stopping.handle_signals() as stop:
    assert not stop
    signal.raise_signal(signal.SIGINT)
    assert stop.signum == signal.SIGINT
    # The operating system's action again: a second Ctrl-C ends the process at once.
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  assert signal.getsignal(signal.SIGINT) is before


def test_extending_a_finished_run_supersedes_its_final_record(straight, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(straight[0], workdir)
  longer = dataclasses.replace(DIGITS, num_epochs=3)
  summary = training.train_and_evaluate(longer, workdir, resume=True, log=_quiet)
  records = metric_writers.read_records(workdir)
  assert [r.get("epoch") for r in records] == [1, 2, 3, None]
  assert [r for r in records if r.get("final")] == [json.loads(json.dumps(summary))]
  assert summary["steps"] == 3 * 23 and summary["train_time_s"] <= summary["wall_time_s"]


@pytest.mark.parametrize("grid", [(9,), (1, 3, 9)])
def test_a_finished_run_chooses_the_test_vote_k_on_validation(straight, tmp_path, grid):
  workdir = tmp_path / "run"
  shutil.copytree(straight[0], workdir)
  with_grid = dataclasses.replace(DIGITS, eval_k_grid=grid)
  summary = training.train_and_evaluate(with_grid, workdir, resume=True, log=_quiet)
  assert summary["steps"] == straight[1]["steps"]  # nothing trained: only the evaluation
  by_k = {int(k): acc for k, acc in summary["val_accuracy_by_eval_k"].items()}
  assert sorted(by_k) == sorted(grid)
  # k = 9 is the vote of training's validations: the same accuracy as the best epoch's.
  assert by_k[9] == straight[1]["best_val_accuracy"]
  best = max(by_k.values())
  assert summary["test_eval_k"] == min(k for k, acc in by_k.items() if acc == best)
  if grid == (9,):
    assert summary["test_accuracy"] == straight[1]["test_accuracy"]
  assert straight[1]["test_eval_k"] == 9 and straight[1]["val_accuracy_by_eval_k"] is None


def test_an_eval_k_grid_below_one_is_rejected_before_training(tmp_path):
  with pytest.raises(ValueError, match="eval_k_grid must hold integers >= 1"):
    training.train_and_evaluate(dataclasses.replace(DIGITS, eval_k_grid=(3, 0)), tmp_path)
  assert not any(tmp_path.iterdir())


def test_resume_with_a_changed_field_names_it_and_changes_nothing(straight):
  workdir, _ = straight
  before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
  changed = dataclasses.replace(DIGITS, k=5, seed=3, num_epochs=7, time_budget_s=60.0)
  with pytest.raises(checkpoints.ConfigMismatchError) as err:
    training.train_and_evaluate(changed, workdir, resume=True, log=_quiet)
  message = str(err.value)
  assert "k: saved 9, now 5" in message and "seed: saved 0, now 3" in message
  assert "num_epochs" not in message and "time_budget_s" not in message
  assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before


@pytest.mark.parametrize(
  ("change", "fields"),
  [
    (dict(dataset="mnist"), ["dataset"]),
    (dict(tau=0.5, estimator="simple"), ["estimator", "tau"]),
    (dict(num_queries=25, learning_rate=0.01), ["learning_rate", "num_queries"]),
    (dict(num_epochs=9, time_budget_s=5.0, num_devices=2, progress=True), []),
    (dict(eval_k=3, augment_shift=2), ["augment_shift", "eval_k"]),
  ],
)
def test_config_differences(change, fields):
  saved = dataclasses.asdict(DIGITS)
  found = checkpoints.config_differences(saved, dataclasses.replace(DIGITS, **change))
  assert [line.split(":")[0] for line in found] == fields


def test_a_field_newer_than_the_saved_run_counts_as_its_default():
  saved = dataclasses.asdict(DIGITS)
  del saved["augment_shift"], saved["eval_k"]
  assert checkpoints.config_differences(saved, DIGITS) == []
  found = checkpoints.config_differences(saved, dataclasses.replace(DIGITS, eval_k=3))
  assert found == ["eval_k: saved None, now 3"]


def test_cosine_schedule_fixes_the_epoch_count():
  cosine = dataclasses.replace(DIGITS, lr_schedule="cosine")
  found = checkpoints.config_differences(
    dataclasses.asdict(cosine), dataclasses.replace(cosine, num_epochs=4)
  )
  assert found == ["num_epochs: saved 2, now 4"]


def _start(args, **kwargs):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, text=True, **kwargs)


@pytest.mark.slow
def test_ctrl_c_on_the_example_saves_and_resume_matches_an_uninterrupted_run(straight, tmp_path):
  flags = [*DIGITS_FLAGS, "--workdir", "run"]  # relative to the working directory
  run = _start(flags, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  for line in run.stdout:
    if line.startswith("devices:"):
      run.send_signal(signal.SIGINT)
      break
  _, stderr = run.communicate(timeout=300)
  assert run.returncode == 130, stderr
  assert "Traceback" not in stderr
  (message,) = [line for line in stderr.splitlines() if "interrupted" in line]
  assert message.startswith("SIGINT: interrupted at epoch 1, step ")
  assert message.endswith("; rerun with --resume")
  step = int(message.split("step ")[1].split(" ")[0])
  assert 1 <= step < 23 and _checkpoint(tmp_path / "run")[0] == step
  resumed = subprocess.run(
    [sys.executable, str(SCRIPT), *flags, "--resume"],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert resumed.returncode == 0, resumed.stderr
  assert f"resumed at epoch 1, step {step} of 23" in resumed.stdout
  _assert_same_params(_checkpoint(tmp_path / "run")[1], _checkpoint(straight[0])[1])
  assert (
    json.loads(resumed.stdout.splitlines()[-1])["test_accuracy"] == straight[1]["test_accuracy"]
  )


def test_the_example_rejects_a_resume_with_a_changed_field(straight):
  run = subprocess.run(
    [
      sys.executable,
      str(SCRIPT),
      *DIGITS_FLAGS,
      "--workdir",
      str(straight[0]),
      "--resume",
      "--tau",
      "4",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert run.returncode == 2
  assert run.stderr.startswith("error: cannot resume the run in ")
  assert "tau: saved 1.0, now 4.0" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_example_cli_on_an_mnist_subset_data_parallel(tmp_path):
  workdir = tmp_path / "run"
  flags = [
    *("--max_train_examples", "1000", "--max_test_examples", "500", "--validation_size", "300"),
    *("--epochs", "1", "--time_budget_min", "0", "--no_progress", "--workdir", str(workdir)),
    *("--eval_k_grid", "1", "9"),
  ]
  run = subprocess.run(
    [sys.executable, str(SCRIPT), *flags], capture_output=True, text=True, timeout=600
  )
  assert run.returncode == 0, run.stderr
  assert "data: idx:" in run.stdout and "train 1000, validation 300, test 500" in run.stdout
  assert "val acc" in run.stdout and "test accuracy" in run.stdout
  records = metric_writers.read_records(workdir)
  assert [r.get("epoch") for r in records] == [1, None]
  assert records[-1]["final"] and records[-1]["test_accuracy"] > 0.5
  assert sorted(records[-1]["val_accuracy_by_eval_k"]) == ["1", "9"]
  assert f"the test votes with k = {records[-1]['test_eval_k']}" in run.stdout
  assert _checkpoint(workdir, "best")[0] == _checkpoint(workdir)[0] == 10
  # Without --host_devices the script takes one CPU device per core (at most 8) and the
  # mesh the most of them that divide the batch of 100.
  cores = min(len(os.sched_getaffinity(0)), 8)
  expected = max(d for d in range(1, cores + 1) if 100 % d == 0)
  assert f"devices: {expected} x cpu" in run.stdout and records[-1]["devices"] == expected


def test_example_help_lists_flags():
  run = subprocess.run(
    [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120
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
    "--checkpoint_every",
    "--eval_k_grid",
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


def _toy_batch():
  """10 queries and 30 neighbours of 8x8 noise images in 3 classes."""
  images = jax.random.normal(jax.random.key(1), (40, 8, 8, 1))
  labels = jnp.arange(40) % 3
  return {
    "query_images": images[:10],
    "query_labels": labels[:10],
    "neighbor_images": images[10:],
    "neighbor_labels": labels[10:],
  }


def _one_step(estimator, **kw):
  """The parameters after one train_step of `estimator` from the same state and batch."""
  config = dataclasses.replace(DIGITS, estimator=estimator)
  state = training.create_train_state(jax.random.key(0), config, (8, 8, 1), steps_per_epoch=1)
  batch = _toy_batch()
  state, metrics = training.train_step_jit(
    state, batch, jax.random.key(2), 1.0, k=3, estimator=estimator, **kw
  )
  assert np.isfinite(float(metrics["loss"]))
  return jax.tree_util.tree_leaves(state.params)


def test_relaxed_and_straight_through_train_the_same_step():
  # The dKNN loss is linear in the k-hot: the two estimators share their gradient bit for bit.
  _assert_same_params(_one_step("relaxed"), _one_step("straight_through"))


@pytest.mark.parametrize(
  "estimator,kw",
  [
    ("simple", {}),
    ("imle", dict(lam=1000.0)),
    ("score_function", dict(num_samples=2)),
    ("l2x", {}),
  ],
)
def test_every_other_estimator_trains_a_different_step(estimator, kw):
  relaxed = _one_step("relaxed")
  other = _one_step(estimator, **kw)
  init = jax.tree_util.tree_leaves(
    training.create_train_state(jax.random.key(0), DIGITS, (8, 8, 1), steps_per_epoch=1).params
  )
  assert any(not np.array_equal(a, b) for a, b in zip(other, init, strict=True)), "no update"
  assert any(not np.allclose(a, b) for a, b in zip(other, relaxed, strict=True))


def test_the_estimator_flags_reach_the_config():
  args = train_mnist.parse_args(["--estimator", "imle", "--lam", "50"])
  config = train_mnist.make_config(args)
  assert (config.estimator, config.lam) == ("imle", 50.0)
  with pytest.raises(SystemExit):
    train_mnist.parse_args(["--estimator", "gumbel"])


_VGG_LAYERS = {"PatchConv_0", "Conv_0", "Conv_1", "Conv_2", "Dense_0"}


@pytest.mark.parametrize(
  "model,layers",
  [
    ("vgg", _VGG_LAYERS),
    ("vgg_norm", _VGG_LAYERS | {f"GroupNorm_{i}" for i in range(4)} | {"LayerNorm_0"}),
  ],
)
def test_the_model_flag_builds_the_vgg_net_and_it_trains(model, layers):
  config = train_mnist.make_config(train_mnist.parse_args(["--config", "digits", "--model", model]))
  assert config.model == model
  state = training.create_train_state(jax.random.key(0), config, (8, 8, 1), steps_per_epoch=1)
  assert set(state.params) == layers
  batch = _toy_batch()
  new, metrics = training.train_step_jit(state, batch, jax.random.key(2), 1.0, k=3)
  assert np.isfinite(float(metrics["loss"]))
  before, after = jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(new.params)
  assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
  with pytest.raises(SystemExit):
    train_mnist.parse_args(["--model", "resnet"])
  with pytest.raises(ValueError, match="model must be"):
    training.make_model((28, 28, 1), "resnet")
