"""Safe loading and atomic saving of state dicts and training checkpoints."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from .errors import ModeConnError

__all__ = [
    "StateSource",
    "atomic_write",
    "load_checkpoint",
    "plain_text",
    "save_checkpoint",
    "write_text_atomic",
]

StateSource = nn.Module | Mapping[str, Any] | str | os.PathLike[str]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")


def load_checkpoint(source: StateSource) -> dict[str, torch.Tensor]:
    """Return a plain state dict from a module, a state dict or a checkpoint file.

    Files are read with ``torch.load(weights_only=True)``, so a pickle that would
    run code is refused. A state dict nested under ``"state_dict"``,
    ``"model_state_dict"`` or ``"model"`` is unwrapped, and the ``"module."``
    prefix added by ``DataParallel``/``DistributedDataParallel`` (or
    ``"_orig_mod."`` added by ``torch.compile``) is removed.

    Args:
        source: An ``nn.Module``, a mapping of names to tensors, or a path.

    Returns:
        A new ``dict`` from names to tensors (the tensors are not copied).

    Raises:
        ModeConnError: The file is missing or unsafe, or holds no tensors.

    Example:
        >>> from torch import nn
        >>> sorted(load_checkpoint({"module.weight": torch.ones(1)}))
        ['weight']
    """
    if isinstance(source, nn.Module):
        state: Any = source.state_dict()
    elif isinstance(source, Mapping):
        state = source
    elif isinstance(source, (str, os.PathLike)):
        state = _load_file(Path(source))
    else:
        raise TypeError(
            "Expected an nn.Module, a state dict or a checkpoint path, "
            f"got {type(source).__name__}."
        )
    for key in _WRAPPER_KEYS:
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModeConnError(
            "The checkpoint holds no tensors; pass a model's state_dict() or a file saved from one."
        )
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def plain_text(message: str) -> str:
    r"""``message`` without ANSI terminal escape codes (bold, colours).

    Example:
        >>> plain_text("\x1b[1mbold\x1b[0m text")
        'bold text'
    """
    return _ANSI.sub("", message)


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise ModeConnError(f"Checkpoint file {str(path)!r} does not exist; check the path.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = plain_text(str(error))
        found = _GLOBAL.search(detail)
        holds = (
            f"it holds a pickled {found.group(1)} object (e.g. a whole model saved with "
            "torch.save(model, path)), which could run code when loaded"
            if found
            else "it may contain code"
        )
        reason = "" if found else f" Details: {' '.join(detail.split())[:300]}"
        raise ModeConnError(
            f"Refusing to load {str(path)!r}: it is not loadable with weights_only=True ({holds}). "
            "Re-save it as a plain state dict with torch.save(model.state_dict(), path), where "
            f"you trust the file.{reason}"
        ) from error


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Write a file atomically: ``write(stream)`` fills a temporary file, then it is renamed.

    The temporary file lies in the destination's directory (created if needed)
    and is flushed and fsynced before ``os.replace`` puts it in place, so a
    crash, even SIGKILL, leaves either the old file or the new one, never half
    of one. This is the library's one atomic writer.

    Args:
        path: Destination file.
        write: Called once with the open binary stream.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     atomic_write(os.path.join(d, "a", "b.txt"), lambda f: f.write(b"hello"))
        ...     open(os.path.join(d, "a", "b.txt")).read()
        'hello'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through the library's one atomic writer.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_text_atomic(Path(d) / "a" / "b.txt", "hello")
        ...     (Path(d) / "a" / "b.txt").read_text()
        'hello'
    """
    atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))


def save_checkpoint(obj: Any, path: str | os.PathLike[str]) -> None:
    """Save ``obj`` with ``torch.save`` atomically (see :func:`atomic_write`).

    Args:
        obj: Anything ``torch.save`` accepts; keep to tensors, numbers, strings,
            lists and dicts so that it loads with ``weights_only=True``.
        path: Destination file; its directory is created if needed.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_checkpoint({"w": torch.zeros(2)}, os.path.join(d, "ck.pt"))
        ...     load_checkpoint(os.path.join(d, "ck.pt"))["w"].shape
        torch.Size([2])
    """
    atomic_write(path, lambda stream: torch.save(obj, stream))
