"""Learning to explain (L2X) on synthetic data: an explainer selects k of 10 features through
`sj.expectation`, an approximator predicts the label from them.

`create_train_state`, `train_step`, `eval_step` and `train_and_evaluate(config, workdir)`, on
the examples' shared harness (`harness.loop`).
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state
from harness import loop, optimizers

import subsets_jax as sj

from . import data
from .configs import TrainConfig
from .models import Approximator, Explainer, l2_penalty


class TrainState(train_state.TrainState):
  batch_stats: Any = None  # the approximator's BatchNorm statistics


def create_train_state(key: jax.Array, config: TrainConfig) -> TrainState:
  """Both networks' parameters, the approximator's BatchNorm statistics, Adam's state."""
  explainer_key, approximator_key = jax.random.split(key)
  x = jnp.zeros((1, data.NUM_FEATURES), jnp.float32)
  explainer = Explainer(config.activation).init(explainer_key, x)
  approximator = Approximator(config.activation).init(approximator_key, x, train=False)
  params = {"explainer": explainer["params"], "approximator": approximator["params"]}
  return TrainState.create(
    apply_fn=None,
    params=params,
    tx=optimizers.adam(config.learning_rate),
    batch_stats=approximator["batch_stats"],
  )


def _top_k_mask(logits: jax.Array, k: int) -> jax.Array:
  """The explanation: the k-hot of the k largest logits."""
  return sj.khot(jax.lax.top_k(logits, k)[1], logits.shape[-1], dtype=logits.dtype)


def _cross_entropy(class_logits: jax.Array, p: jax.Array) -> jax.Array:
  """Per-row cross-entropy of two class logits against the soft label (1 - p, p)."""
  log_q = jax.nn.log_softmax(class_logits)
  return -(p * log_q[..., 1] + (1 - p) * log_q[..., 0])


@functools.partial(
  jax.jit, static_argnames=("activation", "k", "estimator", "num_samples", "family")
)
def train_step(state, x, p, key, tau, lam, weight_decay, **static):
  """One Adam step on E_S[cross-entropy(approximator(x * z_S), p)] + the L2 penalty.

  The expectation over the explainer's k-subsets and its gradient are `sj.expectation`'s
  with the chosen estimator; each row's loss is its own value (per-row `f`). The
  approximator's BatchNorm normalises with each draw's batch statistics; its running
  statistics are updated on the explanation the evaluation uses, the top-k mask.
  """
  explainer, approximator = Explainer(static["activation"]), Approximator(static["activation"])
  k = static["k"]

  def loss_fn(params):
    logits = explainer.apply({"params": params["explainer"]}, x)
    variables = {"params": params["approximator"], "batch_stats": state.batch_stats}

    def row_loss(z):
      class_logits, _ = approximator.apply(variables, x * z, train=True, mutable=["batch_stats"])
      return _cross_entropy(class_logits, p)

    per_row = sj.expectation(
      row_loss,
      key,
      logits,
      k,
      estimator=static["estimator"],
      num_samples=static["num_samples"],
      tau=tau,
      family=static["family"],
      lam=lam,
    )
    loss = jnp.mean(per_row)
    return loss + weight_decay * l2_penalty(params), (loss, logits)

  grads, (loss, logits) = jax.grad(loss_fn, has_aux=True)(state.params)
  mask = jax.lax.stop_gradient(_top_k_mask(logits, k))
  _, updates = approximator.apply(
    {"params": state.params["approximator"], "batch_stats": state.batch_stats},
    x * mask,
    train=True,
    mutable=["batch_stats"],
  )
  state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
  return state, {"loss": loss}


def median_ranks(logits: jax.Array, relevant: jax.Array) -> jax.Array:
  """Per row, the median over the relevant features of their rank (1: the largest logit)."""
  ranks = jnp.argsort(jnp.argsort(-logits, axis=-1), axis=-1) + 1
  return jnp.nanmedian(jnp.where(relevant, ranks.astype(jnp.float32), jnp.nan), axis=-1)


