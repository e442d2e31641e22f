"""The two ends of a curve: where their weights come from and whether they fit the model."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..checkpoint import StateSource
from ..errors import IncompatibleModelsError, listed
from ..wrappers import unwrap

__all__ = ["check_endpoint", "endpoint_source"]


def check_endpoint(expected: Mapping[str, Tensor], given: Mapping[str, Tensor], role: str) -> None:
    """Refuse an end whose state does not match the model's: keys, shapes and dtypes.

    Raises:
        IncompatibleModelsError: Every mismatch listed, with what to pass instead.

    Example:
        >>> import torch
        >>> check_endpoint({"w": torch.zeros(2)}, {"w": torch.ones(2)}, "end")
        >>> try:
        ...     check_endpoint({"w": torch.zeros(2)}, {"w": torch.ones(3)}, "end")
        ... except ValueError as error:
        ...     print(str(error).split(": ")[1].split(";")[0])
        shape mismatches (end vs model) 'w'
    """
    missing = expected.keys() - given.keys()
    unexpected = given.keys() - expected.keys()
    problems = []
    if missing:
        problems.append(f"missing keys {listed(sorted(missing))}")
    if unexpected:
        problems.append(f"unexpected keys {listed(sorted(unexpected))}")
    common = expected.keys() & given.keys()
    shapes = [k for k in common if expected[k].shape != given[k].shape]
    if shapes:
        detail = ", ".join(
            f"{k!r}: {tuple(given[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(shapes)
        )
        problems.append(f"shape mismatches ({role} vs model) {detail}")
    dtypes = [k for k in common if expected[k].dtype != given[k].dtype]
    if dtypes:
        detail = ", ".join(
            f"{k!r}: {given[k].dtype} vs {expected[k].dtype}" for k in sorted(dtypes)
        )
        problems.append(f"dtype mismatches ({role} vs model) {detail}")
    if problems:
        raise IncompatibleModelsError(
            f"The {role} weights do not match the model's architecture: "
            + "; ".join(problems)
            + f". Pass a module or state_dict of the same architecture as {role}=."
        )


def endpoint_source(source: StateSource) -> StateSource:
    """An end as given (module, state dict or path), a DDP or compiled module unwrapped.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> endpoint_source(layer) is layer
        True
    """
    return unwrap(source) if isinstance(source, nn.Module) else source
