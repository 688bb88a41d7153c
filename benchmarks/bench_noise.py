"""Noise benchmark: `subsets_jax.gumbel_noise` against `jax.random.gumbel` (the same bits).

  python -m benchmarks.bench_noise [--repeats 15]

On CPU the library draws threefry keys' noise with a copy of JAX's hash written as one
elementwise pass (`subsets_jax/_src/threefry.py`); this measures what that copy buys, and
checks that the values are equal bit for bit. When JAX's own CPU lowering is as fast, the
copy can go.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import subsets_jax as sj
from benchmarks.common import machine, median_times

SHAPES = [(100, 1000), (100, 10000), (100, 60000), (16, 100000)]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=15, help="timed calls per contender")
  args = p.parse_args()
  info = machine()
  print(f"{info['cpu']}; {info['device']}; JAX {info['jax']}; {info['date']}")
  print(f"{'shape':>14} | {'jax.random':>10} {'library':>8} {'ratio':>6} | bit for bit")
  key = jax.random.key(1)
  for shape in SHAPES:
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    theirs = jax.jit(lambda k, shape=shape: jax.random.gumbel(k, shape, jnp.float32))
    ours = jax.jit(lambda k, spec=spec: sj.gumbel_noise(k, spec))
    same = bool(np.array_equal(np.asarray(theirs(key)), np.asarray(ours(key))))
    t = median_times(
      {
        "jax": lambda: theirs(key).block_until_ready(),
        "ours": lambda: ours(key).block_until_ready(),
      },
      args.repeats,
    )
    print(
      f"{shape!s:>14} | {t['jax'] * 1e3:10.2f} {t['ours'] * 1e3:8.2f} "
      f"{t['jax'] / t['ours']:6.2f} | {same}"
    )


if __name__ == "__main__":
  main()
