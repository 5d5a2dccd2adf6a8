"""Reading image sets: folder labels, hidden entries, inferred specs, and bad inputs as UserErrors."""

import numpy as np
import pytest
import torch
from PIL import Image

from surrogate_kd.data import open_images
from surrogate_kd.errors import UserError


def _save(path, value: int, size=(6, 6), mode="L") -> None:
    """A flat image whose pixel value identifies it after loading (value 10*k for image k)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).convert(mode).save(path)


def _folder(root, names_and_values) -> None:
    for name, value in names_and_values:
        _save(root / name / f"img{value}.png", value)


def _label_by_value(images) -> dict[int, int]:
    """pixel value -> label, so a test can ask which label each folder's image got."""
    return {int(image[0, 0, 0]): int(label) for image, label in zip(images.images, images.labels)}


def test_folders_named_by_class_follow_the_models_order(tmp_path, capsys):
    # Sorted folder names would be (bird, cat, dog): the model's order is different.
    _folder(tmp_path / "set", [("dog", 10), ("cat", 20), ("bird", 30)])
    model_classes = ("cat", "dog", "bird", "fish")
    images = open_images(str(tmp_path / "set"), 6, 1, classes=model_classes)
    assert _label_by_value(images) == {10: 1, 20: 0, 30: 2}
    assert images.classes == model_classes
    assert "labels of" in capsys.readouterr().err


def test_integer_folders_are_labelled_by_value(tmp_path):
    _folder(tmp_path / "set", [(str(k), 10 * k) for k in range(12)])  # '10' sorts before '2'
    for classes in (None, tuple(f"c{k}" for k in range(12))):
        images = open_images(str(tmp_path / "set"), 6, 1, classes=classes)
        assert _label_by_value(images) == {10 * k: k for k in range(12)}
    assert open_images(str(tmp_path / "set"), 6, 1).classes == tuple(str(k) for k in range(12))


def test_unmatched_folder_names_fall_back_to_sorted_order_and_say_so(tmp_path, capsys):
    _folder(tmp_path / "set", [("dog", 10), ("zebra", 20), ("ant", 30)])
    images = open_images(str(tmp_path / "set"), 6, 1, classes=("cat", "dog"))
    assert _label_by_value(images) == {30: 0, 10: 1, 20: 2}
    assert images.classes == ("ant", "dog", "zebra")
    err = capsys.readouterr().err
    assert "sorted order" in err and "'ant'" in err and "'zebra'" in err and "'dog'" not in err


def test_without_classes_folders_keep_sorted_order_quietly(tmp_path, capsys):
    _folder(tmp_path / "set", [("dog", 10), ("cat", 20)])
    images = open_images(str(tmp_path / "set"), 6, 1)
    assert _label_by_value(images) == {20: 0, 10: 1} and images.classes == ("cat", "dog")
    assert capsys.readouterr().err == ""


