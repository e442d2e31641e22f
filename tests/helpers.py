"""What test modules import: a tiny model, a model-state comparison, a notebook runner.

``conftest.py`` holds the fixtures; the functions here are imported by name
(``from helpers import make_mlp``). pytest puts ``tests/`` on ``sys.path`` (the
directory of ``conftest.py`` and of every test module, which have no ``__init__.py``),
so the import works from the repository root and for a single test file alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Subset

#: A hang guard for notebook cells and example scripts, not a speed limit: generous, so
#: that a busy machine does not fail a run.
CELL_TIMEOUT = 900


def make_mlp(seed: int = 0) -> nn.Module:
    """A seeded 64-32-10 MLP for the digits data.

    Example:
        >>> torch.equal(make_mlp(3)[0].weight, make_mlp(3)[0].weight)
        True
    """
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class Bigram(nn.Module):
    """A causal LM whose logits at a position depend only on the token there: ``table[token]``.

    Example:
        >>> Bigram(torch.eye(3))(torch.tensor([[2, 0]])).tolist()
        [[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]]
    """

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.table[input_ids]


@dataclass(frozen=True)
class ModelState:
    """Copies of what a function may change in a model.

    Attributes:
        modes: Each submodule's ``training`` flag.
        parameters: Each parameter's values.
        requires_grad: Each parameter's flag.
        grads: Each parameter's gradient (``None`` when it has none).
        buffers: Each buffer's values (BatchNorm statistics and counters).
    """

    modes: dict[str, bool]
    parameters: dict[str, Tensor]
    requires_grad: dict[str, bool]
    grads: dict[str, Tensor | None]
    buffers: dict[str, Tensor]


def model_state(model: nn.Module) -> ModelState:
    """A copy of ``model``'s modes, parameters, flags, gradients and buffers.

    Example:
        >>> model_state(nn.BatchNorm1d(2)).modes
        {'': True}
    """
    return ModelState(
        modes={name: m.training for name, m in model.named_modules()},
        parameters={n: p.detach().clone() for n, p in model.named_parameters()},
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        grads={
            n: None if p.grad is None else p.grad.detach().clone()
            for n, p in model.named_parameters()
        },
        buffers={n: b.detach().clone() for n, b in model.named_buffers()},
    )


def _assert_same_tensors(
    kind: str, before: Mapping[str, Tensor | None], after: Mapping[str, Tensor | None]
) -> None:
    assert after.keys() == before.keys(), f"{kind}: {sorted(before)} -> {sorted(after)}"
    for name, value in before.items():
        now = after[name]
        if value is None or now is None:
            assert value is None and now is None, f"{kind} {name} appeared or vanished"
        else:
            assert torch.equal(now, value), f"{kind} {name} changed"


def assert_unchanged(model: nn.Module, before: ModelState, *, buffers: bool = True) -> None:
    """Assert that ``model`` is as :func:`model_state` saw it.

    Args:
        model: The model now.
        before: Its state before the call under test.
        buffers: Also compare the buffers (off for a call whose job is to change them,
            such as re-estimating BatchNorm statistics).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
        >>> before = model_state(net)
        >>> assert_unchanged(net.eval(), before)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        AssertionError: modes changed: {'': True, '0': True, '1': True} -> ...
    """
    after = model_state(model)
    assert after.modes == before.modes, f"modes changed: {before.modes} -> {after.modes}"
    assert after.requires_grad == before.requires_grad, "requires_grad flags changed"
    _assert_same_tensors("parameter", before.parameters, after.parameters)
    _assert_same_tensors("gradient", before.grads, after.grads)
    if buffers:
        _assert_same_tensors("buffer", before.buffers, after.buffers)


def run_notebook(
    path: Path, *, cwd: Path | None = None, edit: Callable[[Any], None] | None = None
) -> Any:
    """Execute the notebook at ``path`` in a fresh kernel and return it with its outputs.

    The notebook must be committed without outputs. Skips the test when ``nbformat`` or
    ``nbclient`` is missing.

    Args:
        path: The ``.ipynb`` file.
        cwd: The kernel's working directory; default: the notebook's folder.
        edit: Changes the read notebook in place before it runs (e.g. smaller settings).

    Returns:
        The executed ``nbformat.NotebookNode`` (see :func:`output_text`).
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
        f"{path.name} is committed with outputs; clear them"
    )
    if edit is not None:
        edit(notebook)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd or path.parent)}},
    )
    client.execute()
    return notebook


def output_text(notebook: Any) -> str:
    """The printed text and plain-text results of every cell, one output per line.

    Example:
        >>> cell = {"outputs": [{"text": "a"}, {"data": {"text/plain": "2"}}]}
        >>> output_text({"cells": [cell]}).split()
        ['a', '2']
    """
    return "\n".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for cell in notebook["cells"]
        for output in cell.get("outputs", [])
    )


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``module``'s state dict, to compare two runs' results."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    """Whether two :func:`snapshot` results hold the same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def tensors(dataset: Any) -> tuple[Tensor, Tensor]:
    """The ``(x, y)`` tensors behind a ``TensorDataset`` or a ``Subset`` of one, in order."""
    if isinstance(dataset, Subset):
        x, y = tensors(dataset.dataset)
        index = torch.as_tensor(dataset.indices)
        return x[index], y[index]
    return dataset.tensors


class Stop(Exception):
    """Raised by :func:`stop_at` to end a run early, as a killed process would."""


def stop_at(epoch: int) -> Callable[[Any, nn.Module], None]:
    """An epoch callback that raises :class:`Stop` after epoch ``epoch``."""

    def callback(record: Any, model: nn.Module) -> None:
        if record.epoch == epoch:
            raise Stop

    return callback
