"""The relaxed top-k's fused C++ CPU kernel (`implementation="cpu_kernel"`), through the XLA FFI.

`csrc/relaxed_topk.cc` runs the same recursion as the library's XLA:CPU form (the carried
shift, the per-step scalars, the dominant-item rules, the analytic backward replayed in
segments of 16 steps) with one pass over each row per step instead of XLA's three or more
fusions. It is compiled on first use with the machine's C++ compiler (`$CXX`, else `g++` or
`c++`) for the machine's own CPU (`-march=native`, or `$SUBSETS_JAX_KERNEL_MARCH`: AVX-512
intrinsics where the target has them, else loops the compiler vectorises),
against the FFI headers of the installed jaxlib, into a cache folder keyed by all of these,
and registered as the XLA FFI targets `SjRelaxedTopkForward` / `SjRelaxedTopkBackward`.
It also draws `gumbel_topk_relaxed`'s noise (`SjThreefryBits`, `SjGumbelPerturb`): JAX's
threefry words, and where `gumbel_transform_is_xlas()` holds, their Gumbel transform and the
addition to the scores in the same pass, bit for bit `jax.random.gumbel`'s values; there
`SjGumbelForward` / `SjGumbelBackward` draw each row's noise inside the relaxation's own call.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shlex
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax.custom_derivatives import SymbolicZero

from subsets_jax._src import threefry

SOURCE = pathlib.Path(__file__).parent / "csrc" / "relaxed_topk.cc"
# Overrides the folder of compiled kernels (default: the system's temporary folder).
CACHE_ENV = "SUBSETS_JAX_KERNEL_CACHE"
# Overrides `-march=native`, e.g. `x86-64-v3` for a build shared by different CPUs.
MARCH_ENV = "SUBSETS_JAX_KERNEL_MARCH"


def flags() -> tuple[str, ...]:
  """The compiler flags of the build (`-march` from $SUBSETS_JAX_KERNEL_MARCH, else native)."""
  march = os.environ.get(MARCH_ENV) or "native"
  optimise = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd")
  return (f"-march={march}", *optimise, "-std=c++17", "-shared", "-fPIC")


def compiler() -> str | None:
  """The C++ compiler that builds the kernel (`$CXX`, `g++` or `c++`), or None."""
  return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _cpu_signature() -> str:
  """What `-march=native` compiles for: the CPU's model and flags (Linux), else the platform."""
  try:
    text = pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    import platform

    return platform.processor() + platform.machine()
  lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
  return "\n".join(sorted(set(lines)))


def _build() -> pathlib.Path:
  cxx = compiler()
  if cxx is None:
    raise RuntimeError(
      "implementation='cpu_kernel' compiles a C++ kernel on first use, but no C++ compiler "
      "was found ($CXX, g++ or c++); install one or use implementation='xla'."
    )
  include = jax.ffi.include_dir()
  setup = " ".join([cxx, *flags(), include, jaxlib.__version__])
  key = b"\n".join([SOURCE.read_bytes(), setup.encode(), _cpu_signature().encode()])
  digest = hashlib.sha256(key).hexdigest()[:20]
  folder = pathlib.Path(os.environ.get(CACHE_ENV) or tempfile.gettempdir())
  out = folder / f"subsets_jax_relaxed_topk_{digest}.so"
  if not out.exists():
    folder.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp.so")  # concurrent builds do not clash
    cmd = [*shlex.split(cxx), *flags(), f"-I{include}", str(SOURCE), "-o", str(tmp)]
    try:
      done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:  # e.g. $CXX names no program
      done = subprocess.CompletedProcess(cmd, 127, "", str(err))
    if done.returncode:
      raise RuntimeError(
        f"building the cpu_kernel failed ({' '.join(cmd)}); use implementation='xla'.\n"
        f"{done.stderr[-4000:]}"
      )
    tmp.replace(out)
  return out


@functools.cache
def library() -> ctypes.CDLL:
  """Builds (once per source, compiler, flags, jaxlib and CPU) and loads the kernel.

  Registers its handlers as CPU FFI targets. Raises RuntimeError when it cannot be built.
  """
  lib = ctypes.cdll.LoadLibrary(str(_build()))
  for name in (
    "SjRelaxedTopkForward",
    "SjRelaxedTopkBackward",
    "SjThreefryBits",
    "SjGumbelPerturb",
    "SjGumbelFromBits",
    "SjGumbelForward",
    "SjGumbelBackward",
  ):
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
  lib.SjScratchBytes.restype = ctypes.c_int64
  lib.SjVectorLanes.restype = ctypes.c_int64
  return lib


def vector_lanes() -> int:
  """Items per step of the kernel's hand-written vector loops: 16 (AVX-512) or 0 (plain loops)."""
  return int(library().SjVectorLanes())


