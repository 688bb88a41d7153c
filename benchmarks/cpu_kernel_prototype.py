"""Prototype: the relaxed top-k as a hand-fused C++ kernel on CPU, through the XLA FFI.

Not part of the library: a measured experiment for issue 4 (how far a kernel outside
XLA's fusions gets towards the roofline on this CPU). `benchmarks/cpu_kernel/relaxed_topk.cc`
runs the library's CPU form (`_carried_forward`: carried e = exp(b - m), the same per-step
scalars and the same dominant-item rules) with one pass over each row per step forward, and
a replay plus one pass per step backward; see the file's header. It is compiled here with
the system's C++ compiler (`g++ -O3 -march=native`) into a temporary folder on first use.

Limits of the prototype: float32, rows `[r, n]`, tau a Python float >= 1/16 (static; no
gradient with respect to it), CPU only, its own `exp` (about 2e-7 relative error, not XLA's).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

SOURCE = pathlib.Path(__file__).parent / "cpu_kernel" / "relaxed_topk.cc"
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"]
FLAGS += ["-std=c++17", "-shared", "-fPIC"]
TAU_MIN = 1 / 16


def compiler() -> str | None:
  """The C++ compiler used to build the kernel, or None when the machine has none."""
  return shutil.which("g++") or shutil.which("c++")


def build() -> pathlib.Path:
  """Compiles the kernel (once per source and flags) and returns the shared library's path."""
  cxx = compiler()
  if cxx is None:
    raise RuntimeError("no C++ compiler (g++ or c++) found to build the prototype kernel")
  # Rebuilt when the source, the flags or jaxlib (whose FFI headers it compiles against) change.
  include = jax.ffi.include_dir()
  key = SOURCE.read_bytes() + " ".join([*FLAGS, include, jaxlib.__version__]).encode()
  digest = hashlib.sha256(key).hexdigest()[:16]
  out = pathlib.Path(tempfile.gettempdir()) / f"subsets_jax_cpu_kernel_{digest}.so"
  if not out.exists():
    tmp = out.with_suffix(f".{os.getpid()}.tmp.so")  # concurrent builds do not clash
    cmd = [cxx, *FLAGS, f"-I{include}", str(SOURCE), "-o", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
      raise RuntimeError(f"building the kernel failed: {' '.join(cmd)}\n{done.stderr}")
    tmp.replace(out)
  return out


@functools.cache
def register() -> None:
  """Builds the kernel and registers its forward and backward as XLA FFI targets (CPU)."""
  lib = ctypes.cdll.LoadLibrary(str(build()))
  for name in ("SjRelaxedTopkForward", "SjRelaxedTopkBackward"):
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")


def _forward(scores, k, tau):
  r = scores.shape[0]
  out = (
    jax.ShapeDtypeStruct(scores.shape, jnp.float32),
    jax.ShapeDtypeStruct((k, 4, r), jnp.float32),
  )
  call = jax.ffi.ffi_call("SjRelaxedTopkForward", out, vmap_method="sequential")
  return call(scores, jnp.float32(tau), k=np.int64(k))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _kernel_topk(scores, k, tau):
  return _forward(scores, k, tau)[0]


def _kernel_topk_fwd(scores, k, tau):
  total, aux = _forward(scores, k, tau)
  return total, (scores, aux)


def _kernel_topk_bwd(k, tau, residuals, total_bar):
  scores, aux = residuals
  out = jax.ShapeDtypeStruct(scores.shape, jnp.float32)
  call = jax.ffi.ffi_call("SjRelaxedTopkBackward", out, vmap_method="sequential")
  return (call(scores, total_bar, aux, jnp.float32(tau), k=np.int64(k)),)


_kernel_topk.defvjp(_kernel_topk_fwd, _kernel_topk_bwd)


def soft_topk(scores: jax.Array, k: int, tau: float = 1.0) -> jax.Array:
  """`subsets_jax.soft_topk(scores, k, tau)` for float32 `[r, n]` scores, by the C++ kernel."""
  register()
  if scores.dtype != jnp.float32 or scores.ndim != 2:
    raise ValueError(f"scores must be float32 [rows, n]; got {scores.dtype} {scores.shape}")
  if not isinstance(tau, float) or not tau >= TAU_MIN:
    raise ValueError(f"tau must be a Python float >= {TAU_MIN}; got {tau!r}")
  if not 1 <= k <= scores.shape[-1]:
    raise ValueError(f"k must satisfy 1 <= k <= n = {scores.shape[-1]}; got {k}")
  return _kernel_topk(scores, k, tau)
