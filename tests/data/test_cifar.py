"""CIFAR-10 batches: read with a restricted unpickler."""

import functools
import operator
import pickle

import numpy as np
import pytest

from bdprune.data import DatasetFormatError, load_dataset
from bdprune.data.cifar import load_cifar10_split


# -- CIFAR-10 --------------------------------------------------------------------------------------------
def write_cifar_batch(path, n: int, seed: int, protocol: int = 2) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    batch = {
        b"batch_label": b"training batch",
        b"labels": labels,
        b"data": data,
        b"filenames": [b"f%d.png" % i for i in range(n)],
    }
    with path.open("wb") as f:
        pickle.dump(batch, f, protocol=protocol)
    return data, labels


def test_cifar10_loader_reads_the_standard_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    written = [write_cifar_batch(folder / f"data_batch_{i}", 3, i) for i in range(1, 6)]
    write_cifar_batch(folder / "test_batch", 4, 9, protocol=4)
    train = load_dataset("cifar10", tmp_path, train=True)
    test = load_dataset("cifar10", tmp_path, train=False)
    assert train.images.shape == (15, 3, 32, 32) and len(test) == 4
    assert np.array_equal(train.images[:3].numpy().reshape(3, -1), written[0][0])
    assert train.labels.tolist() == functools.reduce(operator.iadd, (w[1] for w in written), [])


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/bdprune-cifar-pwned",))


def test_cifar10_loader_refuses_a_pickle_that_runs_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with (folder / "test_batch").open("wb") as f:
        pickle.dump({b"data": _Exploit(), b"labels": [0]}, f)
    marker = __import__("pathlib").Path("/tmp/bdprune-cifar-pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(DatasetFormatError, match="refusing to load global posix.system|refusing"):
        load_cifar10_split(tmp_path, train=False)
    assert not marker.exists()


def test_cifar10_loader_rejects_wrong_contents(tmp_path):
    with (tmp_path / "test_batch").open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DatasetFormatError, match=r"\(N, 3072\) uint8"):
        load_cifar10_split(tmp_path, train=False)
    (tmp_path / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetFormatError, match="not a valid CIFAR-10 batch"):
        load_cifar10_split(tmp_path, train=False)
