"""unlearn and fit_curve under torchrun: 2 CPU processes with the gloo backend.

The workers run this file as a script (``python -m torch.distributed.run ...
tests/test_distributed.py --worker DIR``), launched by :mod:`torchrun_launch`.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from torchrun_launch import finish, launch

N_SAMPLES, N_FEATURES, N_CLASSES = 64, 6, 3
GLOBAL_BATCH, EPOCHS, LR, SEED = 16, 2, 0.1, 7


def make_data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_SAMPLES, N_FEATURES, generator=g)
    x[:, 0] = torch.arange(N_SAMPLES, dtype=torch.float32)  # feature 0 = sample index
    return TensorDataset(x, torch.randint(0, N_CLASSES, (N_SAMPLES,), generator=g))


class IndexBlind(nn.Module):
    """A linear model that ignores feature 0 (the sample index the test reads back)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(N_FEATURES - 1, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x[:, 1:])


# --------------------------------------------------------------------------- the workers
def _worker(out: Path) -> None:
    import torch.distributed as dist

    from modeconn_unlearn.curve import CurveModel
    from modeconn_unlearn.losses import finetune, mcu_objective
    from modeconn_unlearn.training import fit_curve, unlearn
    from modeconn_unlearn.training.distributed import all_reduce_sum, rank, world_size

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    try:
        me = rank()
        data = make_data()
        seen: list[int] = []
        inner = finetune()

        def spy(model, batch):
            seen.extend(int(v) for v in batch.inputs[:, 0])
            return inner(model, batch)

        spy.needs = ("retain",)  # type: ignore[attr-defined]
        model = unlearn(
            IndexBlind(),
            data,
            None,
            loss=spy,
            epochs=EPOCHS,
            lr=LR,
            batch_size=GLOBAL_BATCH,
            seed=SEED,
            progress=False,
        )
        summed = all_reduce_sum(torch.tensor([float(me + 1)]))
        retain, forget = torch.utils.data.random_split(
            data, [48, 16], generator=torch.Generator().manual_seed(2)
        )

        def curve() -> CurveModel:
            torch.manual_seed(3)
            start, end = IndexBlind(), IndexBlind()
            with torch.no_grad():
                end.lin.weight.add_(0.5)
            return CurveModel(start, start=start, end=end)

        args = dict(
            loss=mcu_objective(0.2), lr=LR, batch_size=GLOBAL_BATCH, seed=SEED, progress=False
        )
        whole = curve()
        history = fit_curve(whole, retain, forget, epochs=3, **args)
        first = curve()
        fit_curve(first, retain, forget, epochs=2, checkpoint_dir=out / "ck", **args)
        resumed = curve()
        fit_curve(resumed, retain, forget, epochs=3, checkpoint_dir=out / "ck", resume=True, **args)
        fsdp_gap = _fsdp_curve_gap(curve)
        torch.save(
            {
                "fsdp_gap": fsdp_gap,
                "world": world_size(),
                "seen": seen,
                "unlearn": model.state_dict(),
                "sum": summed,
                "curve": whole.state_dict(),
                "resumed": resumed.state_dict(),
                "history": [(r.loss, r.retain_acc, r.forget_acc) for r in history],
            },
            out / f"rank{me}.pt",
        )
    finally:
        dist.destroy_process_group()


def _fsdp_curve_gap(make_curve) -> float:
    """Max |difference| between 3 SGD steps of a ``fully_shard``-ed curve and an unsharded one.

    Every rank uses the same full batch, so the averaged gradient is the full one.
    """
    from torch.distributed.fsdp import fully_shard

    x = torch.randn(16, N_FEATURES, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, N_CLASSES, (16,), generator=torch.Generator().manual_seed(6))
    results = []
    for shard in (True, False):
        curve = make_curve()
        if shard:
            fully_shard(curve)
        optimizer = torch.optim.SGD(curve.parameters(), lr=LR)
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(curve(x, t=0.5), y).backward()
            optimizer.step()
        results.append([getattr(p, "full_tensor", p.detach)().detach() for p in curve.parameters()])
    return max(float((a - b).abs().max()) for a, b in zip(*results, strict=True))


# --------------------------------------------------------------------------- the launcher
@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    launch(__file__, out, 2)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_rank_ends_with_bit_identical_weights(ranks):
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert _same(ranks[0]["unlearn"], ranks[1]["unlearn"])
    assert _same(ranks[0]["curve"], ranks[1]["curve"])
    assert ranks[0]["history"] == ranks[1]["history"]  # epoch metrics are all-reduced
    assert float(ranks[0]["sum"]) == float(ranks[1]["sum"]) == 3.0


def test_each_rank_saw_half_the_data(ranks):
    per_epoch = N_SAMPLES // 2
    for epoch in range(EPOCHS):
        parts = [set(r["seen"][epoch * per_epoch : (epoch + 1) * per_epoch]) for r in ranks]
        assert len(parts[0]) == len(parts[1]) == per_epoch
        assert parts[0].isdisjoint(parts[1])
        assert parts[0] | parts[1] == set(range(N_SAMPLES))


def test_matches_a_single_process_run_with_the_same_global_batches(ranks):
    """SGD by hand over the same global batches: equal up to float summation order."""
    data = make_data()
    x, y = data.tensors
    model = IndexBlind()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    for epoch in range(1, EPOCHS + 1):
        order = torch.randperm(N_SAMPLES, generator=torch.Generator().manual_seed(SEED + epoch))
        for start in range(0, N_SAMPLES, GLOBAL_BATCH):
            rows = order[start : start + GLOBAL_BATCH]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
            optimizer.step()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ranks[0]["unlearn"][key], value, rtol=0, atol=1e-5)


def test_a_user_loop_can_fully_shard_a_curve(ranks):
    """FSDP2 status: a CurveModel under fully_shard trains as the unsharded curve (user loop)."""
    assert ranks[0]["fsdp_gap"] == ranks[1]["fsdp_gap"] == 0.0


def test_resume_after_a_checkpoint_is_bit_identical(ranks):
    for r in ranks:
        assert _same(r["resumed"], r["curve"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", type=Path, required=True)
    _worker(parser.parse_args().worker)
    finish()
