"""A discrete VAE on MNIST whose latents are k-subsets, trained with any `sj.expectation`
estimator.

Each image's encoder gives `latent_groups` rows of `latent_items` logits; each row is a
k-subset latent (a k-hot vector). The loss per image is the negative ELBO: the summed binary
cross-entropy of the decoder's pixels against the image, plus the KL divergence from the
encoder's distribution over subsets to the uniform prior over k-subsets.

- The exactly-k family ("simple", "imle", "score_function" with family "exactly_k"): the
  KL is exact, :math:`\\log\\binom{n}{k} - H`, with `sj.exactly_k_entropy`.
- The Gumbel-top-k family ("relaxed", "straight_through", "l2x", "score_function" with
  family "gumbel_topk"): the KL is the expectation of :math:`\\log q(S) + \\log\\binom{n}{k}`
  over the sampled set, with the exact `sj.unordered_subset_log_prob`; training estimates
  its gradient with the score function (leave-one-out baseline), evaluation averages it over
  draws and reports its Monte-Carlo standard error.

`create_train_state`, `train_step`, `eval_step` and `train_and_evaluate(config, workdir)`, on
the examples' shared harness (`harness.loop`).
"""

from __future__ import annotations

import functools
import math
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from harness import loop, optimizers

import subsets_jax as sj

from . import data, models
from .configs import TrainConfig

PIXELS = 784


def create_train_state(key: jax.Array, config: TrainConfig) -> train_state.TrainState:
  """Encoder and decoder parameters and Adam's state."""
  enc_key, dec_key = jax.random.split(key)
  latents = config.latent_groups * config.latent_items
  params = {
    "encoder": models.encoder(config.latent_groups, config.latent_items).init(
      enc_key, jnp.zeros((PIXELS,), jnp.float32)
    )["params"],
    "decoder": models.decoder(PIXELS).init(dec_key, jnp.zeros((latents,), jnp.float32))["params"],
  }
  return train_state.TrainState.create(
    apply_fn=None, params=params, tx=optimizers.adam(config.learning_rate)
  )


def _log_binom(n: int, k: int) -> float:
  return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _reconstruction(params, z: jax.Array, x: jax.Array) -> jax.Array:
  """Summed binary cross-entropy of the decoded `z` [groups, items] against `x` [784]."""
  logits = models.decoder(PIXELS).apply({"params": params}, z.reshape(-1))
  return optax.sigmoid_binary_cross_entropy(logits, x).sum()


def _set_log_ratio(logits: jax.Array, indices: jax.Array, k: int) -> jax.Array:
  """log q(S) - log prior(S) of the sets `indices` [groups, k] under the rows `logits`."""
  log_q = sj.unordered_subset_log_prob(logits, indices).sum()
  return log_q + logits.shape[0] * _log_binom(logits.shape[-1], k)


def _set_kl(logits: jax.Array, z: jax.Array, k: int) -> jax.Array:
  """log q(S) - log prior(S) of the k-hot `z` under the Gumbel-top-k rows `logits`."""
  return _set_log_ratio(logits, jax.lax.top_k(z, k)[1], k)


def gumbel_topk_kl(key: jax.Array, logits: jax.Array, k: int, *, draws: int) -> jax.Array:
  r"""A score-function estimate of the KL from the Gumbel-top-k rows `logits` [groups, items]
  to the uniform prior, summed over the rows.

  With :math:`f_t = \log q(S_t) + \log\binom{n}{k}` over `draws` sets :math:`S_t \sim q`,
  the value is the mean of :math:`f_t` and the gradient
  :math:`\frac{1}{T}\sum_t (1 + f_t - \bar f_{-t}) \nabla \log q(S_t)`, with
  :math:`\bar f_{-t}` the mean of the other draws' f: the same draws, value and gradient as
  `sj.expectation(lambda z: _set_kl(logits, z, k), key, logits, k, estimator="score_function",
  family="gumbel_topk", num_samples=draws)`, to rounding. That call evaluates log q twice
  per draw, once for the score and once inside f; here f's log q is the score's.
  """

  def log_ratio(key):
    return _set_log_ratio(logits, sj.gumbel_topk(key, logits, k), k)

  f = jax.vmap(log_ratio)(jax.random.split(key, draws))
  baseline = (jnp.sum(f) - f) / (draws - 1)
  advantage = jax.lax.stop_gradient(f - baseline)
  return jnp.mean(f + advantage * (f - jax.lax.stop_gradient(f)))


