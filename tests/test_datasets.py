from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_digits

from modeconn_unlearn.datasets import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_ROOT,
    FASHION_MNIST_STD,
    load_digits,
    load_fashion_mnist,
    read_idx,
)
from modeconn_unlearn.errors import ModeConnError

# ---------------------------------------------------------------- helpers


def idx_bytes(type_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file written by hand: magic 00 00 <type> <ndim>, big-endian dims, data."""
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def write(path: Path, content: bytes, *, compress: bool) -> Path:
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)
    return path


def fake_fashion(root: Path, *, n: int, prefix: str = "train", compress: bool = True) -> tuple:
    """Write an n-sample Fashion-MNIST pair of IDX files; return the raw arrays."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    write(
        root / f"{prefix}-images-idx3-ubyte",
        idx_bytes(0x08, (n, 28, 28), images.tobytes()),
        compress=compress,
    )
    write(
        root / f"{prefix}-labels-idx1-ubyte",
        idx_bytes(0x08, (n,), labels.tobytes()),
        compress=compress,
    )
    return images, labels


# ---------------------------------------------------------------- read_idx


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_ubyte_matches_hand_made_bytes(tmp_path: Path, compress: bool) -> None:
    content = idx_bytes(0x08, (2, 2, 3), bytes(range(12)))
    path = write(tmp_path / "x-idx3-ubyte", content, compress=compress)
    array = read_idx(path)
    assert array.dtype == np.uint8
    assert array.shape == (2, 2, 3)
    assert array[1, 0, 2] == 8  # row-major: 1*6 + 0*3 + 2
    np.testing.assert_array_equal(array.ravel(), np.arange(12))


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_multibyte_types_are_big_endian(tmp_path: Path, compress: bool) -> None:
    # int32 258 is 00 00 01 02 and -1 is ff ff ff ff in big-endian; float 1.5 is 3f c0 00 00.
    ints = write(
        tmp_path / "i",
        idx_bytes(0x0C, (2,), b"\x00\x00\x01\x02\xff\xff\xff\xff"),
        compress=compress,
    )
    np.testing.assert_array_equal(read_idx(ints), [258, -1])
    assert read_idx(ints).dtype == np.int32
    floats = write(tmp_path / "f", idx_bytes(0x0D, (1,), b"\x3f\xc0\x00\x00"), compress=compress)
    np.testing.assert_array_equal(read_idx(floats), [1.5])


def test_read_idx_limit_reads_leading_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "x", idx_bytes(0x08, (4, 2), bytes(range(8))), compress=True)
    np.testing.assert_array_equal(read_idx(path, limit=2), [[0, 1], [2, 3]])
    assert read_idx(path, limit=10).shape == (4, 2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x08\x03\x00\x00" + bytes(20), "magic number"),  # bytes in the wrong order
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "magic number"),  # unknown type
        (b"\x00\x00", "magic number"),  # too short for a magic number
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "header"),  # dims cut off
        (idx_bytes(0x08, (3, 4), bytes(11)), "truncated"),  # one byte short
        (idx_bytes(0x08, (3, 4), bytes(13)), "after"),  # one byte too many
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_malformed(tmp_path: Path, content: bytes, message: str, compress: bool) -> None:
    path = write(tmp_path / "bad", content, compress=compress)
    with pytest.raises(ModeConnError, match=message):
        read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    good = gzip.compress(idx_bytes(0x08, (100,), bytes(100)))
    path = tmp_path / "x.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModeConnError, match="gzip"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModeConnError, match="does not exist"):
        read_idx(tmp_path / "nothing")


# ---------------------------------------------------------------- load_fashion_mnist


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_from_hand_made_files(tmp_path: Path, compress: bool) -> None:
    images, labels = fake_fashion(tmp_path, n=7, compress=compress)
    data = load_fashion_mnist(tmp_path, normalize=False)
    x, y = data.tensors
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.long
    torch.testing.assert_close(x[:, 0], torch.tensor(images, dtype=torch.float32) / 255.0)
    torch.testing.assert_close(y, torch.tensor(labels, dtype=torch.long))

    normalized = load_fashion_mnist(tmp_path).tensors[0]
    torch.testing.assert_close(normalized, (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD)


def test_fashion_train_and_test_files_and_limit(tmp_path: Path) -> None:
    fake_fashion(tmp_path, n=5, prefix="train")
    test_images, _ = fake_fashion(tmp_path, n=3, prefix="t10k", compress=False)
    assert len(load_fashion_mnist(tmp_path, train=True)) == 5
    test = load_fashion_mnist(tmp_path, train=False, normalize=False, limit=2)
    assert len(test) == 2
    torch.testing.assert_close(test.tensors[0][1, 0], torch.tensor(test_images[1]) / 255.0)


def test_fashion_finds_torchvision_layout(tmp_path: Path) -> None:
    fake_fashion(tmp_path / "FashionMNIST" / "raw", n=4)
    assert len(load_fashion_mnist(tmp_path)) == 4


def test_fashion_root_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_fashion(tmp_path / "data", n=3)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(load_fashion_mnist("~/data")) == 3


def test_fashion_missing_files_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(ModeConnError) as info:
        load_fashion_mnist(tmp_path)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "root=" in message
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in message


def test_fashion_bad_magic(tmp_path: Path) -> None:
    fake_fashion(tmp_path, n=2)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x12\x34\x08\x03"))
    with pytest.raises(ModeConnError, match="magic number is 12340803"):
        load_fashion_mnist(tmp_path)


def test_fashion_truncated_images(tmp_path: Path) -> None:
    fake_fashion(tmp_path, n=2)
    content = idx_bytes(0x08, (2, 28, 28), bytes(28 * 28 + 100))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(content))
    with pytest.raises(ModeConnError, match="truncated"):
        load_fashion_mnist(tmp_path)