@functools.partial(jax.jit, static_argnames=("activation", "k"))
def eval_step(state, x, labels, relevant, *, activation, k):
  """Per-row median rank of the relevant features and post-hoc correctness of a batch."""
  logits = Explainer(activation).apply({"params": state.params["explainer"]}, x)
  median_rank = median_ranks(logits, relevant)
  variables = {"params": state.params["approximator"], "batch_stats": state.batch_stats}
  class_logits = Approximator(activation).apply(variables, x * _top_k_mask(logits, k), train=False)
  correct = jnp.argmax(class_logits, axis=-1) == labels
  return median_rank, correct


class L2XTask:
  """The L2X run for `harness.loop`."""

  val_metric = "val_posthoc_accuracy"
  higher_is_better = True

  def __init__(self, config: TrainConfig):
    if config.estimator not in sj.ESTIMATORS:
      raise ValueError(f"estimator must be one of {sj.ESTIMATORS}; got {config.estimator!r}.")
    self.config = config
    self.train = data.make(config.dataset, config.train_size, config.data_seed)
    self.val = data.make(config.dataset, config.val_size, config.data_seed + 1)
    self.explain = data.make(config.dataset, config.explain_size, config.data_seed + 2)
    root = jax.random.key(config.seed)
    self.init_key = jax.random.fold_in(root, 0)
    self.batches = loop.Batches(
      config.seed, config.train_size, config.batch_size, jax.random.fold_in(root, 1)
    )
    self.steps_per_epoch = self.batches.steps_per_epoch
    if self.steps_per_epoch < 1:
      raise ValueError("train_size must hold at least one batch.")
    self.static = dict(
      activation=config.activation,
      k=config.subset_size,
      estimator=config.estimator,
      num_samples=config.draws,
      family=config.family,
    )

  def describe(self) -> str:
    c = self.config
    return (
      f"data: {c.dataset}, train {c.train_size}, validation {c.val_size}, explained "
      f"{c.explain_size}; k = {c.subset_size}; estimator {c.estimator} ({c.draws} draws); "
      f"{self.steps_per_epoch} steps/epoch"
    )

  def init_state(self) -> TrainState:
    return create_train_state(self.init_key, self.config)

  def train_step(self, state, epoch: int, step: int):
    c = self.config
    rows, key = self.batches(epoch, step)
    state, metrics = train_step(
      state,
      self.train.x[rows],
      self.train.p[rows],
      key,
      c.tau,
      c.lam,
      c.weight_decay,
      **self.static,
    )
    return state, {"loss": float(metrics["loss"])}

  def _evaluate(self, state, dataset: data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    ranks, correct = [], []
    size = self.config.eval_batch_size
    for start in range(0, len(dataset.p), size):
      part = slice(start, start + size)
      r, c = eval_step(
        state,
        dataset.x[part],
        dataset.labels[part],
        dataset.relevant[part],
        activation=self.config.activation,
        k=self.config.subset_size,
      )
      ranks.append(np.asarray(r))
      correct.append(np.asarray(c))
    return np.concatenate(ranks), np.concatenate(correct)

  def validate(self, state) -> dict[str, float]:
    ranks, correct = self._evaluate(state, self.val)
    return {"val_posthoc_accuracy": float(correct.mean()), "val_median_rank": float(ranks.mean())}

  def test(self, state) -> dict[str, Any]:
    ranks, correct = self._evaluate(state, self.explain)
    return {
      "median_rank": float(ranks.mean()),
      "median_rank_sd": float(ranks.std()),
      "posthoc_accuracy": float(correct.mean()),
      "optimal_median_rank": (self.config.subset_size + 1) / 2,
    }


def train_and_evaluate(
  config: TrainConfig,
  workdir: str | pathlib.Path,
  *,
  resume: bool = False,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Trains the explainer and approximator; the final record holds the explanation metrics."""
  summary = loop.train_and_evaluate(L2XTask(config), config, workdir, resume=resume, log=log)
  summary["dataset"], summary["estimator"] = config.dataset, config.estimator
  return summary
