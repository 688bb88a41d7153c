"""Training a ConvNet embedding with the dKNN loss, in the style of Flax's examples.

`train_and_evaluate(config, workdir)` follows the protocol of the reference
(ermongroup/subsets `knn/run_dknn.py`): the training set is split into train /
validation with a fixed seed; each step draws `num_queries` queries and
`num_neighbors` candidate neighbours from two independent shuffles of the
training split; every epoch embeds the whole training split as the neighbour
bank and measures validation accuracy by exact kNN majority vote; the best
validation checkpoint is kept and its test accuracy reported. No sampling at
test time.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from harness import image_data as datasets
from harness import loop

import subsets_jax as sj

from . import parallel as sharding
from .configs import TrainConfig
from .models import MODELS, ConvNet, VGGNet

_print_flush = functools.partial(print, flush=True)


class TrainState(train_state.TrainState):
  """Flax TrainState; `step` counts optimiser steps."""


@dataclasses.dataclass(frozen=True)
class Splits:
  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  source: str


def make_splits(data: datasets.Dataset, config: TrainConfig) -> Splits:
  """Fixed-seed train / validation split of the training set (test set untouched)."""
  num = len(data.train_labels)
  order = np.random.default_rng(config.split_seed).permutation(num)
  num_val = config.validation_size or round(num / 12)
  if not 1 <= num_val < num:
    raise ValueError(f"validation_size must be in [1, {num}); got {num_val}.")
  val, train = order[:num_val], order[num_val:]
  if config.max_train_examples:
    train = train[: config.max_train_examples]
  test = slice(None, config.max_test_examples)
  return Splits(
    data.train_images[train],
    data.train_labels[train],
    data.train_images[val],
    data.train_labels[val],
    data.test_images[test],
    data.test_labels[test],
    data.num_classes,
    data.source,
  )


@functools.lru_cache(maxsize=16)
def make_model(image_shape: tuple[int, ...], name: str = "convnet") -> ConvNet | VGGNet:
  """The embedding network `name` (a key of `models.MODELS`) for images of `image_shape`;
  one object per argument pair (see `make_optimizer`)."""
  if name not in MODELS:
    raise ValueError(f"model must be one of {tuple(MODELS)}; got {name!r}.")
  if name != "convnet":
    return MODELS[name]()
  # The reference net needs 28x28 inputs with VALID padding; smaller images use SAME.
  return ConvNet(padding="VALID" if min(image_shape[:2]) >= 28 else "SAME")


@functools.lru_cache(maxsize=16)
def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
  """PyTorch-style SGD: weight decay added to the gradient before momentum.

  One object per (config, steps_per_epoch): the optimiser is a static part of the
  TrainState, so reusing it lets the jitted steps of a later run in the same process
  reuse their compilations.
  """
  if config.lr_schedule == "constant":
    lr = config.learning_rate
  elif config.lr_schedule == "cosine":
    lr = optax.cosine_decay_schedule(config.learning_rate, config.num_epochs * steps_per_epoch)
  else:
    raise ValueError(f"lr_schedule must be 'constant' or 'cosine'; got {config.lr_schedule!r}.")
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay),
    optax.sgd(lr, momentum=config.momentum),
  )


def create_train_state(
  key: jax.Array, config: TrainConfig, image_shape: tuple[int, ...], steps_per_epoch: int
) -> TrainState:
  """Initialises the embedding network's parameters and the optimiser state."""
  model = make_model(tuple(image_shape), config.model)
  params = model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]
  return TrainState.create(
    apply_fn=model.apply, params=params, tx=make_optimizer(config, steps_per_epoch)
  )


def _embed_pair(apply_fn, params, queries, neighbors, separate: bool):
  """Embeddings of the queries and of the neighbours: one batch, or two independent passes."""
  if separate:
    return apply_fn({"params": params}, queries), apply_fn({"params": params}, neighbors)
  emb = apply_fn({"params": params}, jnp.concatenate([queries, neighbors]))
  return emb[: queries.shape[0]], emb[queries.shape[0] :]


