from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_unchanged, make_mlp, model_state
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchrun_launch import finish

import modeconn_unlearn.evaluation as evaluation
from modeconn_unlearn.batchnorm import update_bn
from modeconn_unlearn.curve import CurveModel
from modeconn_unlearn.data import seeded_order
from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.evaluation import (
    Metrics,
    PathReport,
    UnlearningScores,
    collect_outputs,
    evaluate,
    evaluate_path,
    unlearning_scores,
)
from modeconn_unlearn.evaluation.bn import BN_SALT
from modeconn_unlearn.mia import svc_mia
from modeconn_unlearn.tasks import CausalLMTask


# --------------------------------------------------------------------------- helpers
def make_bn_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def fit(model: nn.Module, data: TensorDataset, steps: int = 40) -> nn.Module:
    x, y = data.tensors
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def take(data: TensorDataset, index: slice | torch.Tensor) -> TensorDataset:
    return TensorDataset(*(tensor[index] for tensor in data.tensors))


@pytest.fixture(scope="module")
def splits(digits: tuple[TensorDataset, TensorDataset]) -> dict[str, TensorDataset]:
    """Retain/forget (class 3)/test splits of digits, small enough for fast tests."""
    train, test = digits
    is_forget = train.tensors[1] == 3
    retain = take(train, ~is_forget)
    return {
        "retain": take(retain, slice(0, 500)),
        "forget": take(train, is_forget),
        "test": take(test, slice(0, 200)),
    }


@pytest.fixture(scope="module")
def bn_curve(splits: dict[str, TensorDataset]) -> CurveModel:
    start = fit(make_bn_mlp(0), splits["retain"])
    end = fit(make_bn_mlp(1), splits["forget"], steps=10)
    return CurveModel(make_bn_mlp(2), start=start, end=end, num_bends=3)


# --------------------------------------------------------------------------- evaluate
def test_evaluate_matches_a_hand_computation(splits: dict[str, TensorDataset]) -> None:
    model = make_mlp(0)
    x, y = splits["test"].tensors
    with torch.no_grad():
        logits = model(x)
    result = evaluate(model, splits["test"])
    assert isinstance(result, Metrics)
    assert result.count == len(y)
    assert result.accuracy == pytest.approx(100.0 * (logits.argmax(1) == y).float().mean().item())
    assert result.loss == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    loader = DataLoader(splits["test"], batch_size=7)
    batched = evaluate(model, loader)
    assert batched.accuracy == result.accuracy and batched.count == result.count
    assert batched.loss == pytest.approx(result.loss, rel=1e-6)
    with pytest.raises(AttributeError):
        result.accuracy = 0.0  # type: ignore[misc]


def test_evaluate_runs_in_eval_mode_without_grad_and_restores_modes(
    splits: dict[str, TensorDataset],
) -> None:
    model = make_bn_mlp(0)
    model.train()
    model[1].eval()  # a mixed state must survive
    seen = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen.append((module.training, torch.is_grad_enabled()))

    model[1].register_forward_hook(hook)
    model[0].register_forward_hook(hook)
    before = model_state(model)
    evaluate(model, splits["test"])
    assert seen and all(state == (False, False) for state in seen)
    assert_unchanged(model, before)