def exact_kl(logits: jax.Array, k: int) -> jax.Array:
  """KL from the exactly-k rows `logits` [groups, items] to the uniform prior, summed."""
  return (_log_binom(logits.shape[-1], k) - sj.exactly_k_entropy(logits, k)).sum()


NOTEBOOK_HEAD = 9  # the notebook's entropy loop starts at item 10


def _log_esp(x: jax.Array) -> jax.Array:
  """`[..., j]` -> `[..., j + 1]`: log e_m(exp(x)) for m = 0..j, for a handful of items.

  `sj.exactly_k_log_partition` gives one order m per call; the notebook's KL needs every
  order at once, which this one pass of the recursion over the 9 or 11 items gives.
  """
  # A large finite floor instead of -inf keeps every gradient finite.
  e = jnp.full((*x.shape[:-1], x.shape[-1] + 1), -1e9, x.dtype).at[..., 0].set(0.0)
  for i in range(x.shape[-1]):
    shifted = jnp.concatenate([jnp.full_like(e[..., :1], -1e9), e[..., :-1]], axis=-1)
    e = jnp.logaddexp(e, x[..., i : i + 1] + shifted)
  return e


def notebook_kl(logits: jax.Array, k: int) -> jax.Array:
  r"""The KL as the DVAE notebook computes it, summed over the rows `logits` [groups, items].

  The notebook's entropy recursion starts at item 10, so its "entropy" is that of items
  10..n only, :math:`H(X_{10..n}) = H - \sum_m P(m) H_m`, with :math:`P(m)` the probability
  that `m` of the first 9 items are chosen and :math:`H_m` the entropy of the exactly-m
  distribution on them; its KL exceeds the exact one by :math:`\sum_m P(m) H_m`.
  """
  head, tail = logits[..., :NOTEBOOK_HEAD], logits[..., NOTEBOOK_HEAD:]
  # H_m = log e_m - <x, grad log e_m>: the tangent of log e_m along x itself.
  log_e_head, along_x = jax.jvp(_log_esp, (head,), (head,))
  log_e_tail = _log_esp(tail)
  ms = np.arange(max(0, k - tail.shape[-1]), min(NOTEBOOK_HEAD, k) + 1)
  terms = log_e_head[..., ms] + log_e_tail[..., k - ms]
  p = jnp.exp(terms - jax.nn.logsumexp(terms, axis=-1, keepdims=True))
  omitted = jnp.sum(p * (log_e_head[..., ms] - along_x[..., ms]), axis=-1)
  return exact_kl(logits, k) + omitted.sum()


def _encode(params, x: jax.Array, groups: int, items: int) -> jax.Array:
  logits = models.encoder(groups, items).apply({"params": params}, x)
  return logits.reshape(groups, items)


def image_loss(params, x, key, tau, lam, *, config_static) -> tuple[jax.Array, jax.Array]:
  """One image's negative-ELBO estimate and its KL part, with the configured gradient."""
  groups, items, k, estimator, family, draws, kl_samples, kl_form = config_static
  logits = _encode(params["encoder"], x, groups, items)
  rec_key, kl_key = jax.random.split(key)
  options = dict(estimator=estimator, num_samples=draws, tau=tau, lam=lam)
  if estimator == "score_function":
    options["family"] = family

  def reconstruction(z):
    return _reconstruction(params["decoder"], z, x)

  if family == "exactly_k":
    kl = (notebook_kl if kl_form == "notebook" else exact_kl)(logits, k)
    return sj.expectation(reconstruction, rec_key, logits, k, **options) + kl, kl
  if estimator == "score_function":  # one estimate of the whole negative ELBO
    # The KL is inside the one estimate; a separate draw reports its value (no gradient).
    z = sj.khot(sj.gumbel_topk(kl_key, logits, k), items, dtype=logits.dtype)
    kl = jax.lax.stop_gradient(_set_kl(logits, z, k))

    def elbo_term(z):
      return reconstruction(z) + _set_kl(logits, z, k)

    return sj.expectation(elbo_term, rec_key, logits, k, **options), kl
  kl = gumbel_topk_kl(kl_key, logits, k, draws=kl_samples)
  return sj.expectation(reconstruction, rec_key, logits, k, **options) + kl, kl


