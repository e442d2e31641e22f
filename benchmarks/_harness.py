"""The harness every benchmark script runs on.

Run a script as ``python benchmarks/<name>.py``: Python puts this folder on ``sys.path``,
so ``from _harness import ...`` needs nothing more. What it offers:

* command line and configuration: :func:`parser` (``--quick`` and ``--out``, which every
  script takes), :func:`configure` (the quick or the full configuration, options given on
  the command line, torch's thread count), :func:`command` (the line that reproduces a run);
* timing: :class:`Seconds` and :func:`timed` (wall-clock and CPU time of one call, and on
  request its peak extra resident memory, measured by :class:`PeakMemory`);
* statistics: :func:`mean_ci` (a mean and its Student-t 95 % interval; of per-seed
  differences from :func:`paired_differences`, the paired interval), :func:`mean_cells`
  (that of every score of every row over seeds), :func:`mean_where` (of the records that
  match) and :func:`verdict` (win, loss or tie);
* files: :func:`environment` (versions, threads, git commit), :func:`write_json` (numpy
  values too) and :func:`write_text` (atomic, through the library's writer),
  :func:`wait_for_json` (a file another process is writing, with a timeout),
  :func:`tuned_lrs` (the learning rates ``mcu_table.py`` tuned, read from its tuning file);
* reports: :func:`fmt` (``mean ± ci``), :func:`marked` (a paired difference marked by its
  verdict), :func:`table` (a markdown table) and :func:`score_table` (one of rows x scores);
* methods: :data:`OBJECTIVES` (method name -> objective builder, the classification
  methods and the language-model ones), :func:`objective`, and :class:`Base` (a base
  method's hyperparameters; it adds SalUn's saliency mask);
* the classification world: :class:`DenseHeadCNN`, :func:`model_factory`, the forget
  scenarios (:func:`forget_split`), :func:`random_subset`, :func:`loader`, :func:`cosine`
  and :func:`score` (the scripts pass it models whose BatchNorm was re-estimated with the
  library's ``batchnorm.with_bn_from``, as the points of a path are).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import torch
from scipy import stats
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler
from torch.utils.data import DataLoader, Dataset, Subset

import modeconn_unlearn as mcu
from modeconn_unlearn.checkpoint import write_text_atomic
from modeconn_unlearn.zoo import MLP

RESULTS = Path(__file__).parent / "results"
#: The file of ``mcu_table.py --phase tune``: the tuned settings other scripts reuse.
TABLE_TUNING = RESULTS / "mcu_table_tuning.json"
#: How long a report waits for a tuning run in another process (``mcu_table.py --phase
#: tune`` took 25 minutes on the shared 2-core machine; three hours leave room for a busy one).
TUNING_TIMEOUT_S = 3 * 3600.0


# --------------------------------------------------------------------------- configuration
class Configured(Protocol):
    """A configuration: a frozen dataclass with the torch thread count of its run."""

    @property
    def threads(self) -> int: ...


C = TypeVar("C", bound=Configured)


def parser(doc: str | None, *, quick: str) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first paragraph, with ``--quick`` and ``--out``."""
    made = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    made.add_argument("--quick", action="store_true", help=quick)
    made.add_argument("--out", type=Path, default=RESULTS, help="directory of the results")
    return made


def configure(quick: bool, full: C, small: C, **given: Any) -> C:
    """``small`` under ``--quick``, else ``full``, with the options ``given`` (None: not given).

    Sets torch's thread count to the configuration's, so a run uses what it records.
    """
    cfg = dataclasses.replace(
        small if quick else full,  # type: ignore[type-var]
        **{name: value for name, value in given.items() if value is not None},
    )
    torch.set_num_threads(cfg.threads)
    return cfg  # type: ignore[no-any-return]


def command(script: str, argv: Sequence[str] | None) -> str:
    """``python benchmarks/<script> <arguments>``, the line that reproduces the run."""
    arguments = sys.argv[1:] if argv is None else argv
    return " ".join([f"python benchmarks/{Path(script).name}", *arguments])


