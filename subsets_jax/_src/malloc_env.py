"""glibc malloc settings for JAX CPU programs that call the same executables many times.

A process setting, read by glibc at start: programs (the example, the benchmarks) restart
themselves with it; the library never changes it.

Without it, glibc hands freed memory back to the OS and the next call faults fresh pages in:
large blocks over its adaptive mmap threshold, the main heap's top, and the 64 MiB heaps of
the arenas that XLA:CPU's worker threads allocate from (unmapped once free). Measured on
this project's 2-core VM (2026-11-27, JAX 0.10.2): the dKNN train step on one CPU device
(100 + 100 images) took 37-40 ms and 10,500 minor page faults per step without these
settings, 26-30 ms and 1-2,700 faults with them; `MALLOC_TOP_PAD_` alone, which keeps
128 MiB at the top of every heap, did most of it. With one XLA device per core the step did
not fault either way. The costs: freed memory stays with the process, and blocks above
32 MiB are still mapped afresh on each call (benchmarks/README.md measures that case).
"""

from __future__ import annotations

KEEP_FREED_MEMORY: dict[str, str] = {
  "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
  "MALLOC_TRIM_THRESHOLD_": str(2**32),
  "MALLOC_TOP_PAD_": str(128 * 2**20),
}