def _image_losses(params, x, key, tau, lam, config_static) -> tuple[jax.Array, jax.Array]:
  """`image_loss` of every image of the batch `x` [B, 784], one key each: ([B], [B])."""
  per_image = functools.partial(image_loss, config_static=config_static)
  keys = jax.random.split(key, x.shape[0])
  return jax.vmap(per_image, in_axes=(None, 0, 0, None, None))(params, x, keys, tau, lam)


@functools.partial(jax.jit, static_argnames=("config_static",))
def train_step(state, x, key, tau, lam, *, config_static):
  """One Adam step on the batch mean of the negative-ELBO estimate."""

  def loss_fn(params):
    loss, kl = _image_losses(params, x, key, tau, lam, config_static)
    return loss.mean(), kl.mean()

  (loss, kl), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return state.apply_gradients(grads=grads), {"loss": loss, "kl": kl}


@functools.partial(jax.jit, static_argnames=("config_static",))
def objective_step(params, x, key, tau, lam, *, config_static):
  """Per image [B], the one-draw value of the training objective: the negative-ELBO estimate
  that `train_step` minimises, with the estimator's own latent codes (relaxed codes for
  relaxed and l2x, perturb-and-MAP samples for imle, exact samples otherwise)."""
  return _image_losses(params, x, key, tau, lam, config_static)[0]


@functools.partial(jax.jit, static_argnames=("config_static", "draws"))
def eval_step(params, x, key, *, config_static, draws):
  """Per image [B], the mean over `draws` sampled latents of the negative ELBO and of its KL
  part, their sample variances over the draws (zero for the exact KL), and the notebook's
  KL (NaN unless the run trains on it).

  The latents are exact samples of the encoder's family (`exactly_k_sample` or `gumbel_topk`)
  whatever the estimator trained it, so every estimator is scored on the same discrete model.
  """
  groups, items, k, _, family, _, _, kl_form = config_static

  def one(x, key):
    logits = _encode(params["encoder"], x, groups, items)

    def draw(key):
      if family == "exactly_k":
        z = sj.khot(sj.exactly_k_sample(key, logits, k), items)
        kl = exact_kl(logits, k)
      else:
        z = sj.khot(sj.gumbel_topk(key, logits, k), items)
        kl = _set_kl(logits, z, k)
      return _reconstruction(params["decoder"], z, x) + kl, kl

    loss, kl = jax.vmap(draw)(jax.random.split(key, draws))
    ddof = 1 if draws > 1 else 0
    # Only a run that trains on the notebook's objective reports it.
    nb_kl = notebook_kl(logits, k) if kl_form == "notebook" else jnp.nan
    return loss.mean(), kl.mean(), loss.var(ddof=ddof), kl.var(ddof=ddof), nb_kl

  return jax.vmap(one)(x, jax.random.split(key, x.shape[0]))