def prefers_separate_passes(mesh) -> bool:
  """Whether `train_step(..., separate_passes=True)` is the better choice on `mesh`.

  True for a single CPU device: XLA:CPU then runs the two independent passes side by side
  on its threads. With several devices, or on accelerators, one batch means fewer and
  larger kernels.
  """
  return mesh.size == 1 and mesh.devices.flat[0].platform == "cpu"


def train_step(
  state,
  batch,
  key,
  tau,
  *,
  k,
  num_samples=1,
  estimator="relaxed",
  lam=10.0,
  separate_passes=False,
):
  """One SGD step on the dKNN loss averaged over `num_samples` Gumbel draws (vmapped).

  Args:
    state: the TrainState.
    batch: dict with `query_images [B, H, W, C]`, `query_labels [B]`,
      `neighbor_images [N, H, W, C]`, `neighbor_labels [N]`.
    key: PRNG key for this step's Gumbel noise.
    tau: temperature (traced: annealing it does not recompile).
    lam: I-MLE's lambda for estimator "imle" (traced).
    k, num_samples, estimator: static hyperparameters of the loss (`dknn_loss`).
    separate_passes: embed queries and neighbours in two independent forward
      passes instead of one batch (same values; see `prefers_separate_passes`).

  Returns:
    The new state and a dict of metrics: `loss` and `top_k_correctness`
    (fraction of relaxed top-k mass on same-class neighbours, `-loss / k`).
  """

  def loss_fn(params):
    query_emb, neighbor_emb = _embed_pair(
      state.apply_fn, params, batch["query_images"], batch["neighbor_images"], separate_passes
    )
    return sj.dknn_loss(
      key,
      query_emb,
      neighbor_emb,
      batch["query_labels"],
      batch["neighbor_labels"],
      k=k,
      tau=tau,
      num_samples=num_samples,
      estimator=estimator,
      lam=lam,
    )

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads), {"loss": loss, "top_k_correctness": -loss / k}


train_step_jit = jax.jit(
  train_step,
  static_argnames=("k", "num_samples", "estimator", "separate_passes"),
  donate_argnums=0,
)


@jax.jit
def eval_step(state, images):
  """Embeddings `[B, embedding_dim]` of a batch of images."""
  return state.apply_fn({"params": state.params}, images)


def embed(state, images: np.ndarray, batch_size: int, mesh=None) -> jax.Array:
  """Embeds `images` in fixed-size batches (the last one padded: one compilation).

  With a `mesh`, each batch is split over its devices.
  """
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start : start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    if mesh is not None:
      chunk = sharding.shard_batch(chunk, mesh)
    out.append(eval_step(state, chunk)[: batch_size - pad])
  return jnp.concatenate(out)


def evaluate(
  state,
  bank_images,
  bank_labels,
  query_images,
  query_labels,
  *,
  k,
  num_classes,
  batch_size=1000,
  mesh=None,
) -> float:
  """kNN accuracy of `query_images` against the embedded bank (exact, no sampling).

  With a multi-device `mesh`, embedding is data-parallel and the bank is sharded
  across devices for the kNN search (merged exactly).
  """
  return evaluate_ks(
    state,
    bank_images,
    bank_labels,
    query_images,
    query_labels,
    ks=(k,),
    num_classes=num_classes,
    batch_size=batch_size,
    mesh=mesh,
  )[k]


def evaluate_ks(
  state,
  bank_images,
  bank_labels,
  query_images,
  query_labels,
  *,
  ks,
  num_classes,
  batch_size=1000,
  mesh=None,
) -> dict[int, float]:
  """`evaluate` for several vote sizes `ks` from one embedding: {k: accuracy}."""
  mesh = mesh if mesh is not None and mesh.size > 1 else None
  bank = embed(state, bank_images, batch_size, mesh)
  queries = embed(state, query_images, batch_size, mesh)
  labels = jnp.asarray(bank_labels)
  accuracies = {}
  for k in ks:
    pred = sj.knn_predict(queries, bank, labels, k=k, num_classes=num_classes, mesh=mesh)
    accuracies[k] = float(np.mean(np.asarray(pred) == query_labels))
  return accuracies


