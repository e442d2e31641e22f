"""Real data for examples, tests and benchmarks, read from local files only.

Two small image-classification datasets, returned as
:class:`~torch.utils.data.TensorDataset` objects of ``(float image, long label)``:

- :func:`load_digits`: the 8x8 handwritten digits bundled with scikit-learn
  (1797 images, 10 classes). Always available, loads in milliseconds; the
  default data of the quickstart and of the test suite.
- :func:`load_fashion_mnist`: Fashion-MNIST (60000 + 10000 grey 28x28 images,
  10 classes) read from the IDX files of the Debian package
  ``dataset-fashion-mnist`` or from any directory holding them.

Nothing is downloaded: a missing file is an error that says how to get it.
:func:`read_idx` parses any IDX file (plain or gzip) into a numpy array.
"""

from __future__ import annotations

import gzip
import numbers
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .checks import positive_int
from .errors import ModeConnError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_ROOT",
    "FASHION_MNIST_STD",
    "load_digits",
    "load_fashion_mnist",
    "read_idx",
]

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the IDX files."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Class names of Fashion-MNIST, indexed by label."""

FASHION_MNIST_MEAN = 0.2860
"""Mean pixel value of the Fashion-MNIST training images scaled to [0, 1]."""

FASHION_MNIST_STD = 0.3530
"""Standard deviation of the Fashion-MNIST training pixels scaled to [0, 1]."""

# IDX type codes (third byte of the magic number) -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, np.dtype[np.generic]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_FASHION_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_INSTALL_HINT = (
    "Install the Debian package with `sudo apt-get install dataset-fashion-mnist` "
    f"(it puts the files in {FASHION_MNIST_ROOT}/), or pass root= a directory that "
    "holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
    "and t10k-labels-idx1-ubyte (each plain or with a .gz suffix)."
)


