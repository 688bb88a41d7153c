"""Run in a subprocess with N CPU devices (`python -m dknn.parallel_worker N`); prints JSON."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from dknn import configs
from dknn import parallel as sharding
from dknn import train as training


def train_params(num_devices: int, steps: int = 3):
  config = configs.TrainConfig(num_queries=40, num_neighbors=40)
  rng = np.random.default_rng(0)
  images = rng.random((steps, 80, 12, 12, 1), dtype=np.float32)
  labels = rng.integers(0, 4, (steps, 80)).astype(np.int32)
  mesh = sharding.data_mesh(num_devices, divides=(40,))
  state = training.create_train_state(jax.random.key(0), config, (12, 12, 1), 10)
  state = sharding.replicate(state, mesh)
  for i in range(steps):
    batch = {
      "query_images": images[i, :40],
      "query_labels": labels[i, :40],
      "neighbor_images": images[i, 40:],
      "neighbor_labels": labels[i, 40:],
    }
    batch = sharding.shard_batch(batch, mesh)
    state, _ = training.train_step_jit(
      state, batch, jax.random.key(i), jnp.float32(1.0), k=5, num_samples=2
    )
  leaf = jax.tree_util.tree_leaves(state.params)[0]
  return [np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(state.params)], len(
    leaf.sharding.device_set
  )


if __name__ == "__main__":
  sharding.set_host_devices(int(sys.argv[1]))
  one, devices_one = train_params(1)
  four, devices_four = train_params(4)
  json.dump(
    {
      "device_count": jax.device_count(),
      "params_1": one,
      "params_4": four,
      "devices_1": devices_one,
      "devices_4": devices_four,
    },
    sys.stdout,
  )
