"""Offline-first image data for the examples: IDX files, Debian, TFDS, scikit-learn.

Every loader returns a `Dataset` of NumPy arrays: images `[N, H, W, 1]` float32 in [0, 1]
and labels `[N]` int32. Optional back ends (tensorflow-datasets, scikit-learn) are imported
only when their route is tried, so the example needs neither unless it uses them.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pathlib
import struct

import numpy as np

# MD5 of the decompressed IDX bytes (the widely published values).
IDX_MD5 = {
  "mnist": {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
  },
  "fashion_mnist": {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
  },
}
DATASETS = ("mnist", "fashion_mnist", "digits")
DEBIAN_FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
_REPO_DATA = pathlib.Path(__file__).resolve().parents[2] / "data"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataUnavailableError(RuntimeError):
  """No route could provide the requested data set; the message lists each route tried."""


class ChecksumError(ValueError):
  """An IDX file's decompressed content does not have the expected MD5."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train and test splits as NumPy arrays, with the route that provided them."""

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  source: str


def read_idx(path: os.PathLike | str, *, md5: str | None = None) -> np.ndarray:
  """Reads an IDX file (optionally gzip-compressed) into a NumPy array.

  Args:
    path: the file; a `.gz` suffix or gzip magic bytes mean it is decompressed first.
    md5: expected MD5 hex digest of the decompressed bytes, or None to skip the check.

  Returns:
    The array with the shape and dtype stored in the IDX header.

  Raises:
    ChecksumError: the content's MD5 differs from `md5`.
    ValueError: the bytes are not a well-formed IDX file.
  """
  path = pathlib.Path(path)
  raw = path.read_bytes()
  if raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  if md5 is not None:
    digest = hashlib.md5(raw).hexdigest()
    if digest != md5:
      raise ChecksumError(
        f"{path}: MD5 of the decompressed content is {digest}, expected {md5}; the file is "
        "corrupt or not the published one. Delete it and restore the original."
      )
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(f"{path}: not an IDX file (bad magic number).")
  ndim = raw[3]
  header = 4 + 4 * ndim
  shape = struct.unpack(f">{ndim}I", raw[4:header])
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(
      f"{path}: IDX header promises {expected} bytes of data for shape {shape}, "
      f"found {len(raw) - header}."
    )
  return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _find_idx(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
  for name in (stem + ".gz", stem):
    if (directory / name).is_file():
      return directory / name
  return None


def load_idx_dir(directory: os.PathLike | str, name: str) -> Dataset:
  """Loads the four IDX files of `name` ("mnist" or "fashion_mnist") from `directory`."""
  directory = pathlib.Path(directory)
  arrays = {}
  for stem, md5 in IDX_MD5[name].items():
    path = _find_idx(directory, stem)
    if path is None:
      raise FileNotFoundError(f"{directory}: no {stem}(.gz)")
    arrays[stem] = read_idx(path, md5=md5)
  return Dataset(
    train_images=_as_images(arrays["train-images-idx3-ubyte"]),
    train_labels=arrays["train-labels-idx1-ubyte"].astype(np.int32),
    test_images=_as_images(arrays["t10k-images-idx3-ubyte"]),
    test_labels=arrays["t10k-labels-idx1-ubyte"].astype(np.int32),
    num_classes=10,
    source=f"idx:{directory}",
  )


def _as_images(uint8_images: np.ndarray) -> np.ndarray:
  return (uint8_images.astype(np.float32) / 255.0)[..., None]


def load_tfds(name: str, *, data_dir: str | None = None, download: bool = False) -> Dataset:
  """Loads `name` through tensorflow-datasets' TF-free array_record data source.

  Preparing the stock MNIST builders needs TensorFlow and internet access: install the
  `tfds` extra and pass `download=True` once.
  """
  import tensorflow_datasets as tfds  # optional dependency, imported on use

  splits = {}
  for split in ("train", "test"):
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    records = [source[i] for i in range(len(source))]
    images = np.stack([r["image"] for r in records])
    splits[split] = (_as_images(images[..., 0]), np.array([r["label"] for r in records], np.int32))
  return Dataset(*splits["train"], *splits["test"], num_classes=10, source=f"tfds:{name}")


def load_digits(*, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
  """scikit-learn's bundled 8x8 digits (1,797 images), split with a fixed seed."""
  from sklearn import datasets as sk_datasets  # optional dependency, imported on use

  bunch = sk_datasets.load_digits()
  images = (bunch.images.astype(np.float32) / 16.0)[..., None]
  labels = bunch.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(labels))
  num_test = round(test_fraction * len(labels))
  test, train = order[:num_test], order[num_test:]
  return Dataset(images[train], labels[train], images[test], labels[test], 10, "sklearn:digits")


def candidate_dirs(name: str, data_dir: os.PathLike | str | None) -> list[pathlib.Path]:
  """Directories searched for IDX files of `name`, in order (only `data_dir`'s if given)."""
  if data_dir is not None:
    return [pathlib.Path(data_dir) / name, pathlib.Path(data_dir)]
  dirs = []
  if os.environ.get("SUBSETS_JAX_DATA"):
    dirs.append(pathlib.Path(os.environ["SUBSETS_JAX_DATA"]) / name)
  dirs.append(_REPO_DATA / name)
  if name == "fashion_mnist":
    dirs.append(DEBIAN_FASHION_MNIST)
  return dirs


def load(
  name: str,
  *,
  data_dir: os.PathLike | str | None = None,
  use_tfds: bool = True,
  tfds_download: bool = False,
) -> Dataset:
  """Loads `name` from the first route that works; raises listing every route tried.

  Routes, in order: IDX files (in `$SUBSETS_JAX_DATA/name`, the repository's
  `data/name`, and for Fashion-MNIST Debian's `/usr/share/datasets/fashion-mnist`), then
  tensorflow-datasets. An explicit `data_dir` replaces the IDX directories
  (`data_dir/name`, then `data_dir`) and is tensorflow-datasets' data directory; when it
  holds no data set, that is an error naming it and the files looked for. `digits` comes
  from scikit-learn.

  Raises:
    ValueError: unknown `name`.
    ChecksumError: an IDX file exists but is corrupt (never silently skipped).
    DataUnavailableError: no route worked.
  """
  if name not in DATASETS:
    raise ValueError(f"dataset must be one of {DATASETS}; got {name!r}.")
  if name == "digits":
    try:
      return load_digits()
    except ImportError as err:
      raise DataUnavailableError("digits needs scikit-learn: `pip install scikit-learn`.") from err
  tried = []
  for directory in candidate_dirs(name, data_dir):
    if all(_find_idx(directory, stem) for stem in IDX_MD5[name]):
      return load_idx_dir(directory, name)
    tried.append(f"IDX files in {directory}: not found")
  if name == "fashion_mnist":
    tried[-1] += " (`apt-get install dataset-fashion-mnist` installs them)"
  if use_tfds:
    try:
      return load_tfds(
        name, data_dir=None if data_dir is None else str(data_dir), download=tfds_download
      )
    except ImportError:
      tried.append("tensorflow-datasets: not installed (`pip install -e '.[tfds]'`)")
    except Exception as err:
      tried.append(
        f"tensorflow-datasets: {type(err).__name__}: {err} (prepare it once with internet "
        'access and the `tfds` extra: `python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}', file_format='array_record').download_and_prepare()\"`)"
      )
  if data_dir is not None:
    files = ", ".join(f"{stem}[.gz]" for stem in IDX_MD5[name])
    raise DataUnavailableError(
      f"--data_dir {data_dir} holds no {name!r} data set: looked for {files} in "
      + " and ".join(str(d) for d in candidate_dirs(name, data_dir))
      + (", and for tensorflow-datasets data there" if use_tfds else "")
      + ".\n  - "
      + "\n  - ".join(tried)
    )
  raise DataUnavailableError(
    f"could not load {name!r}; routes tried:\n  - "
    + "\n  - ".join(tried)
    + "\nPass --data_dir pointing at the four IDX files (gzip or raw) to use your own copy."
  )