def load_digits(
    *, flatten: bool = True, test_size: float | int = 0.2, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """Scikit-learn's bundled 8x8 digits as a stratified train/test split.

    Pixels are scaled from 0..16 to floats in [0, 1]; labels are ``torch.long``
    in 0..9. The split is stratified by class and reproducible from ``seed``.

    Args:
        flatten: If true, inputs are vectors of 64 features (for an MLP);
            otherwise images of shape ``(1, 8, 8)`` (for a CNN).
        test_size: Fraction of the 1797 samples in the test set (a float in
            (0, 1)) or their number (an int).
        seed: Seed of the shuffled split.

    Returns:
        ``(train, test)``, two datasets yielding ``(x, y)`` pairs.

    Raises:
        ModeConnError: If ``test_size`` leaves either split without a sample
            of every class.

    Example:
        >>> train, test = load_digits(test_size=0.25)
        >>> len(train), len(test)
        (1347, 450)
        >>> x, y = train[0]
        >>> tuple(x.shape), x.dtype, y.dtype
        ((64,), torch.float32, torch.int64)
        >>> load_digits(flatten=False)[0][0][0].shape
        torch.Size([1, 8, 8])
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    images, labels = sklearn_digits(return_X_y=True)
    total, num_classes = len(labels), 10
    test_count = _split_count(test_size, total)
    if test_count < num_classes or total - test_count < num_classes:
        raise ModeConnError(
            f"test_size={test_size!r} puts {test_count} of {total} digits in the test set; "
            f"both splits need at least {num_classes} samples (one per class). "
            "Use a fraction such as 0.2."
        )
    train_idx, test_idx = train_test_split(
        np.arange(total), test_size=test_count, random_state=seed, stratify=labels
    )
    x = torch.as_tensor(images, dtype=torch.float32) / 16.0
    if not flatten:
        x = x.reshape(-1, 1, 8, 8)
    y = torch.as_tensor(labels, dtype=torch.long)
    train = torch.as_tensor(np.sort(train_idx))
    test = torch.as_tensor(np.sort(test_idx))
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def _split_count(test_size: float | int, total: int) -> int:
    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real):
        raise ModeConnError(
            f"test_size must be a fraction in (0, 1) or a number of samples, got {test_size!r}."
        )
    if isinstance(test_size, numbers.Integral):
        return int(test_size)
    if not 0.0 < test_size < 1.0:
        raise ModeConnError(f"test_size={test_size!r} must lie strictly between 0 and 1.")
    return int(np.ceil(test_size * total))


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    train: bool = True,
    normalize: bool = True,
    limit: int | None = None,
) -> TensorDataset:
    """Fashion-MNIST read from its IDX files (plain or gzip); nothing is downloaded.

    Images come back as ``float32`` tensors of shape ``(N, 1, 28, 28)`` with
    pixels scaled to [0, 1] and, if ``normalize``, standardised with the
    training-set statistics :data:`FASHION_MNIST_MEAN` and
    :data:`FASHION_MNIST_STD` (the same constants for the test split, so no
    information flows from test to train). Labels are ``torch.long`` in 0..9;
    their names are in :data:`FASHION_MNIST_CLASSES`.

    Args:
        root: Directory with the IDX files (``~`` is expanded). Defaults to
            :data:`FASHION_MNIST_ROOT`, where ``apt-get install
            dataset-fashion-mnist`` puts them. A torchvision-style directory
            (``root/FashionMNIST/raw/``) is found too.
        train: The 60000 training images if true, else the 10000 test images.
        normalize: Standardise pixels with the training mean and standard
            deviation; if false they stay in [0, 1].
        limit: Read only the first ``limit`` samples (the files are in random
            class order, so every class appears); ``None`` reads all.

    Returns:
        A dataset yielding ``(image, label)`` pairs.

    Raises:
        ModeConnError: If a file is missing (the message says how to install it
            or where to point ``root``), is not a valid IDX file (bad magic
            number, truncated, corrupt gzip), or images and labels disagree.

    Example:
        >>> test = load_fashion_mnist(train=False, limit=100)  # doctest: +SKIP
        >>> test.tensors[0].shape, test.tensors[1][:3]  # doctest: +SKIP
        (torch.Size([100, 1, 28, 28]), tensor([9, 2, 1]))
    """
    positive_int(limit, "limit", optional=True)
    images_name, labels_name = _FASHION_FILES[bool(train)]
    directory = Path(root).expanduser() if root is not None else FASHION_MNIST_ROOT
    images_path = _find_file(directory, images_name)
    labels_path = _find_file(directory, labels_name)

    images = read_idx(images_path, limit=limit)
    labels = read_idx(labels_path, limit=limit)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ModeConnError(
            f"{images_path} holds an array of shape {images.shape} and dtype {images.dtype}; "
            "Fashion-MNIST images are unsigned bytes of shape (N, 28, 28)."
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ModeConnError(
            f"{labels_path} holds an array of shape {labels.shape} and dtype {labels.dtype}; "
            "Fashion-MNIST labels are unsigned bytes of shape (N,)."
        )
    if len(images) != len(labels):
        raise ModeConnError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
            "labels; the files belong to different datasets or one is incomplete."
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise ModeConnError(
            f"{labels_path} contains label {int(labels.max())}; Fashion-MNIST labels are 0..9."
        )

    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).unsqueeze_(1)
    if normalize:
        x.sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)
    y = torch.from_numpy(labels.astype(np.int64))
    return TensorDataset(x, y)


def _find_file(directory: Path, name: str) -> Path:
    tried = []
    for folder in (directory, directory / "FashionMNIST" / "raw"):
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
            tried.append(str(candidate))
    raise ModeConnError(f"Fashion-MNIST file not found; tried {', '.join(tried)}. {_INSTALL_HINT}")


def read_idx(path: str | os.PathLike[str], *, limit: int | None = None) -> np.ndarray:
    r"""Parse an IDX file (the MNIST family's format), plain or gzip-compressed.

    The format is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then
    ``ndim`` big-endian ``uint32`` dimensions, then the values in big-endian
    row-major order. Compression is detected from the content, not the name.

    Args:
        path: The file to read.
        limit: Read only the first ``limit`` entries along the first axis;
            ``None`` reads the whole file and checks that nothing follows.

    Returns:
        An array of the file's shape (first axis cut to ``limit``) and
        native-endian dtype.

    Raises:
        ModeConnError: If the file is missing, has a bad magic number or an
            unknown type code, is truncated or has trailing bytes, or is a
            corrupt gzip stream.

    Example:
        >>> import struct, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "tiny-idx2-ubyte"
        >>> header = b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3)
        >>> _ = path.write_bytes(header + bytes(range(6)))
        >>> read_idx(path)
        array([[0, 1, 2],
               [3, 4, 5]], dtype=uint8)
    """
    path = Path(path)
    if not path.is_file():
        raise ModeConnError(f"IDX file {path} does not exist.")
    with path.open("rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as stream:
            return _parse_idx(stream.read, path, limit)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ModeConnError(
            f"{path} is not a readable gzip file ({exc}); the download or copy is corrupt. "
            "Replace the file."
        ) from exc


def _parse_idx(read: Callable[[int], bytes], path: Path, limit: int | None) -> np.ndarray:
    magic = read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] not in _IDX_DTYPES:
        raise ModeConnError(
            f"{path} is not an IDX file: its magic number is {magic.hex() or 'empty'}, "
            "expected 0000 followed by a type code (08 ubyte, 09 byte, 0b short, 0c int, "
            "0d float, 0e double) and the number of dimensions."
        )
    dtype, ndim = _IDX_DTYPES[magic[2]], magic[3]
    header = read(4 * ndim)
    if len(header) < 4 * ndim:
        raise ModeConnError(f"{path} is truncated inside its header ({ndim} dimensions).")
    shape = tuple(int(d) for d in np.frombuffer(header, dtype=">u4"))
    if limit is not None and ndim > 0:
        shape = (min(shape[0], limit), *shape[1:])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data = read(expected)
    if len(data) < expected:
        raise ModeConnError(
            f"{path} is truncated: its header announces shape {shape} ({expected} bytes of "
            f"data) but only {len(data)} bytes follow. Replace the file."
        )
    if limit is None and read(1):
        raise ModeConnError(
            f"{path} has bytes after the {expected} announced by its header (shape {shape}); "
            "it is not a valid IDX file."
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
