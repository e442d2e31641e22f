"""Run state: seeded RNGs, and the checkpoint a run writes and resumes from."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import save_checkpoint
from ..errors import ModeConnError

__all__ = [
    "CHECKPOINT_FORMAT",
    "check_resumable",
    "load_state",
    "rng_state",
    "seeded",
    "set_rng_state",
    "write_state",
]

CHECKPOINT_FORMAT = 1


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch/numpy/python RNGs inside the block and restore the caller's states after."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The torch/numpy/python (and CUDA) RNG states, storable with ``weights_only``."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore the RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = state["python"]
    random.setstate(
        (py_state["version"], tuple(int(v) for v in py_state["internal"]), py_state["gauss"])
    )
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def write_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write a run's checkpoint atomically (``format`` added)."""
    save_checkpoint({"format": CHECKPOINT_FORMAT, **state}, path)


def load_state(path: Path) -> dict[str, Any]:
    """Read a run's checkpoint (``weights_only=True``)."""
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def check_resumable(
    state: Mapping[str, Any], kind: str, config: Mapping[str, Any], path: Path
) -> None:
    """Refuse a checkpoint of another kind of run or of other settings.

    Raises:
        ModeConnError: The file is not a checkpoint of ``kind``, or a setting in
            ``config`` differs from the one saved (the message lists them).
    """
    if state.get("format") != CHECKPOINT_FORMAT or state.get("kind") != kind:
        raise ModeConnError(
            f"{path} is not a {kind} checkpoint of this library (kind={state.get('kind')!r}); "
            "point checkpoint_dir elsewhere or pass resume=False to start over."
        )
    saved = state["config"]
    changed = [
        f"{key}: {saved.get(key)!r} -> {value!r}"
        for key, value in config.items()
        if saved.get(key) != value
    ]
    changed += [f"{key}: {saved[key]!r} -> None" for key in saved if key not in config]
    if changed:
        raise ModeConnError(
            f"cannot resume from {path}: settings differ from the interrupted run "
            f"({'; '.join(changed)}). Resume with the same settings, or pass resume=False."
        )