# --------------------------------------------------------------------------- timing
@dataclasses.dataclass(frozen=True)
class Seconds:
    """Wall-clock and CPU time of a step (CPU time is what other processes disturb least).

    ``peak_mb``: the step's peak resident memory above its level at the start, in MiB,
    when :func:`timed` was asked for it (None otherwise). Steps add up: the times are
    summed and the peak is the higher one.
    """

    wall: float
    cpu: float
    peak_mb: float | None = None

    def __add__(self, other: Seconds) -> Seconds:
        peaks = [p for p in (self.peak_mb, other.peak_mb) if p is not None]
        return Seconds(self.wall + other.wall, self.cpu + other.cpu, max(peaks, default=None))


def rss() -> int:
    """This process's resident memory in bytes, from ``/proc/self/statm`` (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class PeakMemory:
    """Peak resident memory while the block runs, sampled every ``every_s`` seconds.

    ``start`` and ``peak`` are in bytes (:func:`rss`); ``megabytes`` is the peak above the
    level at entry.

    Example:
        >>> with PeakMemory() as memory:
        ...     block = bytearray(2**20)
        >>> memory.megabytes >= 0.0
        True
    """

    def __init__(self, every_s: float = 0.005) -> None:
        self.every_s = every_s

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def megabytes(self) -> float:
        return (self.peak - self.start) / 2**20

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, rss())


def timed(fn: Callable[[], Any], *, peak_memory: bool = False) -> tuple[Any, Seconds]:
    """``fn()`` and the time it took; with ``peak_memory``, also its peak extra memory."""
    if not peak_memory:
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        return result, Seconds(time.perf_counter() - wall, time.process_time() - cpu)
    with PeakMemory() as memory:
        result, took = timed(fn)
    return result, dataclasses.replace(took, peak_mb=memory.megabytes)


# --------------------------------------------------------------------------- statistics
def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean and the half-width of its Student-t confidence interval (NaN for one value).

    On per-seed differences (:func:`paired_differences`) it is the paired interval.
    """
    array = np.asarray(values, dtype=np.float64)
    n = len(array)
    mean = float(array.mean())
    if n < 2:
        return {"mean": mean, "ci": float("nan"), "n": n}
    sem = float(array.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, df=n - 1)) * sem
    return {"mean": mean, "ci": half, "n": n}