class VAETask:
  """The discrete-VAE run for `harness.loop`."""

  higher_is_better = False

  def __init__(self, config: TrainConfig, splits: data.Splits | None = None):
    self.val_metric = "val_notebook_loss" if config.kl == "notebook" else "val_loss"
    if config.estimator not in sj.ESTIMATORS:
      raise ValueError(f"estimator must be one of {sj.ESTIMATORS}; got {config.estimator!r}.")
    if config.family is not None and config.estimator != "score_function":
      raise ValueError(
        f"family applies to estimator 'score_function' only; got family {config.family!r} "
        f"with estimator {config.estimator!r}."
      )
    if config.kl == "notebook" and config.latent_family != "exactly_k":
      raise ValueError("kl 'notebook' is the exactly-k family's (simple, imle, score_function).")
    if config.kl_samples < 2:
      raise ValueError(f"kl_samples must be >= 2; got {config.kl_samples}.")
    if not 1 <= config.k <= config.latent_items:
      raise ValueError(f"k must be in [1, latent_items]; got {config.k}.")
    if config.eval_draws < 1 or config.test_draws < 1:
      raise ValueError("eval_draws and test_draws must be >= 1.")
    self.config = config
    self.splits = splits or data.load(
      train_size=config.train_size,
      val_size=config.val_size,
      test_size=config.test_size,
      data_dir=config.data_dir,
    )
    root = jax.random.key(config.seed)
    self.init_key = jax.random.fold_in(root, 0)
    self.batches = loop.Batches(
      config.seed, len(self.splits.train), config.batch_size, jax.random.fold_in(root, 1)
    )
    self.steps_per_epoch = self.batches.steps_per_epoch
    if self.steps_per_epoch < 1:
      raise ValueError("the training images must fill at least one batch.")
    self.eval_key = jax.random.fold_in(root, 2)
    self.static = (
      config.latent_groups,
      config.latent_items,
      config.k,
      config.estimator,
      config.latent_family,
      config.draws,
      config.kl_samples,
      config.kl,
    )

  def describe(self) -> str:
    c, s = self.config, self.splits
    selection = f"validation {len(s.val)} held out" if c.val_size else "selection on the test set"
    return (
      f"data: {s.source}, train {len(s.train)}, test {len(s.test)}, {selection}; latents "
      f"{c.latent_groups} x {c.k}-of-{c.latent_items} ({c.latent_family}); estimator "
      f"{c.estimator} ({c.draws} draws); {self.steps_per_epoch} steps/epoch"
    )

  def init_state(self):
    return create_train_state(self.init_key, self.config)

  def train_step(self, state, epoch: int, step: int):
    c = self.config
    rows, key = self.batches(epoch, step)
    state, metrics = train_step(
      state, self.splits.train[rows], key, c.tau, c.lam, config_static=self.static
    )
    return state, {name: float(value) for name, value in metrics.items()}

  def _per_image(self, step, images: np.ndarray, key) -> np.ndarray:
    """`step(batch, key)` -> `[..., B]` float64 over `images` in evaluation batches, each
    batch with its own key; the batches' results joined along the last axis."""
    size = self.config.eval_batch_size
    parts = [
      step(images[start : start + size], jax.random.fold_in(key, i))
      for i, start in enumerate(range(0, len(images), size))
    ]
    return np.concatenate(parts, axis=-1)

  def evaluate(self, state, images: np.ndarray, draws: int, key) -> dict[str, float]:
    """The mean negative ELBO and KL over `images`, and their Monte-Carlo standard errors."""

    def step(x, key):
      out = eval_step(state.params, x, key, config_static=self.static, draws=draws)
      return np.stack([np.asarray(o, np.float64) for o in out])

    loss, kl, loss_var, kl_var, nb_kl = self._per_image(step, images, key)
    n = len(images)
    return {
      "loss": float(loss.mean()),
      "kl": float(kl.mean()),
      # The objective of the notebook: the same draws with its KL in place of the exact one.
      "notebook_loss": float((loss - kl + nb_kl).mean()),
      # The standard error of each mean from the draws (the images are fixed).
      "loss_mc_se": float(np.sqrt(loss_var.sum() / draws) / n),
      "kl_mc_se": float(np.sqrt(kl_var.sum() / draws) / n),
    }

  def validate(self, state) -> dict[str, float]:
    out = self.evaluate(state, self.splits.val, self.config.eval_draws, self.eval_key)
    metrics = {"val_loss": out["loss"], "val_kl": out["kl"]}
    if self.config.kl == "notebook":  # model selection on the objective trained
      metrics = {"val_notebook_loss": out["notebook_loss"], **metrics}
    return metrics

  def objective(self, state, images: np.ndarray, key) -> float:
    """The mean over `images` of the training objective (`objective_step`), one draw each."""
    c = self.config

    def step(x, key):
      loss = objective_step(state.params, x, key, c.tau, c.lam, config_static=self.static)
      return np.asarray(loss, np.float64)

    return float(self._per_image(step, images, key).mean())

  def test(self, state) -> dict[str, Any]:
    key = jax.random.fold_in(self.eval_key, 1)
    out = self.evaluate(state, self.splits.test, self.config.test_draws, key)
    if self.config.kl != "notebook":
      del out["notebook_loss"]
    # What the estimator trained on, on the test images: it differs from the test loss
    # where the training codes are not exact samples of the model (relaxed, l2x, imle).
    objective_key = jax.random.fold_in(self.eval_key, 2)
    out["objective_loss"] = self.objective(state, self.splits.test, objective_key)
    return {f"test_{name}": value for name, value in out.items()} | {
      "test_draws": self.config.test_draws
    }


def train_and_evaluate(
  config: TrainConfig,
  workdir: str | pathlib.Path,
  *,
  resume: bool = False,
  log: Callable[[str], None] = print,
  splits: data.Splits | None = None,
) -> dict[str, Any]:
  """Trains the VAE; the final record holds the test negative ELBO of the best state."""
  summary = loop.train_and_evaluate(
    VAETask(config, splits), config, workdir, resume=resume, log=log
  )
  summary["estimator"], summary["family"] = config.estimator, config.latent_family
  return summary
