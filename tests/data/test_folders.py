"""Tiny-ImageNet's layout and class-per-folder image directories."""

import numpy as np
import pytest

from bdprune.data import DatasetFormatError, load_image_folder, load_tiny_imagenet_split


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
            write_image(
                root / "train" / w / "images" / f"{w}_{i}.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            )
    write_image(root / "val" / "images" / "val_0.png", np.full((64, 64), 77, dtype=np.uint8))  # grayscale file
    write_image(root / "val" / "images" / "val_1.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (root / "val" / "val_annotations.txt").write_text(
        f"val_0.png\t{wnids[1]}\t0\t0\t10\t10\nval_1.png\t{wnids[0]}\t1\t1\t20\t20\n"
    )
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