def epoch_length(num_train: int, config: TrainConfig) -> int:
  """Steps in one pass over the training split (the larger of the two batches sets it)."""
  return num_train // max(config.num_queries, config.num_neighbors)


def random_shifts(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
  """Each image of `[B, H, W, C]` translated by its own random (dy, dx) in
  `[-max_shift, max_shift]`, with zeros shifted in (augmentation for training batches).
  """
  b, h, w = images.shape[:3]
  shifts = rng.integers(-max_shift, max_shift + 1, size=(b, 2))
  padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
  out = np.empty_like(images)
  for j, (dy, dx) in enumerate(shifts):
    out[j] = padded[j, max_shift - dy : max_shift - dy + h, max_shift - dx : max_shift - dx + w]
  return out


class DKNNTask:
  """The dKNN run for `harness.loop`: the reference's protocol on the chosen data set."""

  val_metric = "val_accuracy"
  higher_is_better = True
  divergence_hint = " (try a lower --lr or a larger --tau)"

  def __init__(self, config: TrainConfig, log: Callable[[str], None] = _print_flush):
    if any(not isinstance(k, int) or k < 1 for k in config.eval_k_grid):
      raise ValueError(f"eval_k_grid must hold integers >= 1; got {config.eval_k_grid}.")
    self.config, self.log = config, log
    self.vote_k = config.eval_k or config.k  # validations vote with it, and a test without grid
    root = jax.random.key(config.seed)
    self.init_key, self.noise_key = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
    self.tau = jnp.float32(config.tau)
    self._epoch: tuple[int | None, Any] = (None, None)

  def setup(self) -> None:
    """Loads and splits the data; builds the device mesh."""
    c = self.config
    self.splits = make_splits(datasets.load(c.dataset, data_dir=c.data_dir), c)
    self.steps_per_epoch = epoch_length(len(self.splits.train_labels), c)
    if self.steps_per_epoch < 1:
      raise ValueError("the training split is smaller than one batch of queries/neighbours.")
    # Data parallel: parameters replicated, each step's queries and neighbours split.
    self.mesh = sharding.data_mesh(
      c.num_devices, divides=(c.num_queries, c.num_neighbors, c.eval_batch_size)
    )
    self.separate_passes = prefers_separate_passes(self.mesh)

  def describe(self) -> str:
    s = self.splits
    return (
      f"data: {s.source}; train {len(s.train_labels)}, validation {len(s.val_labels)}, "
      f"test {len(s.test_labels)}; {self.steps_per_epoch} steps/epoch\n"
      f"devices: {self.mesh.size} x {self.mesh.devices.flat[0].platform} (data parallel)"
    )

  def init_state(self) -> TrainState:
    image_shape = self.splits.train_images.shape[1:]
    state = create_train_state(self.init_key, self.config, image_shape, self.steps_per_epoch)
    return sharding.replicate(state, self.mesh)

  def _orders(self, epoch: int):
    """The epoch's query and neighbour orders: two independent shuffles of the split."""
    if self._epoch[0] != epoch:
      rng = np.random.default_rng([self.config.seed, epoch])
      num = len(self.splits.train_labels)
      self._epoch = (epoch, (rng.permutation(num), rng.permutation(num)))
    return self._epoch[1]

  def train_step(self, state, epoch: int, step: int):
    c, splits = self.config, self.splits
    queries_order, neighbors_order = self._orders(epoch)
    qi = queries_order[step * c.num_queries : (step + 1) * c.num_queries]
    ni = neighbors_order[step * c.num_neighbors : (step + 1) * c.num_neighbors]
    queries, neighbors = splits.train_images[qi], splits.train_images[ni]
    if c.augment_shift:
      rng = np.random.default_rng([c.seed, epoch, step])
      queries = random_shifts(queries, c.augment_shift, rng)
      neighbors = random_shifts(neighbors, c.augment_shift, rng)
    batch = {
      "query_images": queries,
      "query_labels": splits.train_labels[qi],
      "neighbor_images": neighbors,
      "neighbor_labels": splits.train_labels[ni],
    }
    key = jax.random.fold_in(self.noise_key, epoch * self.steps_per_epoch + step)
    state, metrics = train_step_jit(
      state,
      sharding.shard_batch(batch, self.mesh),
      key,
      self.tau,
      k=c.k,
      num_samples=c.num_samples,
      estimator=c.estimator,
      lam=c.lam,
      separate_passes=self.separate_passes,
    )
    metrics = jax.device_get(metrics)
    return state, {
      "loss": float(metrics["loss"]),
      "top_k_correctness": float(metrics["top_k_correctness"]),
    }

  def knn_accuracy(self, state, images, labels, ks=None) -> dict[int, float]:
    """{k: accuracy}; the training split is the neighbour bank, as in the reference."""
    return evaluate_ks(
      state,
      self.splits.train_images,
      self.splits.train_labels,
      images,
      labels,
      ks=ks or (self.vote_k,),
      num_classes=self.splits.num_classes,
      batch_size=self.config.eval_batch_size,
      mesh=self.mesh,
    )

  def validate(self, state) -> dict[str, float]:
    (accuracy,) = self.knn_accuracy(state, self.splits.val_images, self.splits.val_labels).values()
    return {"val_accuracy": accuracy}

  def test(self, state) -> dict[str, Any]:
    """The test accuracy; with `eval_k_grid`, the vote k is chosen on validation first."""
    splits, grid = self.splits, self.config.eval_k_grid
    test_k, val_by_k = self.vote_k, None
    if grid:
      val_by_k = self.knn_accuracy(state, splits.val_images, splits.val_labels, grid)
      # The highest validation accuracy; a tie goes to the smaller k.
      test_k = max(sorted(val_by_k), key=val_by_k.get)
      self.log(
        "validation accuracy of the best checkpoint by vote k: "
        + ", ".join(f"{k}: {acc:.4f}" for k, acc in val_by_k.items())
        + f"; the test votes with k = {test_k}"
      )
    (accuracy,) = self.knn_accuracy(
      state, splits.test_images, splits.test_labels, (test_k,)
    ).values()
    return {
      "test_accuracy": accuracy,
      "test_eval_k": test_k,
      "val_accuracy_by_eval_k": val_by_k and {str(k): acc for k, acc in val_by_k.items()},
    }

  def summary_extras(self) -> dict[str, Any]:
    return {"dataset": self.config.dataset, "devices": self.mesh.size}


def train_and_evaluate(
  config: TrainConfig,
  workdir: str | pathlib.Path,
  *,
  resume: bool = False,
  log: Callable[[str], None] = _print_flush,
) -> dict[str, Any]:
  """Trains, keeps the best-validation checkpoint, reports its test accuracy.

  The run is `harness.loop`'s: `metrics.jsonl` and TensorBoard events, the Orbax checkpoints
  `checkpoints/latest` (every `checkpoint_every_steps` steps, every epoch end, a time-budget
  stop, SIGINT/SIGTERM) and `checkpoints/best` in `workdir`. A new run replaces any earlier
  run in `workdir`. With `resume=True` the run continues from the latest checkpoint bit for
  bit as if uninterrupted (data order and noise depend only on seed, epoch and step) after
  checking that the configuration only differs in resumable fields; with no checkpoint it
  says so and starts a new run. A non-finite training loss stops the run at that step:
  nothing of the diverged state is saved, and the final record names the step
  (`diverged_at_step`, otherwise None) and reports the best-validation checkpoint's test
  accuracy if a validation came before.

  Returns:
    The final record: best validation accuracy and its epoch, test accuracy, times.

  Raises:
    stopping.TrainingInterrupted: on SIGINT or SIGTERM, after saving the latest state.
    checkpoints.ConfigMismatchError: resuming with a configuration that differs from the
      saved one in a field that changes the model, the data or the random streams.
    image_data.DataUnavailableError: no route provides the data set.
  """
  task = DKNNTask(config, log)
  return loop.train_and_evaluate(task, config, workdir, resume=resume, log=log)