def test_evaluate_rejects_bad_data() -> None:
    model = make_mlp(0)
    with pytest.raises(ModeConnError, match="empty"):
        evaluate(model, TensorDataset(torch.zeros(0, 64), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ModeConnError, match="labels"):
        evaluate(model, TensorDataset(torch.zeros(4, 64)))
    with pytest.raises(ModeConnError, match="1-D integer class labels"):
        evaluate(model, TensorDataset(torch.zeros(4, 64), torch.zeros(4, 10)))
    with pytest.raises(ModeConnError, match="logits"):
        evaluate(nn.Flatten(0), TensorDataset(torch.zeros(4, 64), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(TypeError, match="DataLoader"):
        evaluate(model, 3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- unlearning_scores


def test_unlearning_scores_re_estimates_batchnorm_on_a_copy(splits) -> None:
    model = fit(make_bn_mlp(0), splits["retain"])
    with torch.no_grad():
        model[1].running_mean.add_(3.0)  # stale statistics
    stale = copy.deepcopy(model)
    kwargs = {"retain": splits["retain"], "forget": splits["forget"], "test": splits["test"]}
    with_bn = unlearning_scores(model, bn_loader=splits["retain"], **kwargs)
    assert torch.equal(model[1].running_mean, stale[1].running_mean)  # input untouched
    fresh = copy.deepcopy(model)
    update_bn(fresh, DataLoader(splits["retain"], batch_size=256))
    expected = unlearning_scores(fresh, **kwargs)
    assert (with_bn.ra, with_bn.ta, with_bn.ua) == (expected.ra, expected.ta, expected.ua)
    assert unlearning_scores(model, **kwargs).ra < with_bn.ra


def test_unlearning_scores_and_gaps(splits: dict[str, TensorDataset]) -> None:
    model = fit(make_mlp(0), splits["retain"])
    scores = unlearning_scores(
        model, retain=splits["retain"], forget=splits["forget"], test=splits["test"]
    )
    assert scores.ua == pytest.approx(100.0 - evaluate(model, splits["forget"]).accuracy)
    assert scores.ra == pytest.approx(evaluate(model, splits["retain"]).accuracy)
    assert scores.ta == pytest.approx(evaluate(model, splits["test"]).accuracy)
    assert 0.0 <= scores.mia <= 100.0
    assert scores.gaps is None and scores.avg_gap is None

    reference = {"UA": scores.ua + 4.0, "ra": scores.ra - 2.0, "Ta": scores.ta, "MIA": 0.0}
    with_gaps = unlearning_scores(
        model,
        retain=splits["retain"],
        forget=splits["forget"],
        test=splits["test"],
        reference=reference,
    )
    assert with_gaps.gaps == pytest.approx({"ua": 4.0, "ra": 2.0, "ta": 0.0, "mia": scores.mia})
    assert with_gaps.avg_gap == pytest.approx((6.0 + scores.mia) / 4.0)
    assert with_gaps.to_dict()["avg_gap"] == with_gaps.avg_gap
    with pytest.warns(DeprecationWarning, match="to_dict"):
        assert with_gaps.as_dict() == with_gaps.to_dict()

    itself = unlearning_scores(
        model,
        retain=splits["retain"],
        forget=splits["forget"],
        test=splits["test"],
        reference=model,
    )
    assert itself.avg_gap == pytest.approx(0.0)
    assert isinstance(itself, UnlearningScores)
    with pytest.raises(ModeConnError, match="missing the scores"):
        unlearning_scores(
            model,
            retain=splits["retain"],
            forget=splits["forget"],
            test=splits["test"],
            reference={"ua": 1.0},
        )


def test_unlearning_scores_mia_is_svc_efficacy(splits: dict[str, TensorDataset]) -> None:
    model = fit(make_mlp(0), splits["retain"])
    shadow = take(splits["retain"], slice(0, 200))
    scores = unlearning_scores(
        model,
        retain=splits["retain"],
        forget=splits["forget"],
        test=splits["test"],
        mia_shadow=shadow,
    )
    direct = svc_mia(
        model,
        shadow_train=shadow,
        shadow_test=splits["test"],
        target_test=splits["forget"],
        features=("confidence",),
    )
    assert scores.mia == pytest.approx(100.0 * direct["confidence"])


# --------------------------------------------------------------------------- evaluate_path
def test_path_endpoints_match_evaluate_after_bn_reestimation(
    bn_curve: CurveModel, splits: dict[str, TensorDataset]
) -> None:
    bn_loader = DataLoader(splits["retain"], batch_size=64)
    report = evaluate_path(
        bn_curve, splits, ts=[0.0, 0.5, 1.0], bn_loader=bn_loader, progress=False
    )
    np.testing.assert_array_equal(report.t, [0.0, 0.5, 1.0])
    for index, t in ((0, 0.0), (-1, 1.0)):
        model = bn_curve.export(t)
        update_bn(model, bn_loader)
        for name, data in splits.items():
            expected = evaluate(model, data)
            assert report.acc(name)[index] == pytest.approx(expected.accuracy)
            assert report.loss(name)[index] == pytest.approx(expected.loss, rel=1e-6)
    assert report.meta["counts"] == {name: len(data) for name, data in splits.items()}


def test_bn_statistics_never_see_forget_data_by_default(
    bn_curve: CurveModel, splits: dict[str, TensorDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = splits["forget"].tensors
    shifted = {**splits, "forget": TensorDataset(x + 5.0, y)}  # a far-away input distribution
    batch_means: list[float] = []

    def spy(model: nn.Module, loader: object, **kwargs: object) -> None:
        for batch in loader:  # type: ignore[attr-defined]
            batch_means.append(float(batch[0].mean()))
        update_bn(model, loader, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(evaluation.paths, "update_bn", spy)
    default = evaluate_path(bn_curve, shifted, ts=3, progress=False)
    assert batch_means and max(batch_means) < 1.0  # digits lie in [0, 1]; forget is >= 5
    explicit = evaluate_path(bn_curve, shifted, ts=3, bn_loader=shifted["retain"], progress=False)
    on_forget = evaluate_path(bn_curve, shifted, ts=3, bn_loader=shifted["forget"], progress=False)
    for name in shifted:
        np.testing.assert_allclose(default.loss(name), explicit.loss(name))
    assert not np.allclose(default.loss("retain"), on_forget.loss("retain"))
    assert default.meta["bn_data"] == "retain"


def test_bn_models_need_retain_data_or_a_bn_loader(
    bn_curve: CurveModel, splits: dict[str, TensorDataset]
) -> None:
    with pytest.raises(ModeConnError, match="bn_loader"):
        evaluate_path(bn_curve, {"forget": splits["forget"]}, ts=2, progress=False)


def test_no_bn_pass_without_batchnorm(
    splits: dict[str, TensorDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(evaluation.paths, "update_bn", lambda *a, **k: calls.append(a))
    curve = CurveModel(make_mlp(0), end=make_mlp(1), num_bends=2)
    report = evaluate_path(curve, {"forget": splits["forget"]}, ts=3, progress=False)
    assert calls == []
    assert report.meta["bn_data"].startswith("none")


def test_path_length_of_a_straight_line(splits: dict[str, TensorDataset]) -> None:
    start, end = make_mlp(0), make_mlp(1)
    curve = CurveModel(make_mlp(2), start=start, end=end, num_bends=2)
    curve.train()
    report = evaluate_path(curve, {"test": splits["test"]}, ts=5, progress=False)
    distance = math.sqrt(
        sum(
            float(((a.detach() - b.detach()) ** 2).sum())
            for a, b in zip(start.parameters(), end.parameters(), strict=True)
        )
    )
    assert report.path_length == pytest.approx(distance, rel=1e-5)
    np.testing.assert_allclose(report.segment_lengths, np.full(4, distance / 4), rtol=1e-5)
    assert curve.training  # the curve's mode is left alone
    assert report.arc_length[-1] == pytest.approx(report.path_length)


def test_path_is_deterministic_and_measures_mia(
    bn_curve: CurveModel, splits: dict[str, TensorDataset]
) -> None:
    first = evaluate_path(
        bn_curve, splits, ts=4, mia=True, mia_features=("confidence", "entropy"), progress=False
    )
    second = evaluate_path(
        bn_curve, splits, ts=4, mia=True, mia_features=("confidence", "entropy"), progress=False
    )
    assert first.metric_names("forget") == ["acc", "loss", "mia_confidence", "mia_entropy"]
    for name in ("acc", "loss", "mia_confidence"):
        np.testing.assert_array_equal(first.metric("forget", name), second.metric("forget", name))
    values = first.metric("forget", "mia_confidence")
    assert values.shape == (4,) and ((values >= 0) & (values <= 100)).all()
    with pytest.raises(ModeConnError, match="missing"):
        evaluate_path(
            bn_curve,
            {"retain": splits["retain"], "forget": splits["forget"]},
            ts=2,
            mia=True,
            progress=False,
        )


def test_each_point_sees_every_scored_model(
    bn_curve: CurveModel, splits: dict[str, TensorDataset]
) -> None:
    calls: list[tuple[float, bool, dict[str, torch.Tensor]]] = []

    def each_point(t: float, model: nn.Module) -> float:
        calls.append((t, model.training, {k: v.clone() for k, v in model.state_dict().items()}))
        return 1.0  # ignored

    report = evaluate_path(bn_curve, splits, ts=3, each_point=each_point, progress=False)
    assert [t for t, _, _ in calls] == report.t.tolist()
    assert not any(training for _, training, _ in calls)  # eval mode
    # The model handed over is the one scored: its own accuracy on retain is the report's.
    for (t, _, state), accuracy in zip(calls, report.acc("retain"), strict=True):
        model = bn_curve.export(t)
        model.load_state_dict(state)  # BatchNorm statistics as re-estimated
        assert evaluate(model, splits["retain"]).accuracy == pytest.approx(accuracy)


@pytest.mark.parametrize(
    ("ts", "message"),
    [(1, "at least 2"), ([0.0, 0.6, 0.5], "increasing"), ([0.0, 1.5], r"\[0, 1\]"), ([], "empty")],
)
def test_bad_ts(
    bn_curve: CurveModel, splits: dict[str, TensorDataset], ts: object, message: str
) -> None:
    with pytest.raises(ModeConnError, match=message):
        evaluate_path(bn_curve, splits, ts=ts, progress=False)  # type: ignore[arg-type]


def test_evaluate_path_rejects_plain_models_and_empty_splits(
    splits: dict[str, TensorDataset], bn_curve: CurveModel
) -> None:
    with pytest.raises(ModeConnError, match="must be a CurveModel"):
        evaluate_path(make_mlp(0), splits, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ModeConnError, match="non-empty mapping"):
        evaluate_path(bn_curve, {}, progress=False)


# --------------------------------------------------------------------------- PathReport
@pytest.fixture
def report() -> PathReport:
    return PathReport(
        [0.0, 0.5, 1.0],
        {
            "retain": {"acc": [99.0, 97.0, 98.0], "loss": [0.1, 0.3, 0.2]},
            "forget": {"acc": [100.0, 40.0, 10.0], "loss": [0.01, 1.5, float("nan")]},
        },
        segment_lengths=[1.0, 3.0],
        meta={"counts": {"retain": 10, "forget": 5}},
    )


def test_report_accessors_and_summary(report: PathReport) -> None:
    np.testing.assert_array_equal(report.acc("forget"), [100.0, 40.0, 10.0])
    np.testing.assert_array_equal(report.metric("retain", "loss"), [0.1, 0.3, 0.2])
    assert report.splits == ["retain", "forget"]
    assert report.path_length == 4.0
    summary = report.summary("forget", "acc")
    assert summary["min"] == 10.0 and summary["max"] == 100.0 and summary["mean"] == 50.0
    assert summary["integral"] == pytest.approx((100 + 40) / 2 * 1.0 + (40 + 10) / 2 * 3.0)
    assert summary["length_weighted_mean"] == pytest.approx(summary["integral"] / 4.0)
    assert summary["t_min"] == 1.0 and summary["t_max"] == 0.0
    with pytest.raises(ModeConnError, match="available"):
        report.acc("test")
    with pytest.raises(ModeConnError, match="available"):
        report.metric("retain", "mia_confidence")
    with pytest.raises(ValueError, match="read-only"):
        report.acc("retain")[0] = 0.0


def test_report_round_trips_through_json(report: PathReport, tmp_path: object) -> None:
    path = tmp_path / "report.json"  # type: ignore[operator]
    report.save(path)
    data = json.loads(path.read_text())  # strict JSON: NaN is stored as null
    assert data["metrics"]["forget"]["loss"][2] is None
    loaded = PathReport.load(path)
    np.testing.assert_array_equal(loaded.t, report.t)
    np.testing.assert_array_equal(loaded.loss("forget"), report.loss("forget"))
    assert loaded.meta == report.meta
    assert loaded.path_length == report.path_length
    rebuilt = PathReport.from_dict(report.to_dict())
    np.testing.assert_array_equal(rebuilt.acc("retain"), report.acc("retain"))
    with pytest.raises(ModeConnError, match="No PathReport"):
        PathReport.load(tmp_path / "missing.json")  # type: ignore[operator]


def test_report_as_csv_markdown_and_text(report: PathReport, tmp_path: object) -> None:
    path = tmp_path / "report.csv"  # type: ignore[operator]
    text = report.to_csv(path)
    assert path.read_text() == text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 3
    assert float(rows[1]["forget/acc"]) == 40.0 and float(rows[2]["t"]) == 1.0
    markdown = report.to_markdown()
    lines = markdown.splitlines()
    assert lines[0].startswith("| t | retain/acc | retain/loss | forget/acc")
    assert lines[1].startswith("|---:")
    assert "| 0.500 | 97.00 | 0.3000 | 40.00 | 1.5000 |" in markdown
    assert "Path length: 4" in markdown
    printed = str(report)
    assert "forget/acc" in printed and "nan" in printed and len(printed.splitlines()) == 5
    assert "points=3" in repr(report)


def test_report_rejects_mismatched_lengths() -> None:
    with pytest.raises(ModeConnError, match="segment_lengths"):
        PathReport([0.0, 1.0], {"a": {"acc": [1.0, 2.0]}}, segment_lengths=[1.0, 2.0])
    with pytest.raises(ModeConnError, match="shape"):
        PathReport([0.0, 1.0], {"a": {"acc": [1.0]}}, segment_lengths=[1.0])


# --------------------------------------------------------------------------- tasks and outputs
class TinyLM(nn.Module):
    """Token ids (N, L) -> logits (N, L, V); keyword input like a Hugging Face model."""

    def __init__(self, seed: int, vocab: int = 7) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(input_ids)))


def lm_samples(n: int, length: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Dict samples with the first two tokens as an unscored prompt."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 7, (n, length), generator=g)
    labels = ids.clone()
    labels[:, :2] = -100
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


def hand_lm_metrics(
    model: nn.Module, samples: list[dict[str, torch.Tensor]]
) -> tuple[float, float]:
    """Mean per-sample answer NLL and mean token accuracy (in %), computed directly."""
    losses, accuracies = [], []
    with torch.no_grad():
        for sample in samples:
            logits = model(sample["input_ids"][None])[0, :-1]
            labels = sample["labels"][1:]
            keep = labels != -100
            nll = nn.functional.cross_entropy(logits[keep], labels[keep], reduction="mean")
            losses.append(float(nll))
            accuracies.append(float((logits[keep].argmax(-1) == labels[keep]).float().mean()))
    return 100.0 * sum(accuracies) / len(samples), sum(losses) / len(samples)


def test_evaluate_scores_a_language_model_through_its_task() -> None:
    model, samples = TinyLM(0), lm_samples(12, 6, seed=1)
    metrics = evaluate(model, DataLoader(samples, batch_size=5), task=CausalLMTask())
    accuracy, loss = hand_lm_metrics(model, samples)
    assert metrics.count == 12
    assert metrics.accuracy == pytest.approx(accuracy, abs=1e-9)
    assert metrics.loss == pytest.approx(loss, rel=1e-6)
    with pytest.raises(ModeConnError, match="CausalLMTask"):
        evaluate(
            make_mlp(0),
            TensorDataset(torch.zeros(4, 64), torch.zeros(4, dtype=torch.long)),
            task=CausalLMTask(),
        )


def test_outputs_are_per_sample_and_pad_signals_of_different_lengths() -> None:
    model = TinyLM(0)
    short, long = lm_samples(3, 5, seed=2), lm_samples(2, 8, seed=3)
    loader = DataLoader(short + long, batch_sampler=[[0, 1, 2], [3, 4]])  # two lengths
    outputs = collect_outputs(model, loader, task=CausalLMTask(), signals=True)
    assert outputs.loss.shape == outputs.correct.shape == (5,)
    assert outputs.signals["token_logprobs"].shape == (5, 7)  # right-padded to L - 1 = 7
    assert not outputs.signals["token_mask"][:3, 4:].any()
    for i, sample in enumerate(short + long):
        single = collect_outputs(model, [sample], task=CausalLMTask())
        assert outputs.loss[i].item() == pytest.approx(single.loss.item(), rel=1e-6)


def test_classification_outputs_match_the_per_sample_cross_entropy(
    splits: dict[str, TensorDataset],
) -> None:
    model = make_mlp(0)
    outputs = collect_outputs(model, DataLoader(splits["test"], batch_size=64), signals=True)
    x, y = splits["test"].tensors
    with torch.no_grad():
        logits = model(x)
    expected = nn.functional.cross_entropy(logits, y, reduction="none").double()
    torch.testing.assert_close(outputs.loss, expected)
    torch.testing.assert_close(outputs.correct, (logits.argmax(1) == y).double())
    torch.testing.assert_close(outputs.signals["logits"], logits)
    metrics = outputs.metrics()
    assert metrics.accuracy == 100.0 * int((logits.argmax(1) == y).sum()) / len(y)


def test_evaluate_path_with_a_language_model_task() -> None:
    samples = lm_samples(10, 6, seed=4)
    curve = CurveModel(TinyLM(0), end=TinyLM(1), num_bends=3)
    report = evaluate_path(curve, {"forget": samples}, ts=3, task=CausalLMTask(), progress=False)
    for index, t in enumerate(report.t):
        accuracy, loss = hand_lm_metrics(curve.export(float(t)), samples)
        assert report.acc("forget")[index] == pytest.approx(accuracy, abs=1e-9)
        assert report.loss("forget")[index] == pytest.approx(loss, rel=1e-6)
    assert report.meta["task"] == "CausalLMTask(reduction='mean')"


def test_unlearning_scores_of_a_language_model_use_the_loss_feature() -> None:
    retain, forget, test = lm_samples(20, 6, 5), lm_samples(10, 6, 6), lm_samples(10, 6, 7)
    model = TinyLM(0)
    with pytest.raises(ModeConnError, match="'loss'"):
        unlearning_scores(model, retain=retain, forget=forget, test=test, task=CausalLMTask())
    scores = unlearning_scores(
        model, retain=retain, forget=forget, test=test, task=CausalLMTask(), mia_feature="loss"
    )
    forget_accuracy, _ = hand_lm_metrics(model, forget)
    assert scores.ua == pytest.approx(100.0 - forget_accuracy, abs=1e-9)
    assert 0.0 <= scores.mia <= 100.0


def test_bn_samples_re_estimates_on_a_seeded_retain_subset(
    bn_curve: CurveModel, splits: dict[str, TensorDataset]
) -> None:
    report = evaluate_path(bn_curve, splits, ts=2, bn_samples=64, seed=3, progress=False)
    assert report.meta["bn_data"] == "retain (64 samples)"
    chosen = sorted(seeded_order(len(splits["retain"]), 3, salt=BN_SALT)[:64])
    subset = DataLoader(Subset(splits["retain"], chosen), batch_size=256)
    for index, t in enumerate(report.t):
        model = bn_curve.export(float(t))
        update_bn(model, subset)
        assert report.loss("test")[index] == pytest.approx(
            evaluate(model, splits["test"]).loss, rel=1e-6
        )
    full = evaluate_path(bn_curve, splits, ts=2, progress=False)
    assert not np.allclose(full.loss("test"), report.loss("test"))
    everything = evaluate_path(bn_curve, splits, ts=2, bn_samples=10_000, progress=False)
    np.testing.assert_allclose(everything.loss("test"), full.loss("test"))
    with pytest.raises(ModeConnError, match="bn_samples"):
        evaluate_path(bn_curve, splits, ts=2, bn_samples=0, progress=False)


def test_report_files_are_written_atomically(report: PathReport, tmp_path: object) -> None:
    target = tmp_path / "deep" / "report.json"  # type: ignore[operator]
    report.save(target)
    assert PathReport.load(target).to_dict() == report.to_dict()
    leftovers = [p.name for p in target.parent.iterdir() if p.name != "report.json"]
    assert leftovers == []


# --------------------------------------------------------------------------- torchrun
def distributed_case() -> tuple[CurveModel, dict[str, TensorDataset]]:
    """A BatchNorm curve and three splits, the same in every process."""
    g = torch.Generator().manual_seed(11)

    def split(n: int) -> TensorDataset:
        return TensorDataset(
            torch.rand(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)
        )

    splits = {"retain": split(45), "forget": split(21), "test": split(30)}
    return CurveModel(make_bn_mlp(0), end=make_bn_mlp(1), num_bends=3), splits


def distributed_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        curve, splits = distributed_case()
        loaders = {name: DataLoader(data, batch_size=8) for name, data in splits.items()}
        report = evaluate_path(curve, loaders, ts=3, mia=True, progress=False)
        report.save(Path(out) / f"rank{rank}.json")
    finally:
        dist.destroy_process_group()
    finish()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_evaluate_path_under_torchrun_shards_and_sums(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(
        distributed_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True
    )
    ranks = [PathReport.load(tmp_path / f"rank{r}.json") for r in range(2)]
    assert ranks[0].to_dict() == ranks[1].to_dict()  # every rank returns the same report
    curve, splits = distributed_case()
    loaders = {name: DataLoader(data, batch_size=8) for name, data in splits.items()}
    single = evaluate_path(curve, loaders, ts=3, mia=True, progress=False)
    assert (
        ranks[0].meta["counts"] == single.meta["counts"] == {"retain": 45, "forget": 21, "test": 30}
    )
    for split in splits:
        np.testing.assert_array_equal(ranks[0].acc(split), single.acc(split))
        np.testing.assert_allclose(ranks[0].loss(split), single.loss(split), rtol=1e-6)
    # The attack sees the same per-sample outputs, gathered back into data order.
    np.testing.assert_allclose(
        ranks[0].metric("forget", "mia_confidence"), single.metric("forget", "mia_confidence")
    )
