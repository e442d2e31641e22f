"""Tasks: how a batch becomes per-sample results (loss, correctness, attack signals).

A *task* is the one place that knows what a model's outputs and a batch's
targets mean. Everything above it (objectives, masks, evaluation, paths,
attacks, connectivity) asks a task for :class:`SampleOutputs` and never looks
at logits itself, so the same code serves classifiers and language models.

Two tasks are built in:

* :class:`ClassificationTask` (the default everywhere): logits ``(N, C)``,
  integer labels ``(N,)``; per-sample cross-entropy and top-1 correctness.
* :class:`CausalLMTask`: HF-style outputs (``.logits``) or plain logits
  ``(N, L, V)``, dict or tensor inputs, labels ``(N, L)`` shifted by one with
  ``-100`` ignored; per-sample NLL over the answer tokens (mean or sum) and
  token accuracy.

Both run the model through :func:`call_model`, which casts floating-point inputs to
the model's dtype (a float64 or float16 model reads float32 data). A user's own task is
any object with the two methods of :class:`Task`, and optionally a ``collate(items)``
that batches its samples when the library builds a loader from a dataset
(:func:`task_collate`; :class:`CausalLMTask` pads token sequences).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import IGNORE_INDEX, PadCollator, UnlearnBatch, move_to_device, stack_collate
from .errors import ModeConnError

__all__ = [
    "Batch",
    "CausalLMTask",
    "ClassificationTask",
    "SampleOutputs",
    "Task",
    "call_model",
    "cast_inputs",
    "resolve_task",
    "task_collate",
]


#: A batch as a task reads it: the one batch type, :class:`~modeconn_unlearn.data.UnlearnBatch`.
Batch = UnlearnBatch


@dataclass
class SampleOutputs:
    """Per-sample results of one forward pass.

    Attributes:
        loss: ``(N,)`` per-sample loss, differentiable when the pass was.
        correct: ``(N,)`` float in [0, 1]: 1/0 for a class, the share of
            correctly predicted answer tokens for a sequence.
        signals: Detached raw signals for attacks, keyed by name; which keys
            exist depends on the task (see each task's docstring).
    """

    loss: Tensor
    correct: Tensor
    signals: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.loss.shape[0])


@runtime_checkable
class Task(Protocol):
    """The task protocol: read a batch, and turn (model, inputs, targets) into per-sample results.

    Example:
        >>> isinstance(ClassificationTask(), Task)
        True
    """

    name: str

    def split(self, batch: Any, *, device: torch.device | str | None = None) -> Batch:
        """Read ``batch`` into :class:`Batch` (moved to ``device`` if given)."""
        ...

    def __call__(
        self, model: nn.Module, inputs: Any, targets: Tensor, *, signals: bool = False
    ) -> SampleOutputs:
        """Run ``model`` on ``inputs`` and score every sample against ``targets``."""
        ...


def _split_sequence(batch: Any, task: str) -> Batch:
    if isinstance(batch, Tensor):
        return Batch(batch, None, None)
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return Batch(batch[0], None, None)
        if len(batch) in (2, 3):
            targets = batch[1] if isinstance(batch[1], Tensor) else torch.as_tensor(batch[1])
            flags = None if len(batch) == 2 else torch.as_tensor(batch[2]).bool()
            return Batch(batch[0], targets, flags)
    if isinstance(batch, Mapping):
        return _split_mapping(batch, task)
    raise ModeConnError(
        f"{task} cannot read a batch of type {type(batch).__name__}; give (inputs, targets), "
        "an UnlearnBatch(inputs, targets, is_forget) or a dict with a 'labels' key."
    )


def _split_mapping(batch: Mapping[str, Any], task: str) -> Batch:
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "is_forget")}
    if not inputs:
        raise ModeConnError(f"{task} got a dict batch with no model inputs: {sorted(batch)}.")
    labels = batch.get("labels")
    flags = batch.get("is_forget")
    return Batch(
        inputs,
        None if labels is None else torch.as_tensor(labels),
        None if flags is None else torch.as_tensor(flags).bool(),
    )


def _moved(batch: Batch, device: torch.device | str | None) -> Batch:
    if device is None:
        return batch
    return Batch(*(move_to_device(item, device) for item in batch))


def cast_inputs(model: Callable[..., Any], inputs: Any) -> Any:
    """``inputs`` with floating-point tensors cast to the dtype of ``model``'s parameters.

    The dtype is that of the model's first floating-point parameter, so a float64
    or float16 model reads the float32 tensors a dataset usually holds. A tensor
    input, or the tensor values of a dict input, are cast; integer inputs (token
    ids, attention masks) and anything else are left alone, as are the inputs of a
    model that is not an ``nn.Module`` (a plain function) or has no floating-point
    parameter.

    Args:
        model: The module the inputs are for.
        inputs: A tensor, a dict of keyword inputs, or anything the model takes.

    Returns:
        The inputs, cast (a dict input comes back as a new dict).

    Example:
        >>> model = nn.Linear(2, 1).double()
        >>> cast_inputs(model, torch.ones(3, 2)).dtype
        torch.float64
        >>> cast_inputs(model, {"x": torch.ones(1), "ids": torch.tensor([1])})["ids"].dtype
        torch.int64
    """
    params = model.parameters() if isinstance(model, nn.Module) else ()
    dtype = next((p.dtype for p in params if p.is_floating_point()), None)
    if dtype is None:
        return inputs
    if isinstance(inputs, Mapping):
        return {key: _cast(value, dtype) for key, value in inputs.items()}
    return _cast(inputs, dtype)


def call_model(model: Callable[..., Any], inputs: Any) -> Any:
    """Run ``model`` on a batch's inputs: a dict as keyword arguments, anything else as is.

    Floating-point inputs are cast to the model's dtype first (:func:`cast_inputs`).

    Example:
        >>> call_model(nn.Linear(2, 1).double(), torch.ones(3, 2)).dtype
        torch.float64
    """
    inputs = cast_inputs(model, inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


def _shape_of(value: Any) -> str:
    """A tensor's shape, or the type name of anything else, for error messages."""
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def _logits_of(output: Any) -> Any:
    logits = getattr(output, "logits", None)
    if logits is not None:
        return logits
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    return output


class ClassificationTask:
    """Classification: logits ``(N, C)`` against integer labels ``(N,)``.

    ``loss`` is the per-sample cross-entropy, ``correct`` the top-1 hit.
    With ``signals=True`` it adds ``"logits"`` (float32) and ``"labels"``,
    from which the attacks compute confidence, entropy and m-entropy.

    Example:
        >>> task = ClassificationTask()
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
        >>> out = task(model, torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]))
        >>> out.correct.tolist()
        [1.0, 0.0]
    """

    name = "classification"

    def split(self, batch: Any, *, device: torch.device | str | None = None) -> Batch:
        """Read ``(x, y)``, ``(x, y, is_forget)``, a dict with ``labels``, or a bare input."""
        return _moved(_split_sequence(batch, "ClassificationTask"), device)

    def __call__(
        self, model: nn.Module, inputs: Any, targets: Tensor, *, signals: bool = False
    ) -> SampleOutputs:
        """Per-sample cross-entropy and top-1 correctness of ``model`` on ``inputs``."""
        logits = _logits_of(call_model(model, inputs))
        self._check(logits, targets)
        targets = targets.to(logits.device)
        loss = F.cross_entropy(logits, targets, reduction="none")
        correct = (logits.detach().argmax(dim=1) == targets).to(torch.float32)
        extra = {"logits": logits.detach().float(), "labels": targets.detach()} if signals else {}
        return SampleOutputs(loss=loss, correct=correct, signals=extra)

    @staticmethod
    def _check(logits: Any, targets: Tensor) -> None:
        n = len(targets) if isinstance(targets, Tensor) and targets.ndim > 0 else "N"
        if not isinstance(targets, Tensor) or targets.ndim != 1 or targets.is_floating_point():
            raise ModeConnError(
                "ClassificationTask expects 1-D integer class labels of shape (N,), got "
                f"{_shape_of(targets)}. For (batch, seq) token labels use task=CausalLMTask()."
            )
        if not isinstance(logits, Tensor) or logits.ndim != 2 or len(logits) != len(targets):
            raise ModeConnError(
                f"ClassificationTask expects logits of shape (batch, classes) = ({n}, C), got "
                f"{_shape_of(logits)}. Wrap the model so that forward returns (N, C) logits, "
                "or use task=CausalLMTask() for (N, L, V) token logits."
            )

    def __repr__(self) -> str:
        return "ClassificationTask()"


class CausalLMTask:
    """Causal language modelling: next-token NLL over the answer tokens.

    Inputs are a token-id tensor ``(N, L)`` or a dict of keyword inputs
    (``input_ids``, ``attention_mask``, ...); the model returns HF-style
    outputs with ``.logits`` or plain logits ``(N, L, V)``. Labels ``(N, L)``
    are aligned with the inputs, as in Hugging Face: the logits at position
    ``i`` predict label ``i + 1``, and ``-100`` marks tokens that are not
    scored (prompt, padding). A dict batch carries them under ``"labels"``.

    Args:
        reduction: ``"mean"`` (per-sample loss = mean NLL over its answer
            tokens) or ``"sum"`` (summed NLL).
        pad_token_id: The id :meth:`collate` writes into padded positions
            (never attended to or scored, so any id in the vocabulary works).

    :meth:`collate` pads variable-length examples (e.g. of
    :class:`~modeconn_unlearn.lm.QADataset`) into one batch; the library uses
    it wherever it batches a dataset for this task (:func:`task_collate`).

    ``correct`` is the share of answer tokens predicted exactly (greedy). With
    ``signals=True`` it adds ``"token_logprobs"`` ``(N, L-1)`` (log-probability
    of each label token, 0 where not scored), ``"token_mask"`` ``(N, L-1)``,
    ``"mink_pp"`` ``(N, L-1)`` (the Min-K%++ score
    ``(log p(x_i) - mu_i) / sigma_i`` under the model's next-token distribution),
    ``"token_correct"`` ``(N, L-1)`` (whether each label token is the greedy
    prediction), ``"nll_sum"`` and ``"num_tokens"`` ``(N,)``, and ``"labels"``.

    Example:
        >>> task = CausalLMTask()
        >>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens
        >>> model = lambda ids: logits
        >>> labels = torch.tensor([[-100, 1, 2]])
        >>> out = task(model, torch.zeros(1, 3, dtype=torch.long), labels)
        >>> round(out.loss.item(), 4) == round(float(torch.log(torch.tensor(4.0))), 4)
        True
    """

    name = "causal_lm"

    def __init__(
        self, reduction: Literal["mean", "sum"] = "mean", *, pad_token_id: int = 0
    ) -> None:
        if reduction not in ("mean", "sum"):
            raise ModeConnError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")
        self.reduction = reduction
        self._pad = PadCollator(pad_token_id)

    def collate(self, items: list[Any]) -> Any:
        """Batch samples: stacked when they have one length, else padded.

        Samples of one length are stacked as PyTorch's ``default_collate`` does
        (the inputs keep their form); token sequences of different lengths are
        padded on the right by :class:`~modeconn_unlearn.data.PadCollator`
        (dict inputs ``{"input_ids", "attention_mask"}``, labels ``-100``).

        Example:
            >>> item = lambda n: ({"input_ids": torch.ones(n, dtype=torch.long)},
            ...                   torch.ones(n, dtype=torch.long))
            >>> CausalLMTask().collate([item(2), item(3)])["labels"].tolist()
            [[1, 1, -100], [1, 1, 1]]
        """
        try:
            return stack_collate(items)
        except ModeConnError:  # samples of different sizes
            return self._pad(items)

    def split(self, batch: Any, *, device: torch.device | str | None = None) -> Batch:
        """Read a dict batch (``labels`` inside), ``(inputs, labels)`` or ``UnlearnBatch``."""
        return _moved(_split_sequence(batch, "CausalLMTask"), device)

    def __call__(
        self, model: nn.Module, inputs: Any, targets: Tensor, *, signals: bool = False
    ) -> SampleOutputs:
        """Per-sample answer NLL and token accuracy of ``model`` on ``inputs``."""
        logits = _logits_of(call_model(model, inputs))
        self._check(logits, targets)
        targets = targets.to(logits.device)
        shifted = logits[:, :-1]
        labels = targets[:, 1:]
        mask = labels != IGNORE_INDEX
        counts = mask.sum(dim=1)
        if bool((counts == 0).any()):
            empty = (counts == 0).nonzero().flatten().tolist()
            raise ModeConnError(
                f"CausalLMTask: samples {empty[:8]} of the batch have no scored token (all "
                "labels after the first are -100); give every sample at least one answer token."
            )
        safe = labels.masked_fill(~mask, 0)
        log_probs = torch.log_softmax(shifted.float(), dim=-1)
        token_lp = log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1) * mask
        nll_sum = -token_lp.sum(dim=1)
        loss = nll_sum / counts if self.reduction == "mean" else nll_sum
        hits = (shifted.detach().argmax(dim=-1) == labels) & mask
        correct = hits.sum(dim=1).float() / counts
        extra: dict[str, Tensor] = {}
        if signals:
            with torch.no_grad():
                probs = log_probs.exp()
                mu = (probs * log_probs).sum(-1)
                var = (probs * log_probs.square()).sum(-1) - mu.square()
                mink_pp = (token_lp - mu) / var.clamp(min=1e-12).sqrt()
            extra = {
                "token_logprobs": token_lp.detach(),
                "token_mask": mask,
                "mink_pp": (mink_pp * mask).detach(),
                "token_correct": hits,
                "nll_sum": nll_sum.detach(),
                "num_tokens": counts,
                "labels": labels.detach(),
            }
        return SampleOutputs(loss=loss, correct=correct, signals=extra)

    @staticmethod
    def _check(logits: Any, targets: Tensor) -> None:
        if not isinstance(targets, Tensor) or targets.ndim != 2 or targets.is_floating_point():
            raise ModeConnError(
                "CausalLMTask expects integer token labels of shape (batch, seq) with -100 on "
                f"unscored tokens, got {_shape_of(targets)}. For class labels use "
                "task=ClassificationTask()."
            )
        expected = f"({targets.shape[0]}, {targets.shape[1]}, V)"
        if not (
            isinstance(logits, Tensor) and logits.ndim == 3 and logits.shape[:2] == targets.shape
        ):
            raise ModeConnError(
                f"CausalLMTask expects logits of shape (batch, seq, vocab) = {expected} (or an "
                f"output with .logits of that shape), got {_shape_of(logits)}."
            )

    def __repr__(self) -> str:
        pad = self._pad.pad_token_id
        return f"CausalLMTask(reduction={self.reduction!r}" + (
            f", pad_token_id={pad})" if pad else ")"
        )


_DEFAULT = ClassificationTask()


def resolve_task(task: Task | None) -> Task:
    """``task``, checked, or the default :class:`ClassificationTask` for ``None``.

    Raises:
        TypeError: ``task`` does not have the :class:`Task` methods.

    Example:
        >>> resolve_task(None)
        ClassificationTask()
    """
    if task is None:
        return _DEFAULT
    if not isinstance(task, Task):
        raise TypeError(
            f"task must have split(batch) and __call__(model, inputs, targets), got "
            f"{type(task).__name__}; use ClassificationTask(), CausalLMTask() or your own."
        )
    return task


def task_collate(task: Task | None) -> Callable[[list[Any]], Any] | None:
    """The task's ``collate(items)`` for batching a dataset of its samples, or ``None``.

    ``collate`` is optional in the :class:`Task` protocol; without one the
    library stacks samples (:func:`~modeconn_unlearn.data.stack_collate`).

    Example:
        >>> task_collate(ClassificationTask()) is None, callable(task_collate(CausalLMTask()))
        (True, True)
    """
    collate = getattr(task, "collate", None)
    return collate if callable(collate) else None
