"""Run as `python tests/knn_mesh_worker.py N` with N CPU devices; prints JSON results."""

import json
import sys

import jax

jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))

import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec  # noqa: E402

import subsets_jax as sj  # noqa: E402


def main() -> None:
  rng = np.random.default_rng(1)
  num = 4 * 501  # divisible by the device count, for the pre-sharded inputs
  bank = rng.integers(0, 3, size=(num, 6)).astype(np.float32)  # many ties
  labels = rng.integers(0, 7, num).astype(np.int32)
  queries = rng.integers(0, 3, size=(516, 6)).astype(np.float32) + 0.25
  args = dict(k=9, num_classes=7, chunk_size=128)
  results = {"device_count": jax.device_count()}
  results["plain"] = np.asarray(sj.knn_predict(queries, bank[:-3], labels[:-3], **args)).tolist()
  results["plain_full"] = np.asarray(sj.knn_predict(queries, bank, labels, **args)).tolist()
  for axis_type in (AxisType.Explicit, AxisType.Auto):
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(axis_type,))
    name = axis_type.name.lower()
    # A bank that does not divide the device count: padded inside.
    results[name] = np.asarray(
      sj.knn_predict(queries, bank[:-3], labels[:-3], mesh=mesh, **args)
    ).tolist()
    # Inputs already sharded over the mesh.
    split = NamedSharding(mesh, PartitionSpec("data"))
    placed = [jax.device_put(x, split) for x in (queries, bank, labels)]
    results[name + "_sharded_inputs"] = np.asarray(
      sj.knn_predict(*placed, mesh=mesh, **args)
    ).tolist()
  json.dump(results, sys.stdout)


if __name__ == "__main__":
  main()
