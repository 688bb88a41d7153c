"""The VAE example: its KL terms against enumeration, the estimators' updates, short runs on
the harness, exact resume, the CLI."""

import dataclasses
import itertools
import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness import checkpoints, image_data, metric_writers
from scipy.special import logsumexp

import subsets_jax as sj
from vae import configs, data
from vae import train as training

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "train_vae.py"
SMALL = configs.TrainConfig(
  batch_size=50,
  num_epochs=2,
  checkpoint_every_steps=3,
  test_draws=3,
  eval_batch_size=100,
  progress=False,
)
VARIANTS = [
  ("simple", None),
  ("imle", None),
  ("score_function", "exactly_k"),
  ("relaxed", None),
  ("straight_through", None),
  ("l2x", None),
  ("score_function", "gumbel_topk"),
]


def _quiet(_):
  pass


@pytest.fixture(scope="module")
def splits():
  mnist = image_data.load("mnist", use_tfds=False)
  images = mnist.train_images.reshape(-1, 784)
  return data.Splits(
    train=images[:200], val=images[200:300], test=images[300:400], source="mnist subset"
  )


def _sets(n, k):
  return np.array(list(itertools.combinations(range(n), k)))


def _exactly_k_probs(logits, k):
  sets = _sets(len(logits), k)
  log_w = logits[sets].sum(1)
  return sets, np.exp(log_w - logsumexp(log_w))


def _gumbel_topk_probs(logits, k):
  """Unordered-set probabilities of the Plackett-Luce draw, by enumerating the orders."""
  w = np.exp(logits - logits.max())
  sets = _sets(len(logits), k)
  probs = []
  for s in sets:
    total = 0.0
    for order in itertools.permutations(s):
      p, rest = 1.0, w.sum()
      for i in order:
        p, rest = p * w[i] / rest, rest - w[i]
      total += p
    probs.append(total)
  return sets, np.array(probs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_and_notebook_kl_against_enumeration(seed):
  n, k = 12, 4
  logits = np.random.default_rng(seed).normal(size=n) * 1.5
  sets, p = _exactly_k_probs(logits, k)
  log_prior = -math.log(math.comb(n, k))
  kl = float(np.sum(p * (np.log(p) - log_prior)))
  # The notebook's KL: its entropy is that of items 10..n only (indices 9..11).
  tails = {}
  for s, q in zip(sets, p, strict=True):
    key = tuple(i for i in s if i >= training.NOTEBOOK_HEAD)
    tails[key] = tails.get(key, 0.0) + q
  tail = np.array(list(tails.values()))
  notebook = -log_prior + float(np.sum(tail * np.log(tail)))
  x = jnp.asarray(logits[None], jnp.float32)
  np.testing.assert_allclose(float(training.exact_kl(x, k)), kl, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(training.notebook_kl(x, k)), notebook, rtol=1e-4)
  assert notebook > kl + 0.1  # the omitted conditional entropy is not small


def test_the_gumbel_topk_kl_estimate_is_unbiased(key):
  n, k, draws = 6, 3, 20_000
  logits = np.array([1.0, -0.5, 0.3, 2.0, -1.0, 0.0])
  _, p = _gumbel_topk_probs(logits, k)
  kl = float(np.sum(p * (np.log(p) + math.log(math.comb(n, k)))))
  x = jnp.asarray(logits[None], jnp.float32)

  def estimate(key):
    z = sj.khot(sj.gumbel_topk(key, x, k), n)
    return training._set_kl(x, z, k)

  values = np.asarray(jax.vmap(estimate)(jax.random.split(key, draws)), np.float64)
  tolerance = 5 * values.std() / math.sqrt(draws)
  assert abs(values.mean() - kl) < tolerance, (values.mean(), kl, tolerance)


@pytest.mark.parametrize("draws", [2, 4])
def test_the_gumbel_topk_kl_is_the_library_score_function(draws, key):
  logits = jax.random.normal(jax.random.key(3), (3, 8)) * 1.5
  k = 3

  def library(x):
    def f(z):
      return training._set_kl(x, z, k)

    return sj.expectation(
      f, key, x, k, estimator="score_function", family="gumbel_topk", num_samples=draws
    )

  ours, grad = jax.value_and_grad(lambda x: training.gumbel_topk_kl(key, x, k, draws=draws))(logits)
  expected, expected_grad = jax.value_and_grad(library)(logits)
  np.testing.assert_allclose(float(ours), float(expected), rtol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(grad).max()) > 0.1  # the comparison is not of zeros


def test_the_gumbel_topk_kl_gradient_is_unbiased(key):
  n, k, estimates = 6, 3, 20_000
  logits = np.array([1.0, -0.5, 0.3, 2.0, -1.0, 0.0])

  def exact(x):
    _, p = _gumbel_topk_probs(x, k)
    return float(np.sum(p * (np.log(p) + math.log(math.comb(n, k)))))

  h = 1e-5  # central differences of the enumerated KL, float64
  expected = np.array(
    [(exact(logits + h * e) - exact(logits - h * e)) / (2 * h) for e in np.eye(n)]
  )
  x = jnp.asarray(logits[None], jnp.float32)

  def gradient(key):
    return jax.grad(lambda x: training.gumbel_topk_kl(key, x, k, draws=2))(x)[0]

  grads = np.asarray(jax.vmap(gradient)(jax.random.split(key, estimates)), np.float64)
  tolerance = 5 * grads.std(axis=0) / math.sqrt(estimates)
  error = np.abs(grads.mean(axis=0) - expected)
  assert np.all(error < tolerance), (grads.mean(axis=0), expected, tolerance)
  assert np.abs(expected).max() > 10 * tolerance.max()  # the test can tell a wrong gradient


@pytest.fixture(scope="module")
def updates(splits):
  """One training step of every estimator from the same state, batch and key."""
  base = dataclasses.replace(SMALL, latent_groups=4, latent_items=8, k=3)
  x = splits.train[:20]
  out = {}
  for estimator, family in VARIANTS:
    config = dataclasses.replace(base, estimator=estimator, family=family)
    task = training.VAETask(config, splits)
    state = training.create_train_state(jax.random.key(0), config)
    new, metrics = training.train_step(
      state, x, jax.random.key(1), 1.0, 10.0, config_static=task.static
    )
    out[(estimator, family)] = (state, new, metrics)
  return out


@pytest.mark.slow
def test_every_estimator_gives_its_own_update(updates):
  flat = {}
  for name, (state, new, metrics) in updates.items():
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["kl"])), name
    delta = jax.tree.map(lambda a, b: np.asarray(a - b), new.params, state.params)
    flat[name] = np.concatenate([d.ravel() for d in jax.tree.leaves(delta)])
    assert np.any(flat[name] != 0), name
  # The loss is nonlinear in the latents: relaxed and straight-through differ here (they
  # coincide for the dKNN loss, which is linear in the k-hot vector).
  for a, b in itertools.combinations(flat, 2):
    assert not np.array_equal(flat[a], flat[b]), (a, b)