def test_hidden_entries_are_skipped(tmp_path):
    root = tmp_path / "set"
    _folder(root, [("a", 10), ("b", 20)])
    _save(root / ".ipynb_checkpoints" / "img90.png", 90)  # a hidden class folder
    _save(root / "a" / ".ipynb_checkpoints" / "img91.png", 91)  # hidden folder inside a class
    _save(root / "a" / "._img92.png", 92)  # a macOS resource fork
    (root / "b" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    images = open_images(str(root), 6, 1)
    assert images.classes == ("a", "b") and _label_by_value(images) == {10: 0, 20: 1}

    flat = tmp_path / "flat"
    _save(flat / "x.png", 40)
    _save(flat / ".hidden.png", 41)
    assert open_images(str(flat), 6, 1).images[:, 0, 0, 0].tolist() == [40]


@pytest.mark.parametrize("mode, channels", [("L", 1), ("LA", 1), ("I;16", 1), ("RGB", 3), ("RGBA", 3), ("P", 3)])
def test_folder_spec_is_inferred_from_the_first_image(tmp_path, mode, channels, capsys):
    _save(tmp_path / "set" / "a" / "first.png", 100, size=(9, 5), mode=mode)
    _save(tmp_path / "set" / "b" / "second.png", 100, size=(4, 4), mode="RGB")
    images = open_images(str(tmp_path / "set"))
    assert (images.size, images.channels, len(images)) == (9, channels, 2)
    assert images.images.shape == (2, channels, 9, 9) and images.labels.tolist() == [0, 1]
    assert "first.png" in capsys.readouterr().err


def test_given_spec_is_not_overridden(tmp_path):
    _save(tmp_path / "set" / "x.png", 100, size=(9, 5), mode="RGB")
    assert open_images(str(tmp_path / "set"), 4, 1).images.shape == (1, 1, 4, 4)


@pytest.mark.parametrize("limit", [65, 40])  # 100 pixels: Pillow warns (1x-2x the limit), then errs (over 2x)
def test_decompression_bombs_are_user_errors(tmp_path, monkeypatch, limit):
    _save(tmp_path / "set" / "big.png", 100, size=(10, 10))
    _save(tmp_path / "set" / "small.png", 100, size=(4, 4))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(UserError, match=r"image .*big\.png has 100 pixels, over the decompression-bomb limit"):
        open_images(str(tmp_path / "set"), 8, 1)


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"corrupt or unreadable image .*broken\.png"):
        open_images(str(tmp_path / "set"), 8, 1)


def test_folder_without_images_is_a_user_error(tmp_path):
    (tmp_path / "set" / ".git").mkdir(parents=True)
    (tmp_path / "set" / "notes.txt").write_text("")
    with pytest.raises(UserError, match="no images found in"):
        open_images(str(tmp_path / "set"))


def _uint8(*shape):
    return np.zeros(shape, np.uint8)


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(images=_uint8(4, 8, 8, 4)), "has 4 channels .*not supported; convert them to RGB"),
        (dict(images=_uint8(4, 3, 8, 8)), r"is channels-first \(N,C,H,W\); expected \(N,H,W,C\)"),
        (dict(images=_uint8(4, 1, 28, 28)), "is channels-first"),
        (dict(images=_uint8(4, 8, 8, 2)), "has 2 channels; expected 1 or 3"),
        (dict(images=np.zeros((4, 8, 8), np.float32)), "must be non-empty uint8"),
        (dict(images=_uint8(0, 8, 8)), "must be non-empty uint8"),
        (dict(images=_uint8(4, 8, 8), labels=np.zeros((4, 1), np.int64)), r"flatten them to \(4,\)"),
        (dict(images=_uint8(4, 8, 8), labels=np.array([0, 1, -3, 2])), "non-negative .*smallest is -3"),
        (dict(images=_uint8(4, 8, 8), labels=np.zeros(4, np.float32)), "must be integer class indices, got float32"),
        (dict(images=_uint8(4, 8, 8), labels=np.zeros(3, np.int64)), "3 labels for 4 images"),
        (dict(labels=np.zeros(3, np.int64)), "no 'images' array"),
    ],
)
def test_bad_npz_files_are_user_errors_naming_the_file(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=f"bad.npz.*{message}"):
        open_images(str(path))


@pytest.mark.parametrize("shape", [(4, 8, 8), (4, 8, 8, 1), (4, 8, 8, 3), (4, 3, 8, 3)])
def test_good_npz_layouts_load(tmp_path, shape):
    path = tmp_path / "good.npz"
    np.savez(path, images=np.arange(np.prod(shape), dtype=np.uint8).reshape(shape), labels=np.arange(4, dtype=np.uint8))
    images = open_images(str(path))
    channels = shape[3] if len(shape) == 4 else 1
    assert images.images.shape == (4, channels, *shape[1:3]) and images.labels.dtype == torch.int64


def test_npz_that_is_not_a_zip_is_a_user_error(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="cannot read .*bad.npz"):
        open_images(str(tmp_path / "bad.npz"))
