import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from bdprune.data import (
    Augment, DatasetFormatError, DatasetNotFoundError, ImageSet, batch_crop, batch_flip_lr, iterate_batches,
    load_dataset, load_image_folder, load_tiny_imagenet_split,
)
from bdprune.data.cifar import load_cifar10_split
from bdprune.data.idx import read_idx

from conftest import FASHION_MNIST, make_imageset, requires_fashion_mnist


# -- ImageSet --------------------------------------------------------------------------------------------
def test_imageset_validates_its_fields():
    with pytest.raises(ValueError, match="N, C, H, W"):
        ImageSet(torch.zeros(4, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), ("a",))
    with pytest.raises(ValueError, match="labels must lie"):
        ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), ("a", "b"))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 1]), ("a", "b"))


def test_split_is_disjoint_seeded_and_keeps_indices(tiny_set):
    a1, b1 = tiny_set.split([10, 20], torch.Generator().manual_seed(1))
    a2, b2 = tiny_set.split([10, 20], torch.Generator().manual_seed(1))
    a3, _ = tiny_set.split([10, 20], torch.Generator().manual_seed(2))
    assert torch.equal(a1.indices, a2.indices) and torch.equal(b1.indices, b2.indices)
    assert not torch.equal(a1.indices, a3.indices)
    assert len(set(a1.indices.tolist()) & set(b1.indices.tolist())) == 0
    assert torch.equal(a1.images, tiny_set.images[a1.indices])
    with pytest.raises(ValueError, match="cannot split"):
        tiny_set.split([50, 50], torch.Generator())


# -- augmentation ----------------------------------------------------------------------------------------
def test_batch_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.rand(16, 2, 6, 6)
    out = batch_crop(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        assert any(torch.equal(padded[i, :, r : r + 6, c : c + 6], out[i]) for r in range(5) for c in range(5))
    assert out.shape == x.shape


def test_batch_flip_flips_about_half_and_keeps_input():
    x = torch.rand(400, 1, 4, 4)
    before = x.clone()
    out = batch_flip_lr(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped | same).all())
    assert 150 < int(flipped.sum()) < 250
    assert torch.equal(x, before)


def test_iterate_batches_covers_every_sample_once(tiny_set):
    seen = torch.cat([pos for _, _, pos in iterate_batches(tiny_set, 10, shuffle=True, generator=torch.Generator())])
    assert sorted(seen.tolist()) == list(range(len(tiny_set)))
    x, y, _ = next(iterate_batches(tiny_set, 10))
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y.dtype == torch.int64


def test_iterate_batches_needs_a_generator_for_randomness(tiny_set):
    with pytest.raises(ValueError, match="torch.Generator"):
        next(iterate_batches(tiny_set, 8, augment=Augment()))


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


@requires_fashion_mnist
def test_real_fashion_mnist_samples():
    test = load_dataset("fashion-mnist", FASHION_MNIST, train=False)
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert test.labels[:5].tolist() == [9, 2, 1, 1, 6]  # the published first test labels
    assert torch.bincount(test.labels).tolist() == [1000] * 10


# -- CIFAR-10 --------------------------------------------------------------------------------------------
def write_cifar_batch(path, n: int, seed: int, protocol: int = 2) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    batch = {b"batch_label": b"training batch", b"labels": labels, b"data": data,
             b"filenames": [b"f%d.png" % i for i in range(n)]}
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
    assert train.labels.tolist() == sum((w[1] for w in written), [])


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


# -- Tiny-ImageNet and image folders --------------------------------------------------------------------
def write_image(path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_tiny_imagenet_loader_reads_train_and_val_annotations(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n")
    rng = np.random.default_rng(0)
    for w in wnids:
        for i in range(2):
            write_image(root / "train" / w / "images" / f"{w}_{i}.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    write_image(root / "val" / "images" / "val_0.png", np.full((64, 64), 77, dtype=np.uint8))  # grayscale file
    write_image(root / "val" / "images" / "val_1.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (root / "val" / "val_annotations.txt").write_text(
        f"val_0.png\t{wnids[1]}\t0\t0\t10\t10\nval_1.png\t{wnids[0]}\t1\t1\t20\t20\n")
    train = load_tiny_imagenet_split(tmp_path, train=True)
    val = load_tiny_imagenet_split(tmp_path, train=False)
    assert train.images.shape == (4, 3, 64, 64) and train.labels.tolist() == [0, 0, 1, 1]
    assert train.classes == ("goldfish", "European fire salamander")
    assert val.labels.tolist() == [1, 0]
    assert int(val.images[0].min()) == int(val.images[0].max()) == 77  # grayscale replicated to RGB


def test_tiny_imagenet_val_annotation_with_unknown_class_is_an_error(tmp_path):
    (tmp_path / "wnids.txt").write_text("n1\n")
    (tmp_path / "val" / "images").mkdir(parents=True)
    (tmp_path / "val" / "val_annotations.txt").write_text("val_0.png\tn999\t0\t0\t1\t1\n")
    with pytest.raises(DatasetFormatError, match="known wnid"):
        load_tiny_imagenet_split(tmp_path, train=False)


def test_image_folder_loader(tmp_path):
    for cls, value in (("cat", 10), ("dog", 200)):
        for i in range(3):
            write_image(tmp_path / cls / f"{i}.png", np.full((5, 6), value, dtype=np.uint8))
    data = load_image_folder(tmp_path, grayscale=True)
    assert data.classes == ("cat", "dog") and data.images.shape == (6, 1, 5, 6)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1] and int(data.images[3].max()) == 200
    write_image(tmp_path / "dog" / "big.png", np.zeros((9, 9), dtype=np.uint8))
    with pytest.raises(DatasetFormatError, match="pass a size"):
        load_image_folder(tmp_path, grayscale=True)
    assert load_image_folder(tmp_path, grayscale=True, size=(4, 4)).images.shape == (7, 1, 4, 4)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DatasetFormatError, match="cannot decode"):
        load_image_folder(tmp_path, grayscale=True, size=(4, 4))