def mean_cells(
    rows: Sequence[Mapping[str, Mapping[str, Any]]], scores: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`mean_ci` of every score of every row over seeds: ``{row: {score: cell}}``.

    ``rows`` holds one ``{row: {score: value}}`` per seed; a score that some seed lacks (or
    has as None) is left out of its row.
    """
    return {
        name: {
            score: mean_ci([r[name][score] for r in rows])
            for score in scores
            if all(r[name].get(score) is not None for r in rows)
        }
        for name in rows[0]
    }


def paired_differences(
    rows: Sequence[Mapping[str, Mapping[str, float]]],
    new: str,
    old: str,
    score: str,
    *,
    reference: str | None = None,
) -> list[float]:
    """Per seed (one ``{row: {score: value}}`` per seed): ``new``'s score minus ``old``'s.

    With ``reference``, the difference of their distances ``|score - reference's score|``
    (is ``new`` further from the reference than ``old``?).
    """
    if reference is None:
        return [r[new][score] - r[old][score] for r in rows]
    return [
        abs(r[new][score] - r[reference][score]) - abs(r[old][score] - r[reference][score])
        for r in rows
    ]


def mean_where(records: Iterable[Mapping[str, Any]], key: str, **where: Any) -> float:
    """The mean of ``key`` over the records whose fields equal ``where``'s values.

    Example:
        >>> mean_where([{"m": "GA", "gap": 1.0}, {"m": "GA", "gap": 3.0}], "gap", m="GA")
        2.0
    """
    chosen = [r[key] for r in records if all(r[k] == v for k, v in where.items())]
    return float(np.mean(chosen))


def verdict(stat: Mapping[str, float]) -> Literal["win", "loss", "tie"]:
    """A paired difference (lower is better): ``win`` when its interval lies below 0."""
    if stat["n"] > 1 and stat["mean"] + stat["ci"] < 0:
        return "win"
    if stat["n"] > 1 and stat["mean"] - stat["ci"] > 0:
        return "loss"
    return "tie"


#: How :func:`marked` writes a paired difference: bold when a win, italics when a loss.
MARKS = {"win": "**{}**", "loss": "_{}_", "tie": "{}"}


def marked(stat: Mapping[str, float], digits: int = 2) -> str:
    """A paired difference as ``±mean ± ci``, marked by its :func:`verdict` (:data:`MARKS`).

    Example:
        >>> marked({"mean": -1.0, "ci": 0.5, "n": 5}), marked({"mean": 1.0, "ci": 2.0, "n": 5})
        ('**-1.00 ± 0.50**', '+1.00 ± 2.00')
    """
    return MARKS[verdict(stat)].format(fmt(stat, digits, sign=True))


# --------------------------------------------------------------------------- files
def environment(where: Path | None = None) -> dict[str, Any]:
    """Versions, threads, and the git commit of ``where`` (default: this file's checkout)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=where or Path(__file__).parent,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "git_commit": commit,
        "library": str(Path(mcu.__file__).parent),
    }


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (a stopped run never leaves half a file)."""
    write_text_atomic(path, text)


def _plain(value: Any) -> Any:
    """A numpy scalar or array as the Python number, bool or list JSON can write."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON atomically (numpy values as Python's, NaN as ``NaN``)."""
    write_text(path, json.dumps(data, indent=2, allow_nan=True, default=_plain))


def wait_for_json(path: Path, *, timeout_s: float, poll_s: float = 20.0) -> dict[str, Any]:
    """The JSON file at ``path``, waiting up to ``timeout_s`` for another process to write it."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{path} did not appear within {timeout_s:.0f} s; run the phase that writes it "
                "(e.g. `python benchmarks/mcu_table.py --phase tune`) or pass its directory "
                "with --out."
            )
        time.sleep(poll_s)
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def tuned_lrs() -> dict[str, dict[str, float]]:
    """``{scenario: {method: lr}}``: the learning rates ``mcu_table.py`` tuned (one epoch)."""
    chosen = json.loads(TABLE_TUNING.read_text())["chosen_base"]
    return {
        name: {method: float(lr) for method, (_, lr) in methods.items()}
        for name, methods in chosen.items()
    }


# --------------------------------------------------------------------------- reports
def fmt(cell: Mapping[str, Any], digits: int = 2, *, sign: bool = False) -> str:
    """``mean ± ci`` of a :func:`mean_ci` cell; the mean alone when it has no interval."""
    text = f"{cell['mean']:{'+' if sign else ''}.{digits}f}"
    ci = cell.get("ci")
    if ci is None or math.isnan(ci):
        return text
    return f"{text} ± {ci:.{digits}f}"


def table(header: str, rows: Iterable[Sequence[Any]], *, align: str) -> list[str]:
    """The lines of a markdown table.

    Args:
        header: The column titles, separated by ``" | "``.
        rows: The cells of each row (printed with ``str``).
        align: A letter per column: ``l`` (left) or ``r`` (right).

    Example:
        >>> table("model | gap", [["GA", "1.00"], ["RL", ""]], align="lr")
        ['| model | gap |', '|---|---:|', '| GA | 1.00 |', '| RL | |']
    """
    titles = header.split(" | ")
    if len(align) != len(titles):
        raise ValueError(f"align has {len(align)} letters for {len(titles)} columns")

    def line(cells: Iterable[Any]) -> str:
        # an empty cell is one space wide, as hand-written tables have it
        return "|" + "|".join(f" {cell} " if cell != "" else " " for cell in cells) + "|"

    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return [line(titles), rule, *(line(row) for row in rows)]


def score_table(
    header: str,
    rows: Mapping[str, Mapping[str, Any]],
    scores: Sequence[str],
    *,
    cell: Callable[[str, Any], str] | None = None,
    label: Callable[[str], str] = str,
) -> list[str]:
    """A :func:`table` of ``{row: {score: cell}}``: a row per entry, a column per score.

    Args:
        header: The column titles: the rows' names, then one per score.
        rows: The cells of each row, by score.
        scores: The scores of the columns, in table order (right-aligned).
        cell: Writes ``(score, cell)`` (default: :func:`fmt` of the cell).
        label: Writes a row's name in the first column (default: as it is).

    Example:
        >>> score_table("model | gap", {"GA": {"gap": {"mean": 1.0, "ci": 0.5}}}, ["gap"])
        ['| model | gap |', '|---|---:|', '| GA | 1.00 ± 0.50 |']
    """
    write = cell or (lambda _, value: fmt(value))
    return table(
        header,
        ([label(name), *(write(s, cells[s]) for s in scores)] for name, cells in rows.items()),
        align="l" + "r" * len(scores),
    )


# --------------------------------------------------------------------------- methods
@dataclasses.dataclass(frozen=True)
class ObjectiveSettings:
    """What the builders of :data:`OBJECTIVES` read; each reads the fields it needs.

    ``npo_beta`` and ``simnpo_beta`` default to the library's defaults; ``reference`` is
    NPO's frozen reference model, ``task`` the model's task (default: classification).
    """

    num_classes: int = 10
    neggrad_beta: float = 0.9
    npo_beta: float = 0.1
    simnpo_beta: float = 2.5
    reference: nn.Module | None = None
    task: mcu.Task | None = None


#: Method name -> objective builder. SalUn trains RL's objective on the entries of its
#: saliency mask (:meth:`Base.run` adds the mask).
OBJECTIVES: dict[str, Callable[[ObjectiveSettings], mcu.UnlearnLoss]] = {
    "FT": lambda s: mcu.losses.finetune(task=s.task),
    "GA": lambda s: mcu.losses.gradient_ascent(task=s.task),
    "NegGrad+": lambda s: mcu.losses.neggrad_plus(s.neggrad_beta, task=s.task),
    "RL": lambda s: mcu.losses.random_label(s.num_classes, task=s.task),
    "SalUn": lambda s: mcu.losses.random_label(s.num_classes, task=s.task),
    "GradDiff": lambda s: mcu.losses.gradient_difference(task=s.task),
    "NPO": lambda s: mcu.losses.npo(s.npo_beta, reference=s.reference, task=s.task),
    "SimNPO": lambda s: mcu.losses.simnpo(s.simnpo_beta, task=s.task),
}
#: The base methods of the classification benchmarks.
METHODS = ("FT", "GA", "NegGrad+", "RL", "SalUn")


def objective(method: str, **settings: Any) -> mcu.UnlearnLoss:
    """The objective of ``method`` (a key of :data:`OBJECTIVES`), built with ``settings``."""
    return OBJECTIVES[method](ObjectiveSettings(**settings))


@dataclasses.dataclass(frozen=True)
class Base:
    """A base unlearning method's hyperparameters."""

    method: str
    epochs: int
    lr: float
    neggrad_beta: float = 0.9
    salun_sparsity: float = 0.5

    def loss(self) -> mcu.UnlearnLoss:
        return objective(self.method, neggrad_beta=self.neggrad_beta)

    def run(
        self,
        original: nn.Module,
        retain: Any,
        forget: Any,
        *,
        seed: int,
        saliency: dict[str, torch.Tensor] | None = None,
        batch_size: int = 128,
        **options: Any,
    ) -> nn.Module:
        """θ_u: ``mcu.unlearn`` of ``original`` with this method.

        Args:
            original: The model to unlearn from (not modified).
            retain: Retain data.
            forget: Forget data.
            seed: Seeds the data order and the objective's randomness.
            saliency: SalUn's mask when already computed (it depends only on ``original``
                and ``forget``); other methods train every entry and ignore it.
            batch_size: Mini-batch size.
            **options: More keywords of ``mcu.unlearn`` (e.g. ``curriculum``,
                ``optimizer``, or ``lr`` in place of this method's).
        """
        mask = None
        if self.method == "SalUn":
            mask = saliency
            if mask is None:
                mask = mcu.saliency_mask(original, forget, sparsity=self.salun_sparsity)
        return mcu.unlearn(
            original,
            retain,
            forget,
            loss=self.loss(),
            epochs=self.epochs,
            mask=mask,
            batch_size=batch_size,
            seed=seed,
            progress=False,
            **{"lr": self.lr, **options},
        )


# --------------------------------------------------------------------------- models
class DenseHeadCNN(nn.Module):
    """A BatchNorm CNN that can memorise a small training set on a CPU budget.

    Two conv-BN-ReLU-maxpool stages (``width``, ``2 * width`` channels) and a
    dense head (``Linear -> BatchNorm1d -> ReLU -> Linear``) on the flattened
    7x7 maps. ``mcu.zoo.SmallCNN`` pools globally before its head (23k
    parameters at width 16) and reached only 93.9 % training accuracy after 20
    epochs on 4000 Fashion-MNIST images, so it cannot play a memorising original
    at this budget; this network has about 210k parameters at width 16 and
    costs less per image.
    """

    def __init__(self, width: int = 16, hidden: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(2 * width * 49, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]


def model_factory(arch: str, width: int) -> Callable[[], nn.Module]:
    """``"cnn"``: :class:`DenseHeadCNN`; ``"mlp"``: ``mcu.zoo.MLP`` 784-``4*width``²-10."""
    if arch == "cnn":
        return lambda: DenseHeadCNN(width)
    if arch == "mlp":
        return lambda: MLP(784, (16 * width, 8 * width), num_classes=10)
    raise ValueError(f"unknown arch {arch!r}")


# --------------------------------------------------------------------------- data
def labels_of(dataset: Any) -> torch.Tensor:
    """Labels of a TensorDataset or nested Subsets of one."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    return dataset.tensors[1]  # type: ignore[no-any-return]


def random_subset(data: Dataset[Any], size: int, seed: int) -> Subset[Any]:
    """A fixed random subset (sorted indices) of at most ``size`` samples."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    picked = torch.randperm(len(data), generator=generator)[: min(size, len(data))]  # type: ignore[arg-type]
    return Subset(data, sorted(picked.tolist()))


# Forget scenarios: a random fraction of the training data, or a whole class.
FORGET = {"random10": ("ratio", 0.1), "random1": ("ratio", 0.01), "class": ("class", 0)}


def forget_split(train: Any, test: Any, name: str, seed: int) -> tuple[Any, Any, Any]:
    """``(retain, forget, test)`` of scenario ``name``; for a class, test without that class."""
    kind, value = FORGET[name]
    if kind == "ratio":
        retain, forget = mcu.forget_retain_split(train, forget_ratio=value, seed=seed)
        return retain, forget, test
    retain, forget = mcu.forget_retain_split(train, forget_class=int(value))
    keep = torch.nonzero(labels_of(test) != value).flatten().tolist()
    return retain, forget, Subset(test, keep)


def loader(data: Any, batch_size: int = 256) -> DataLoader[Any]:
    return DataLoader(data, batch_size=batch_size, shuffle=False)


# --------------------------------------------------------------------------- training, scoring
def cosine(epochs: int) -> Callable[[Optimizer], LRScheduler]:
    return lambda optimizer: CosineAnnealingLR(optimizer, T_max=epochs)


def score(
    model: nn.Module,
    *,
    retain: Any,
    forget: Any,
    test: Any,
    probe: Any,
    reference: mcu.UnlearningScores | None,
    seed: int,
) -> dict[str, float]:
    """UA, RA, TA, MIA-efficacy (SVC), Avg. Gap and the loss attack's TPR at 1 % FPR.

    The per-example attack thresholds the loss, calibrated on ``probe`` (retain
    members) vs ``test``; its TPR at 1 % FPR on the forget set vs ``test`` says how
    many forget samples still look like members (retraining: near 1 %).
    """
    scores = mcu.unlearning_scores(
        model, retain=retain, forget=forget, test=test, reference=reference, seed=seed
    )
    attack = mcu.threshold_attack(
        model, member=probe, nonmember=test, target=forget, signals=("loss",), fprs=(0.01,)
    )["loss"]
    assert attack.target_tpr_at_fpr is not None
    return {
        "ua": scores.ua,
        "ra": scores.ra,
        "ta": scores.ta,
        "mia": scores.mia,
        "avg_gap": float("nan") if scores.avg_gap is None else scores.avg_gap,
        "tpr1": 100.0 * attack.target_tpr_at_fpr[0.01],
    }