def test_fashion_inconsistent_files(tmp_path: Path) -> None:
    fake_fashion(tmp_path, n=3)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(0x08, (2,), bytes(2)), compress=True)
    with pytest.raises(ModeConnError, match=r"3 images but .* 2 labels"):
        load_fashion_mnist(tmp_path)
    write(
        tmp_path / "train-labels-idx1-ubyte",
        idx_bytes(0x08, (3,), bytes([0, 1, 10])),
        compress=True,
    )
    with pytest.raises(ModeConnError, match="label 10"):
        load_fashion_mnist(tmp_path)
    write(
        tmp_path / "train-images-idx3-ubyte", idx_bytes(0x08, (3, 8, 8), bytes(192)), compress=True
    )
    with pytest.raises(ModeConnError, match=r"shape \(3, 8, 8\)"):
        load_fashion_mnist(tmp_path)


@pytest.mark.parametrize("limit", [0, -1, 2.5, True])
def test_fashion_bad_limit(tmp_path: Path, limit: object) -> None:
    with pytest.raises(ModeConnError, match="limit"):
        load_fashion_mnist(tmp_path, limit=limit)  # type: ignore[arg-type]


@pytest.mark.fashion
@pytest.mark.skipif(
    not FASHION_MNIST_ROOT.is_dir(),
    reason=f"Fashion-MNIST not installed in {FASHION_MNIST_ROOT} "
    "(sudo apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist() -> None:
    train = load_fashion_mnist(normalize=False)
    test = load_fashion_mnist(train=False)
    assert len(train) == 60000 and len(test) == 10000
    x, y = train.tensors
    assert x.shape == (60000, 1, 28, 28)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.bincount(y).tolist() == [6000] * 10
    assert torch.bincount(test.tensors[1]).tolist() == [1000] * 10
    # The published normalisation constants are the training set's own statistics.
    assert float(x.mean()) == pytest.approx(FASHION_MNIST_MEAN, abs=1e-4)
    assert float(x.std()) == pytest.approx(FASHION_MNIST_STD, abs=1e-4)


# ---------------------------------------------------------------- load_digits


def test_digits_split_covers_sklearn_data_once() -> None:
    train, test = load_digits(test_size=0.25, seed=3)
    assert (len(train), len(test)) == (1347, 450)
    x = torch.cat([train.tensors[0], test.tensors[0]])
    y = torch.cat([train.tensors[1], test.tensors[1]])
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    reference_x, reference_y = sklearn_digits(return_X_y=True)
    order = np.lexsort(np.column_stack([reference_x, reference_y]).T)
    ours = np.column_stack([x.numpy() * 16.0, y.numpy()])
    ours = ours[np.lexsort(ours.T)]
    np.testing.assert_array_equal(ours, np.column_stack([reference_x, reference_y])[order])


def test_digits_images_and_reproducibility() -> None:
    flat_train, flat_test = load_digits(seed=1)
    image_train, image_test = load_digits(flatten=False, seed=1)
    assert flat_train.tensors[0].shape[1:] == (64,)
    assert image_train.tensors[0].shape[1:] == (1, 8, 8)
    torch.testing.assert_close(image_train.tensors[0].reshape(-1, 64), flat_train.tensors[0])
    torch.testing.assert_close(image_test.tensors[1], flat_test.tensors[1])
    other_train, _ = load_digits(seed=2)
    assert not torch.equal(other_train.tensors[0], flat_train.tensors[0])


def test_digits_split_is_stratified() -> None:
    _, test = load_digits(test_size=100)
    assert len(test) == 100
    counts = torch.bincount(test.tensors[1], minlength=10)
    assert counts.min() >= 9 and counts.max() <= 11


@pytest.mark.parametrize("test_size", [0.0, 1.0, 5, 1795, "0.2", None, True])
def test_digits_bad_test_size(test_size: object) -> None:
    with pytest.raises(ModeConnError, match="test_size"):
        load_digits(test_size=test_size)  # type: ignore[arg-type]
