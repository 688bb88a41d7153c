"""IDX reader, checksums, the data routes and their error messages."""

import gzip
import hashlib
import struct

import numpy as np
import pytest

from harness import image_data as datasets


def _idx_bytes(array: np.ndarray) -> bytes:
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
    f">{array.ndim}I", *array.shape
  )
  return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip_with_checksum(compress, tmp_path, rng):
  images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
  raw = _idx_bytes(images)
  path = tmp_path / ("x.gz" if compress else "x")
  path.write_bytes(gzip.compress(raw) if compress else raw)
  out = datasets.read_idx(path, md5=hashlib.md5(raw).hexdigest())
  np.testing.assert_array_equal(out, images)
  assert out.shape == (5, 4, 3)


def test_corrupted_file_fails_checksum(tmp_path, rng):
  raw = bytearray(_idx_bytes(rng.integers(0, 256, size=(10,), dtype=np.uint8)))
  md5 = hashlib.md5(raw).hexdigest()
  raw[-1] ^= 0xFF
  path = tmp_path / "labels.gz"
  path.write_bytes(gzip.compress(bytes(raw)))
  with pytest.raises(datasets.ChecksumError, match="corrupt"):
    datasets.read_idx(path, md5=md5)


def test_truncated_or_foreign_file_is_rejected(tmp_path):
  raw = _idx_bytes(np.zeros((4, 2), np.uint8))
  (tmp_path / "short").write_bytes(raw[:-3])
  with pytest.raises(ValueError, match="promises"):
    datasets.read_idx(tmp_path / "short")
  (tmp_path / "text").write_bytes(b"hello world")
  with pytest.raises(ValueError, match="not an IDX"):
    datasets.read_idx(tmp_path / "text")


def test_vendored_mnist_loads_with_checksums():
  data = datasets.load("mnist", use_tfds=False)
  assert data.source.startswith("idx:")
  assert data.train_images.shape == (60000, 28, 28, 1) and data.test_images.shape[0] == 10000
  assert data.train_images.dtype == np.float32
  assert 0 <= data.train_images.min() and data.train_images.max() <= 1
  np.testing.assert_array_equal(
    np.bincount(data.test_labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  )


def test_digits_route():
  data = datasets.load("digits")
  assert data.train_images.shape[1:] == (8, 8, 1)
  assert len(data.train_labels) + len(data.test_labels) == 1797


def test_missing_data_lists_every_route(tmp_path, monkeypatch):
  monkeypatch.setattr(datasets, "_REPO_DATA", tmp_path / "repo")
  monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
  monkeypatch.delenv("SUBSETS_JAX_DATA", raising=False)
  with pytest.raises(datasets.DataUnavailableError) as err:
    datasets.load("fashion_mnist", use_tfds=False)
  message = str(err.value)
  for route in ("repo", "debian", "apt-get install dataset-fashion-mnist", "--data_dir"):
    assert route in message


def test_an_explicit_data_dir_without_data_is_an_error_naming_it(tmp_path):
  # The vendored MNIST is there, but an explicit directory is never silently replaced.
  with pytest.raises(datasets.DataUnavailableError) as err:
    datasets.load("mnist", data_dir=tmp_path / "nonexistent", use_tfds=False)
  message = str(err.value)
  assert "--data_dir" in message and str(tmp_path / "nonexistent") in message
  assert "train-images-idx3-ubyte" in message


def test_unknown_dataset():
  with pytest.raises(ValueError, match="dataset must be one of"):
    datasets.load("cifar10")


def test_tfds_route_with_mock_data(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # in the test extra: a missing install fails here

  monkeypatch.setattr(datasets, "_REPO_DATA", tmp_path / "none")
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    data = datasets.load("mnist", data_dir=tmp_path / "empty")
  assert data.source == "tfds:mnist"
  assert data.train_images.shape == (12, 28, 28, 1) and data.test_labels.shape == (12,)
  assert data.train_images.dtype == np.float32 and data.train_images.max() <= 1