@pytest.fixture(scope="module")
def straight(splits, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("vae")
  return workdir, training.train_and_evaluate(SMALL, workdir, log=_quiet, splits=splits)


def test_a_short_run_records_its_metrics(straight):
  workdir, summary = straight
  records = metric_writers.read_records(workdir)
  assert [r["epoch"] for r in records[:-1]] == [1, 2]
  assert records[-1]["final"] and records[-1]["test_loss"] == summary["test_loss"]
  assert summary["steps"] == 8 and summary["test_draws"] == 3
  assert 0 < summary["test_kl"] < 20 * math.log(math.comb(20, 10))
  assert summary["test_kl_mc_se"] == 0  # exact KL for SIMPLE
  assert 0 < summary["test_loss_mc_se"] < 1
  assert summary["best_val_loss"] == min(r["val_loss"] for r in records[:-1])
  assert np.isfinite(summary["test_objective_loss"])


@pytest.mark.parametrize("estimator", ["simple", "straight_through"])
def test_the_objective_of_an_exact_sampler_estimates_the_test_loss(estimator, splits):
  """SIMPLE and straight-through train on exact samples of the model: their objective and
  the test loss estimate the same mean (the objective's KL for straight-through is the
  score-function estimate, unbiased)."""
  config = dataclasses.replace(SMALL, estimator=estimator)
  task = training.VAETask(config, splits)
  state = training.create_train_state(jax.random.key(0), config)
  x, draws = splits.test, 16
  objective = np.stack(
    [
      np.asarray(
        training.objective_step(
          state.params, x, jax.random.key(10 + d), 1.0, 10.0, config_static=task.static
        ),
        np.float64,
      )
      for d in range(draws)
    ]
  ).mean(0)
  loss = np.asarray(
    training.eval_step(state.params, x, jax.random.key(1), config_static=task.static, draws=draws)[
      0
    ],
    np.float64,
  )
  difference = objective - loss
  tolerance = 5 * difference.std(ddof=1) / math.sqrt(len(x))
  assert abs(difference.mean()) < tolerance, (difference.mean(), tolerance)


class _Crash(Exception):
  pass


@pytest.mark.slow
def test_resume_after_a_crash_is_exact(straight, splits, tmp_path, monkeypatch):
  _, reference = straight
  real_step = training.VAETask.train_step

  def crashing(self, state, epoch, step):
    if (epoch, step) == (1, 2):
      raise _Crash
    return real_step(self, state, epoch, step)

  monkeypatch.setattr(training.VAETask, "train_step", crashing)
  with pytest.raises(_Crash):
    training.train_and_evaluate(SMALL, tmp_path, log=_quiet, splits=splits)
  monkeypatch.setattr(training.VAETask, "train_step", real_step)
  resumed = training.train_and_evaluate(SMALL, tmp_path, resume=True, log=_quiet, splits=splits)
  for name in ("test_loss", "test_kl", "best_val_loss", "best_epoch", "steps"):
    assert resumed[name] == reference[name], name


def test_resume_refuses_a_changed_estimator(straight, splits):
  workdir, _ = straight
  changed = dataclasses.replace(SMALL, estimator="imle")
  with pytest.raises(checkpoints.ConfigMismatchError, match="estimator: saved 'simple'"):
    training.train_and_evaluate(changed, workdir, resume=True, log=_quiet, splits=splits)


def test_the_notebook_kl_run_selects_on_its_objective(splits):
  task = training.VAETask(dataclasses.replace(SMALL, kl="notebook"), splits)
  metrics = task.validate(task.init_state())
  assert task.val_metric == "val_notebook_loss"
  # The same draws: the losses differ by the omitted entropy, positive for every image.
  assert metrics["val_notebook_loss"] > metrics["val_loss"] + 20 * 0.1


@pytest.mark.parametrize(
  ("changes", "message"),
  [
    ({"family": "exactly_k"}, "family applies to estimator 'score_function' only"),
    ({"estimator": "relaxed", "kl": "notebook"}, "kl 'notebook' is the exactly-k family's"),
    ({"kl_samples": 1}, "kl_samples must be >= 2"),
    ({"k": 21}, "k must be in"),
  ],
)
def test_bad_configurations_are_refused_early(changes, message, splits):
  with pytest.raises(ValueError, match=message):
    training.VAETask(dataclasses.replace(SMALL, **changes), splits)


def test_the_cli_help_lists_every_config_field_and_bad_input_exits_2(capsys):
  run = subprocess.run(
    [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120
  )
  assert run.returncode == 0
  for field in dataclasses.fields(configs.TrainConfig):
    assert f"--{field.name}" in run.stdout
  sys.path.insert(0, str(SCRIPT.parent))
  import train_vae

  assert train_vae.main(["--estimator", "relaxed", "--family", "gumbel_topk"]) == 2
  assert "family applies to estimator 'score_function' only" in capsys.readouterr().err


def test_the_cli_runs_a_short_training(tmp_path, capsys):
  sys.path.insert(0, str(SCRIPT.parent))
  import train_vae

  # The shapes and draws of SMALL: the run reuses the steps compiled by the tests above.
  flags = ["--train_size", "200", "--num_epochs", "1", "--val_size", "100", "--test_size", "100"]
  flags += ["--batch_size", str(SMALL.batch_size), "--test_draws", str(SMALL.test_draws)]
  flags += ["--eval_batch_size", str(SMALL.eval_batch_size)]
  flags += ["--no-progress", "--workdir", str(tmp_path)]
  assert train_vae.main(flags) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert np.isfinite(result["test_loss"]) and result["diverged_at_step"] is None
  config = metric_writers.read_records(tmp_path)[-1]["config"]
  assert (config["train_size"], config["val_size"], config["test_size"]) == (200, 100, 100)
