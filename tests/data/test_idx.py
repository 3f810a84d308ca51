"""IDX files (MNIST, Fashion-MNIST) and the dataset registry's messages."""

import gzip
import struct

import numpy as np
import pytest
import torch

from bdprune.data import DatasetFormatError, DatasetNotFoundError, load_dataset
from bdprune.data.idx import read_idx


# -- IDX (MNIST, Fashion-MNIST) --------------------------------------------------------------------------
def write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_loader_reads_what_was_written(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8) % 10
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, compress)
    data = load_dataset("fashion-mnist", tmp_path, train=True)
    assert data.images.shape == (7, 1, 28, 28)
    assert np.array_equal(data.images[:, 0].numpy(), images)
    assert data.labels.tolist() == labels.tolist()


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "x", images, compress=False)
    raw = (tmp_path / "x").read_bytes()
    (tmp_path / "x").write_bytes(raw[:-100])
    with pytest.raises(DatasetFormatError, match="truncated or corrupt"):
        read_idx(tmp_path / "x")


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DatasetFormatError, match="download it again"):
        load_dataset("fashion-mnist", tmp_path)


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=f"looked in {tmp_path}.*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="no data directory given.*tiny-imagenet-200.zip"):
        load_dataset("tiny-imagenet")


@pytest.mark.fashion_mnist
def test_real_fashion_mnist_samples(fashion_mnist_dir):
    test = load_dataset("fashion-mnist", fashion_mnist_dir, train=False)
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert test.labels[:5].tolist() == [9, 2, 1, 1, 6]  # the published first test labels
    assert torch.bincount(test.labels).tolist() == [1000] * 10
