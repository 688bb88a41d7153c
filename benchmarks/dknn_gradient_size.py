"""The size of the dKNN loss's parameter gradient under each estimator, at one network state.

  python -m benchmarks.dknn_gradient_size [--workdir RUN] [--batches 2] [--draws 8] [--out PATH]

For a few training batches of 100 queries and 100 candidate neighbours (MNIST, the example's
split), the Euclidean norm of the gradient of `sj.dknn_loss` (k = 5, tau = 1) with respect to
the ConvNet's parameters, per estimator and per noise draw: the mean, the standard deviation
over draws (averaged over batches), the largest, and the mean's ratio to the relaxed
estimator's. The state is the
network at initialisation (seed 0) and, with `--workdir`, the latest checkpoint of that run
of `examples/train_mnist.py`, read without touching it. I-MLE's gradient, (z - z') / lambda,
has entries of size 1 / lambda wherever the target's MAP state differs, so lambda sets its
step size; the table shows how it compares with the others'.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np

# The example's own modules (examples/dknn, examples/harness), as its script imports them.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))

K, TAU = 5, 1.0
# (label, estimator, keyword arguments of `dknn_loss`).
CONTENDERS = (
  ("relaxed", "relaxed", {}),
  ("straight_through", "straight_through", {}),
  ("simple", "simple", {}),
  ("score_function, 2 draws", "score_function", {"num_samples": 2}),
  ("imle, lambda 10", "imle", {"lam": 10.0}),
  ("imle, lambda 100", "imle", {"lam": 100.0}),
  ("imle, lambda 1000", "imle", {"lam": 1000.0}),
)


def gradient_norms(state, batch, *, draws: int, contenders=CONTENDERS) -> dict[str, list[float]]:
  """Per contender, the parameter-gradient norm of the dKNN loss for noise keys 0..draws-1."""
  import jax
  import jax.numpy as jnp
  import optax

  import subsets_jax as sj

  out = {}
  for label, estimator, kwargs in contenders:

    def loss(params, key, estimator=estimator, kwargs=kwargs):
      emb = state.apply_fn(
        {"params": params}, jnp.concatenate([batch["query_images"], batch["neighbor_images"]])
      )
      n = batch["query_images"].shape[0]
      return sj.dknn_loss(
        key,
        emb[:n],
        emb[n:],
        batch["query_labels"],
        batch["neighbor_labels"],
        k=K,
        tau=TAU,
        estimator=estimator,
        **kwargs,
      )

    norm = jax.jit(lambda p, key, loss=loss: optax.tree.norm(jax.grad(loss)(p, key)))
    out[label] = [float(norm(state.params, jax.random.key(d))) for d in range(draws)]
  return out


def initial_state(image_shape=(28, 28, 1)):
  """The example's reference ConvNet and optimiser state at initialisation, seed 0."""
  import jax
  from dknn import configs, train

  return train.create_train_state(jax.random.key(0), configs.reference(), image_shape, 550)


def training_batches(images, labels, count: int, size: int = 100) -> list[dict]:
  """`count` batches of `size` queries and `size` neighbours, drawn without replacement."""
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(count):
    q, n = (rng.choice(len(labels), size, replace=False) for _ in range(2))
    batches.append(
      {
        "query_images": images[q],
        "query_labels": labels[q],
        "neighbor_images": images[n],
        "neighbor_labels": labels[n],
      }
    )
  return batches


def restore_latest(workdir: pathlib.Path, like):
  """The latest checkpoint's state of the run in `workdir`, read from a copy."""
  from harness import checkpoints

  with tempfile.TemporaryDirectory() as tmp:
    copy = pathlib.Path(tmp) / "run"
    shutil.copytree(workdir / "checkpoints", copy / "checkpoints")
    ck = checkpoints.Checkpoints(copy, fresh=False)
    restored = ck.restore_latest(like)
    ck.close()
  if restored is None:
    raise SystemExit(f"no checkpoint in {workdir}")
  return restored


def table(rows: dict[str, dict[str, list[list[float]]]]) -> str:
  """Per state and estimator: mean, sd over draws (averaged over batches) and largest norm."""
  lines = [
    "| state | estimator | gradient norm: mean | sd over draws | largest | mean / relaxed's |",
    "|---|---|---|---|---|---|",
  ]
  for state_name, norms in rows.items():
    relaxed = float(np.mean(norms["relaxed"]))
    for label, per_batch in norms.items():
      values = np.asarray(per_batch)
      mean, sd = float(values.mean()), float(values.std(axis=1).mean())
      lines.append(
        f"| {state_name} | {label} | {mean:.3g} | {sd:.2g} | {values.max():.3g} | "
        f"{mean / relaxed:.2f} |"
      )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--workdir", type=pathlib.Path, help="a run of examples/train_mnist.py")
  p.add_argument("--batches", type=int, default=2, help="training batches")
  p.add_argument("--draws", type=int, default=8, help="noise draws per batch and estimator")
  p.add_argument("--out", help="write the table to OUT.md and the norms to OUT.json")
  args = p.parse_args(argv)

  from dknn import configs, train
  from harness import image_data

  from benchmarks.common import machine

  splits = train.make_splits(image_data.load("mnist"), configs.reference())
  init = initial_state(splits.train_images.shape[1:])
  states = {"initialisation": init}
  if args.workdir is not None:
    state, meta = restore_latest(args.workdir, init)
    epochs, steps = meta["position"]["epoch"], meta["position"]["step_in_epoch"]
    after = f"{args.workdir} after {epochs} epochs" + (f" and {steps} steps" if steps else "")
    states[after] = state
  batches = training_batches(splits.train_images, splits.train_labels, args.batches)
  rows = {}
  for name, state in states.items():
    norms: dict[str, list[list[float]]] = {}
    for batch in batches:
      for label, values in gradient_norms(state, batch, draws=args.draws).items():
        norms.setdefault(label, []).append(values)
    rows[name] = norms
  info = machine()
  workdir = f" --workdir {args.workdir}" if args.workdir else ""
  text = (
    f"{table(rows)}\nk = {K}, tau = {TAU}; {args.batches} batches x {args.draws} draws; "
    f"{os.cpu_count()}-core {info['cpu']}, JAX {info['jax']}, {info['date']}; "
    f"`python -m benchmarks.dknn_gradient_size{workdir}`.\n"
  )
  print(text)
  if args.out:
    pathlib.Path(args.out).with_suffix(".md").write_text(text)
    pathlib.Path(args.out).with_suffix(".json").write_text(
      json.dumps({"machine": info, "norms": rows}, indent=1) + "\n"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