def scratch_bytes() -> int:
  """Bytes the kernel's scratch pool holds (kept between calls; beyond XLA's own buffers)."""
  return int(library().SjScratchBytes())


def threefry_bits(key_data: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint32 `shape`: Threefry-2x32 of the counters (0, i) under the uint32[2] key, b0 ^ b1.

  The words `threefry.gumbel` computes for float32 (JAX's partitionable mode), by the kernel;
  `shape` must have fewer than 2^32 elements. Batched keys (`vmap`) are one kernel call.
  """
  library()
  out = jax.ShapeDtypeStruct(shape, jnp.uint32)
  return jax.ffi.ffi_call("SjThreefryBits", out, vmap_method="broadcast_all")(key_data)


def gumbel_from_bits(bits: jax.Array) -> jax.Array:
  """float32 noise of uint32 words: `threefry.gumbel_from_bits(bits, float32)` by the kernel.

  Rows (the last axis) shorter than a vector of 16 take its scalar code only.
  """
  library()
  out = jax.ShapeDtypeStruct(bits.shape, jnp.float32)
  return jax.ffi.ffi_call("SjGumbelFromBits", out, vmap_method="sequential")(bits)


@functools.cache
def gumbel_transform_is_xlas() -> bool:
  """Whether the kernel's Gumbel transform gives XLA:CPU's values bit for bit, for every word.

  A uint32 word enters `jax.random.gumbel`'s float32 transform through its top 23 bits only,
  so the 2^23 words `i << 9` cover every value it can take. Both the kernel's vector code (one
  row) and its scalar code (rows of 8) are compared with XLA's transform on the CPU, once per
  process (0.18 s here, in chunks of 2^20 words). The kernel writes XLA's `log` operation
  for operation; a jaxlib or CPU whose `log` compiles differently fails this check, and the
  transform then stays in XLA. False too when this process has no CPU backend to compare with.
  """
  try:
    cpu = jax.devices("cpu")[0]
  except RuntimeError:  # e.g. JAX_PLATFORMS=cuda
    return False
  chunk = 2**20  # 8 chunks of 4 MiB per array rather than 32 MiB at once
  with jax.ensure_compile_time_eval(), jax.default_device(cpu):
    for start in range(0, 2**23, chunk):
      words = np.arange(start, start + chunk, dtype=np.uint32) << np.uint32(9)
      bits = jnp.asarray(words)
      expected = np.asarray(threefry.gumbel_from_bits(bits, jnp.float32)).view(np.uint32)
      vector = np.asarray(gumbel_from_bits(bits)).view(np.uint32)
      scalar = np.asarray(gumbel_from_bits(bits.reshape(-1, 8))).reshape(-1).view(np.uint32)
      if not (np.array_equal(vector, expected) and np.array_equal(scalar, expected)):
        return False
  return True


@jax.custom_jvp
def gumbel_perturb(key_data: jax.Array, scores: jax.Array) -> jax.Array:
  """float32 `scores + g`, `g` the noise of `threefry.gumbel(key, scores.shape, float32)`.

  One kernel pass: the threefry words, the transform and the addition; bit for bit
  `scores + jax.random.gumbel(key, scores.shape)` where `gumbel_transform_is_xlas()`.
  Differentiable in `scores` (the identity); `scores` must have fewer than 2^32 elements.
  """
  library()
  out = jax.ShapeDtypeStruct(scores.shape, jnp.float32)
  return jax.ffi.ffi_call("SjGumbelPerturb", out, vmap_method="broadcast_all")(key_data, scores)


@gumbel_perturb.defjvp
def _gumbel_perturb_jvp(primals, tangents):
  key_data, scores = primals
  return gumbel_perturb(key_data, scores), tangents[1]


# Floats the forward stores per row and step for the backward (`kAux` in relaxed_topk.cc).
_AUX_FLOATS = 5


# `broadcast_all`: a vmapped call is one kernel call over the batched rows (the kernel reads
# every leading axis as rows, and tau as one value per group of consecutive rows).
def _forward(scores: jax.Array, tau: jax.Array, k: int):
  library()
  out = (
    jax.ShapeDtypeStruct(scores.shape, jnp.float32),
    jax.ShapeDtypeStruct((*scores.shape[:-1], k, _AUX_FLOATS), jnp.float32),
  )
  call = jax.ffi.ffi_call("SjRelaxedTopkForward", out, vmap_method="broadcast_all")
  return call(scores, tau, k=np.int64(k))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def relaxed_topk(scores: jax.Array, tau: jax.Array, k: int) -> jax.Array:
  """Sum of the k relaxed steps' softmaxes of float32 `[..., n]` scores, float32 scalar `tau`.

  Computes `(scores - row max) / tau` itself (excluded `-inf` items kept); the caller has
  checked the arguments. Differentiable in `scores` and `tau` (reverse mode).
  """
  return _forward(scores, tau, k)[0]


# `symbolic_zeros`: the forward rule learns whether `tau` is differentiated; when it is not
# (a fixed temperature, the usual case) the backward skips the tau terms, a log(1 - p) per
# element and step (the residuals' structure carries the choice to the backward).
def _relaxed_topk_fwd(scores, tau, k):
  total, aux = _forward(scores.value, tau.value, k)
  residuals = (scores.value, aux, tau.value)
  return total, residuals if tau.perturbed else (*residuals, None)


def _backward(target: str, keys: tuple, residuals: tuple, total_bar, k: int):
  """`(scores_bar, tau_bar or None)` from a backward FFI target; `keys`: its leading operands
  (GumbelBackward's key data); `residuals`: `(scores, aux, tau[, None])`."""
  scores, aux, tau = residuals[:3]
  tau_grad = len(residuals) == 3
  if isinstance(total_bar, SymbolicZero):
    total_bar = jnp.zeros(scores.shape, jnp.float32)
  out = (
    jax.ShapeDtypeStruct(scores.shape, jnp.float32),
    jax.ShapeDtypeStruct(scores.shape[:-1], jnp.float32),
  )
  call = jax.ffi.ffi_call(target, out, vmap_method="broadcast_all")
  args = (*keys, scores, total_bar, aux, tau)
  scores_bar, tau_bar_rows = call(*args, k=np.int64(k), tau_grad=tau_grad)
  return scores_bar, jnp.sum(tau_bar_rows).astype(tau.dtype) if tau_grad else None


def _relaxed_topk_bwd(k, residuals, total_bar):
  return _backward("SjRelaxedTopkBackward", (), residuals, total_bar, k)


relaxed_topk.defvjp(_relaxed_topk_fwd, _relaxed_topk_bwd, symbolic_zeros=True)


# Perturbed scores up to this many elements are kept from the forward for the backward;
# larger ones are drawn again there. Keeping them was faster as long as they and the total
# (the forward+backward's temporaries) fit under glibc's largest mmap threshold, 32 MiB:
# (100, 40000, 9) 18.5 against 20.7 ms redrawn, 2 cores. Above it XLA's temporaries are
# mapped and page-faulted afresh on every call: (100, 60000, 9) 36.7 ms kept (11,700 faults
# per call), 33.7 ms redrawn (none).
KEEP_PERTURBED_MAX = 2**22


def _gumbel_forward(key_data: jax.Array, scores: jax.Array, tau: jax.Array, k: int, keep: bool):
  library()
  out = (
    jax.ShapeDtypeStruct(scores.shape, jnp.float32),
    jax.ShapeDtypeStruct((*scores.shape[:-1], k, _AUX_FLOATS), jnp.float32),
    jax.ShapeDtypeStruct(scores.shape if keep else (0,), jnp.float32),
  )
  # Under vmap the empty output gets the batch axes and stays empty.
  call = jax.ffi.ffi_call("SjGumbelForward", out, vmap_method="broadcast_all")
  return call(key_data, scores, tau, k=np.int64(k))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gumbel_relaxed_topk(key_data: jax.Array, scores: jax.Array, tau: jax.Array, k: int):
  """`relaxed_topk(gumbel_perturb(key, scores), tau, k)` in one kernel call.

  Each row's noise is drawn by the task that then runs the row's forward (one trip to the
  thread pool instead of two); the perturbed scores are not written out. Under
  differentiation they are kept for the backward up to `KEEP_PERTURBED_MAX` elements, and
  drawn again row by row in the backward above it (a second pass over the noise instead of
  writing and reading back B x N floats, and B x N fewer floats of temporaries). Use only
  where `gumbel_transform_is_xlas()`, as `gumbel_perturb`. Differentiable in `scores` and
  `tau` (reverse mode).
  """
  return _gumbel_forward(key_data, scores, tau, k, keep=False)[0]


def _gumbel_relaxed_topk_fwd(key_data, scores, tau, k):
  keep = scores.value.size <= KEEP_PERTURBED_MAX
  total, aux, perturbed = _gumbel_forward(key_data.value, scores.value, tau.value, k, keep)
  # (key data or None, the backward's scores: perturbed or not, aux, tau[, None])
  residuals = (None, perturbed) if keep else (key_data.value, scores.value)
  residuals = (*residuals, aux, tau.value)
  return total, residuals if tau.perturbed else (*residuals, None)


def _gumbel_relaxed_topk_bwd(k, residuals, total_bar):
  key_data, rest = residuals[0], residuals[1:]
  if key_data is None:  # the perturbed scores were kept (d perturbed / d scores = I)
    return None, *_backward("SjRelaxedTopkBackward", (), rest, total_bar, k)
  return None, *_backward("SjGumbelBackward", (key_data,), rest, total_bar, k)


gumbel_relaxed_topk.defvjp(_gumbel_relaxed_topk_fwd, _gumbel_relaxed_topk_bwd, symbolic_zeros=True)
