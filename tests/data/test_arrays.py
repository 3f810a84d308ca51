"""A defender's image sets in the formats they come in (issue 13, item 5): tensors, IDX, .npz, .safetensors,
class folders, and the indices of a subset."""

import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from bdprune.data import image_set, read_indices
from bdprune.errors import BdpruneError, InvalidInput

SHAPE = (1, 28, 28)


def grey(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    return g.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def write_idx(path, array: np.ndarray) -> None:
    path.write_bytes(
        struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    )


def check(data, images: np.ndarray, labels: np.ndarray) -> None:
    assert data.image_shape == SHAPE and len(data) == len(labels)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images)) and data.labels.tolist() == labels.tolist()


def test_tensors_from_python_in_any_layout():
    images, labels = grey()
    for layout in (images, images[:, None], images[:, :, :, None]):  # (N, H, W), (N, 1, H, W), (N, H, W, 1)
        check(
            image_set((torch.from_numpy(layout.copy()), torch.from_numpy(labels)), image_shape=SHAPE, num_classes=10),
            images,
            labels,
        )
    rgb = np.random.default_rng(1).random((4, 32, 32, 3), dtype=np.float32)  # (N, H, W, C) floats in [0, 1]
    data = image_set((rgb, np.arange(4)), image_shape=(3, 32, 32), num_classes=10)
    assert data.images.dtype == torch.float32 and torch.equal(data.images, torch.from_numpy(rgb).permute(0, 3, 1, 2))


def test_the_datasets_own_files(tmp_path):
    images, labels = grey()
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    check(image_set(tmp_path, image_shape=SHAPE, num_classes=10), images, labels)
    check(image_set(tmp_path / "train-images-idx3-ubyte", image_shape=SHAPE, num_classes=10), images, labels)


@pytest.mark.parametrize("keys", [("images", "labels"), ("x_train", "y_train")])
def test_npz_and_safetensors(tmp_path, keys):
    images, labels = grey()
    np.savez_compressed(tmp_path / "set.npz", **dict(zip(keys, (images, labels))))
    check(image_set(tmp_path / "set.npz", image_shape=SHAPE, num_classes=10), images, labels)
    save_file(
        {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels.astype(np.int64))},
        tmp_path / "set.safetensors",
    )
    check(image_set(tmp_path / "set.safetensors", image_shape=SHAPE, num_classes=10), images, labels)


def test_a_folder_per_class(tmp_path):
    for c in range(10):
        (tmp_path / f"c{c}").mkdir()
        Image.fromarray(np.full((28, 28), 20 * c, np.uint8)).save(tmp_path / f"c{c}" / "0.png")
    data = image_set(tmp_path, image_shape=SHAPE, num_classes=10)
    assert len(data) == 10 and data.labels.tolist() == list(range(10))


@pytest.mark.parametrize(
    "spec, expected", [("2:5", [2, 3, 4]), (":3", [0, 1, 2]), ("9:", [9, 10, 11]), ([5, 1], [5, 1])]
)
def test_indices_select_a_subset(spec, expected):
    images, labels = grey()
    data = image_set((images, labels), image_shape=SHAPE, num_classes=10, indices=spec)
    assert data.labels.tolist() == labels[expected].tolist() and data.indices.tolist() == expected


def test_indices_from_files(tmp_path):
    (tmp_path / "i.json").write_text(json.dumps([3, 0]))
    (tmp_path / "i.txt").write_text("3\n0\n")
    np.save(tmp_path / "i.npy", np.array([3, 0]))
    for name in ("i.json", "i.txt", "i.npy"):
        assert read_indices(str(tmp_path / name), 5).tolist() == [3, 0]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0:50", r"must lie in \[0, 12\)"),
        ([1, 1], "twice"),
        ("a:b", "START:STOP"),
        ("5:5", "select no sample"),
        ("0:1000000000000000", r"must lie in \[0, 12\)"),
    ],
)  # before 8 PB
def test_bad_indices_are_one_clear_error(spec, message):
    with pytest.raises(InvalidInput, match=message):
        read_indices(spec, 12)


def test_bad_sets_are_one_clear_error(tmp_path):
    images, labels = grey()
    cases = [
        ((images[:, :27], labels), "the model takes"),
        ((images, labels + 5), r"labels must lie in \[0, 10\), got \[5, 14\]"),
        ((images.astype(np.float32), labels), "float images must lie in"),
        ((images, labels.astype(np.float32)), "labels must be 12 integers"),
    ]
    for source, message in cases:
        with pytest.raises(InvalidInput, match=message):
            image_set(source, image_shape=SHAPE, num_classes=10)
    np.savez(tmp_path / "odd.npz", pictures=images)
    (tmp_path / "set.csv").write_text("1,2")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    for path, message in (
        (tmp_path / "odd.npz", "name the arrays images/labels"),
        (tmp_path / "set.csv", "not a format"),
        (tmp_path / "missing.npz", "missing"),
    ):
        with pytest.raises(BdpruneError, match=message):
            image_set(path, image_shape=SHAPE, num_classes=10)
    with pytest.raises(InvalidInput, match="not a list of integers"):
        read_indices(str(tmp_path / "objects.npy"), 5)  # a pickled object array is refused, not unpickled
