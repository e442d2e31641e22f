"""shard_curve, 2 CPU processes with gloo: a LoRA curve and a full-parameter curve.

The workers run this file as a script (launched by :mod:`torchrun_launch`). The
``lora`` worker shards a curve over two adapters of a tiny Llama (the frozen base
under FSDP2), runs ``fit_curve``, ``evaluate_path`` and ``export`` on it, and saves
what the tests compare with a single-process run of the same calls. The ``full``
worker shards the bends of a full-parameter curve (a tied-embedding model with
blocks) and does the same with ``fit_curve``, ``export``, masks and a resume, and
compares a step with and without ``reshard_after_forward``. The ``trainer`` worker trains
the sharded LoRA curve with a ``transformers.Trainer`` (which wraps it in DDP), as
docs/scale_out.md shows.
"""

from __future__ import annotations

import argparse
import copy
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from torchrun_launch import finish, launch

from modeconn_unlearn.curve import CurveModel
from modeconn_unlearn.data import PadCollator, UnlearnDataset
from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.evaluation import evaluate_path
from modeconn_unlearn.losses import finetune
from modeconn_unlearn.recipe import RecipeConfig, Targets, mcu_unlearn
from modeconn_unlearn.selection import search_path
from modeconn_unlearn.tasks import CausalLMTask
from modeconn_unlearn.training import fit_curve, shard_curve
from modeconn_unlearn.training.fsdp import checkpoint_file, is_sharded

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

VOCAB, LENGTH, LAYERS = 32, 8, 2
TASK = CausalLMTask()
#: One global batch of the whole retain set per step: the library's single-process loader
#: orders samples differently from the DistributedSampler, full batches do not depend on it.
FIT = dict(epochs=4, lr=1e-2, optimizer="adam", batch_size=16, seed=3, progress=False)
TS = [0.0, 0.5, 1.0]


def make_curve() -> CurveModel:
    """A curve between two LoRA adapters (q and v) on one tiny Llama; the same on every rank."""
    start, end = make_lora_pair()
    return CurveModel(start, start=start, end=end)


def make_lora_pair() -> tuple[nn.Module, nn.Module]:
    """Two LoRA adapters (q and v) on one tiny Llama; the same on every rank."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    start = peft.get_peft_model(transformers.LlamaForCausalLM(config), lora)
    end = copy.deepcopy(start)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for model in (start, end):
            for p in model.parameters():
                if p.requires_grad:
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return start, end


def make_data() -> tuple[TensorDataset, TensorDataset]:
    tokens = torch.randint(0, VOCAB, (21, LENGTH), generator=torch.Generator().manual_seed(2))
    return TensorDataset(tokens[:16], tokens[:16]), TensorDataset(tokens[16:], tokens[16:])


def run_calls(curve: CurveModel) -> dict[str, object]:
    """fit_curve, evaluate_path and export(0.5): what both runs save.

    The objective is a per-sample mean over the retain set, so the ranks' averaged
    gradient is the one of the global batch (5 forget samples: an uneven evaluation shard).
    """
    retain, forget = make_data()
    history = fit_curve(curve, retain, None, loss=finetune(task=TASK), **FIT)
    report = evaluate_path(
        curve, {"retain": retain, "forget": forget}, ts=TS, task=TASK, progress=False
    )
    return {
        "bends": {k: v.detach().clone() for k, v in curve.state_dict().items()},
        "loss": [r.loss for r in history],
        "path_loss": {s: report.loss(s).tolist() for s in ("retain", "forget")},
        "export": curve.export(0.5).state_dict(),
    }


# --------------------------------------------------------------------------- the workers
def _worker(out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    try:
        refused = {}
        for name, kwargs in {
            "2-D mesh": {"mesh": init_device_mesh("cpu", (1, 2))},
            "no blocks": {"blocks": lambda model: []},
        }.items():
            try:
                shard_curve(make_curve(), **kwargs)
            except ModeConnError as error:
                refused[name] = str(error)
        curve = shard_curve(make_curve(), init_device_mesh("cpu", (2,)))
        try:
            shard_curve(curve)
        except ModeConnError as error:
            refused["twice"] = str(error)
        sharded_base = sum(
            p.to_local().numel() for p in curve.template.parameters() if not p.requires_grad
        )
        result = run_calls(curve)
        result.update(refused=refused, sharded_base=sharded_base, ddp_gap=_ddp_on_top_gap())
        torch.save(result, out / f"rank{dist.get_rank()}.pt")
    finally:
        dist.destroy_process_group()


def _ddp_on_top_gap() -> float:
    """Max |difference| of the bends' gradients with and without a DDP wrapper on top.

    Trainer and accelerate wrap a model in DDP in multi-GPU mode; on a sharded curve it
    averages gradients that are already averaged (equal on every rank).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel

    first = 4 * dist.get_rank()
    tokens = make_data()[0].tensors[0][first : first + 4]
    grads = []
    for wrap in (False, True):
        curve = shard_curve(make_curve(), init_device_mesh("cpu", (2,))).train()
        model = DistributedDataParallel(curve, broadcast_buffers=False) if wrap else curve
        model(input_ids=tokens, labels=tokens, t=0.3).loss.backward()
        grads.append([p.grad for p in curve.parameters()])
    return max(float((a - b).abs().max()) for a, b in zip(*grads, strict=True))


def launched(out: Path, *flags: str) -> list[dict]:
    """Run this file's worker (chosen by ``flags``) on 2 processes; each rank's saved result."""
    launch(__file__, out, 2, *flags)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return launched(tmp_path_factory.mktemp("fsdp"))


@pytest.fixture(scope="module")
def single():
    return run_calls(make_curve())


# --------------------------------------------------------------------------- the tests
def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # the 2-process launch takes about 15 s
def test_every_rank_ends_identical(ranks):
    assert _same(ranks[0]["bends"], ranks[1]["bends"])
    assert _same(ranks[0]["export"], ranks[1]["export"])
    assert ranks[0]["loss"] == ranks[1]["loss"]
    assert ranks[0]["path_loss"] == ranks[1]["path_loss"]


@pytest.mark.slow  # the 2-process launch takes about 15 s
def test_each_rank_holds_half_the_frozen_base(ranks):
    base = sum(p.numel() for p in make_curve().template.parameters() if not p.requires_grad)
    assert ranks[0]["sharded_base"] + ranks[1]["sharded_base"] == base
    assert ranks[0]["sharded_base"] <= base // 2 + LAYERS * 16


@pytest.mark.slow  # the 2-process launch takes about 15 s
def test_fit_evaluate_and_export_match_a_single_process(ranks, single):
    for key, value in single["bends"].items():
        torch.testing.assert_close(ranks[0]["bends"][key], value, rtol=0, atol=1e-5)
    assert ranks[0]["loss"] == pytest.approx(single["loss"], rel=1e-5)
    for split, values in single["path_loss"].items():
        assert ranks[0]["path_loss"][split] == pytest.approx(values, rel=1e-5)
    assert ranks[0]["export"].keys() == single["export"].keys()
    for key, value in single["export"].items():
        torch.testing.assert_close(ranks[0]["export"][key], value, rtol=0, atol=1e-5)


@pytest.mark.slow  # the 2-process launch takes about 15 s
def test_a_ddp_wrapper_on_top_changes_no_gradient(ranks):
    assert ranks[0]["ddp_gap"] == ranks[1]["ddp_gap"] == 0.0


@pytest.mark.slow  # the 2-process launch takes about 15 s
def test_unsupported_layouts_are_refused_with_a_reason(ranks):
    refused = ranks[0]["refused"]
    assert "1-D device mesh" in refused["2-D mesh"]
    assert "blocks=" in refused["no blocks"]
    assert "already" in refused["twice"]


def test_sharding_needs_a_process_group_and_a_curve():
    with pytest.raises(ModeConnError, match="process group"):
        shard_curve(make_curve())
    with pytest.raises(TypeError, match="CurveModel"):
        shard_curve(nn.Linear(2, 2))  # type: ignore[arg-type]


def test_reshard_after_forward_must_be_a_bool():
    with pytest.raises(ModeConnError, match="reshard_after_forward must be True or False"):
        shard_curve(make_curve(), reshard_after_forward=1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- full-parameter curves
class TiedBlocks(nn.Module):
    """Tokens -> a tied embedding, two blocks in a ModuleList, a norm, the tied head.

    The embedding has an odd number of entries, so its shards are padded.
    """

    def __init__(self, vocab: int = 21, dim: int = 15) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) for _ in range(FULL_BLOCKS)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(tokens)
        for block in self.blocks:
            hidden = hidden + block(hidden)
        return self.head(self.norm(hidden)).mean(1)


FULL_BLOCKS = 2
#: Each run takes the whole retain set as one global batch (8 samples per rank).
FULL_FIT = dict(optimizer="adam", lr=2e-2, batch_size=16, seed=4, progress=False)
FULL_TS = [0.0, 0.25, 0.6, 1.0]
FULL_MASKS = {
    "per-tensor": lambda model: {"blocks.1.0.weight": True, "norm.bias": True},
    "element-wise": lambda model: {
        name: torch.rand(p.shape, generator=torch.Generator().manual_seed(8)) < 0.3
        for name, p in model.named_parameters()
    },
}


#: The compared runs: a mask (or none) and CurveModel options.
FULL_RUNS: dict[str, tuple[str | None, dict[str, object]]] = {
    "plain": (None, {}),
    "per-tensor": ("per-tensor", {}),
    "element-wise": ("element-wise", {}),
    "free end": (None, {"fix_end": False}),
}


def make_full_curve(mask: str | None = None, **kwargs: object) -> CurveModel:
    """A full-parameter curve (every weight curved) between two perturbed copies."""
    torch.manual_seed(10)
    start = TiedBlocks()
    end = copy.deepcopy(start)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in end.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    spec = None if mask is None else FULL_MASKS[mask](start)
    return CurveModel(start, start=start, end=end, mask=spec, **kwargs)


def make_full_data() -> tuple[TensorDataset, TensorDataset]:
    gen = torch.Generator().manual_seed(12)
    tokens = torch.randint(0, 21, (22, 5), generator=gen)
    labels = torch.randint(0, 21, (22,), generator=gen)
    return TensorDataset(tokens[:16], labels[:16]), TensorDataset(tokens[16:], labels[16:])


def local_bytes(curve: CurveModel, optimizer_state: dict) -> int:
    """Bytes this process holds of the bends, their gradients and the optimizer's state."""
    tensors = [*curve.groups.parameters(), *curve.groups.buffers()]
    tensors += [p.grad for p in curve.groups.parameters() if p.grad is not None]
    tensors += [v for state in optimizer_state["state"].values() for v in state.values()]
    return sum(t.numel() * t.element_size() for t in tensors if t.dim() > 0)


def run_full_calls(
    curve: CurveModel, checkpoints: Path, epochs: int = 4, **kwargs: object
) -> dict[str, object]:
    """fit_curve, then export at a few t: what is compared.

    One global batch of the whole retain set per step (the single-process loader orders
    samples differently from the DistributedSampler; full batches do not depend on it).
    The optimizer's state is read from the run's checkpoint (one file per rank when sharded).
    """
    retain, _ = make_full_data()
    fit = {**FULL_FIT, **kwargs}
    history = fit_curve(
        curve,
        retain,
        None,
        loss=finetune(),
        epochs=epochs,
        checkpoint_dir=checkpoints,
        **fit,
    )
    state = torch.load(checkpoints / checkpoint_file(curve, "fit_curve"), weights_only=True)
    return {
        "loss": [r.loss for r in history],
        "exports": {t: curve.export(t).state_dict() for t in FULL_TS},
        "bends": {k: v.detach().clone() for k, v in curve.state_dict().items()},
        "bytes": local_bytes(curve, state["optimizer"]),
        "class": type(curve.export(0.5)).__name__,
    }


def one_step(curve: CurveModel) -> dict[str, object]:
    """One forward and backward pass of this rank's half of the retain set, probed.

    Before the backward pass, ``kept`` names the layers whose gathered weights are
    still alive (a weak reference to the flat tensor they are views of); then the
    bends' gradients. gloo's worker thread lets go of an all-gather's output a moment
    after the call returns, so ``kept`` is read again for up to 2 s until it is empty.
    """
    import time
    import weakref

    import torch.distributed as dist

    retain, _ = make_full_data()
    first = 8 * dist.get_rank()
    tokens, labels = (t[first : first + 8] for t in retain.tensors)
    gathered: list[tuple[str, weakref.ref[torch.Tensor]]] = []
    for name, module in curve.template.named_modules():
        if isinstance(module, (nn.Linear, nn.LayerNorm)):
            module.register_forward_pre_hook(
                lambda m, _, name=name: gathered.append((name, weakref.ref(m.weight._base)))
            )
    loss = nn.functional.cross_entropy(curve.train()(tokens, t=0.3), labels)
    deadline = time.monotonic() + 2.0
    while (kept := [name for name, ref in gathered if ref() is not None]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
    loss.backward()
    return {"kept": kept, "grads": [p.grad.clone() for p in curve.parameters()]}


def _full_worker(out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    try:
        mesh = init_device_mesh("cpu", (2,))
        me = dist.get_rank()
        result: dict[str, object] = {}
        for run, (mask, kwargs) in FULL_RUNS.items():
            curve = shard_curve(make_full_curve(mask, **kwargs), mesh)
            result[run] = run_full_calls(curve, out / f"{run}{me}")
            result[f"{run}, one step"] = {
                reshard: one_step(
                    shard_curve(
                        make_full_curve(mask, **kwargs), mesh, reshard_after_forward=reshard
                    )
                )
                for reshard in (True, False)
            }
        kept = shard_curve(make_full_curve(), mesh, reshard_after_forward=False)
        result["kept"] = run_full_calls(kept, out / f"kept{me}")
        # Stopped after 2 of 4 epochs (as if killed), then resumed from the rank's own file.
        checkpoints = out / f"resumed{me}"
        run_full_calls(shard_curve(make_full_curve(), mesh), checkpoints, epochs=2)
        result["resumed"] = run_full_calls(
            shard_curve(make_full_curve(), mesh), checkpoints, resume=True
        )
        result["files"] = sorted(p.name for p in checkpoints.iterdir())
        refused = {}
        try:
            curve = shard_curve(make_full_curve(), mesh)
            run_full_calls(curve, out / f"compiled{me}", epochs=1, compile="eager")
        except ModeConnError as error:
            refused["compile"] = str(error)
        try:
            shard_curve(make_full_curve(), mesh, blocks=lambda model: [nn.Linear(2, 2)])
        except ModeConnError as error:
            refused["foreign block"] = str(error)
        curve = shard_curve(make_full_curve(), mesh).train()
        loss = curve(make_full_data()[0].tensors[0][:4], t=0.5).sum()
        with torch.no_grad():  # a step between forward and backward
            for param in curve.parameters():
                param.add_(1.0)
        try:
            loss.backward()
        except ModeConnError as error:
            refused["changed before backward"] = str(error)
        result["refused"] = refused
        torch.save(result, out / f"rank{dist.get_rank()}.pt")
    finally:
        dist.destroy_process_group()


def _killed_worker(out: Path, resume: bool) -> None:
    """The plain full-parameter run of ``_full_worker``, SIGKILLed on every rank after epoch 2
    (both checkpoints written), or resumed from those checkpoints to the end."""
    import os
    import signal

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    try:
        mesh = init_device_mesh("cpu", (2,))
        checkpoints = out / f"killed{dist.get_rank()}"

        def kill_after_two(record, module):  # type: ignore[no-untyped-def]
            if record.epoch == 2:
                dist.barrier()  # both ranks have written their epoch-2 checkpoint
                os.kill(os.getpid(), signal.SIGKILL)

        curve = shard_curve(make_full_curve(), mesh)
        if not resume:
            run_full_calls(curve, checkpoints, callbacks=[kill_after_two])
            return
        ran: list[int] = []
        result = run_full_calls(
            curve, checkpoints, resume=True, callbacks=[lambda r, _: ran.append(r.epoch)]
        )
        torch.save({**result, "epochs run": ran}, out / f"rank{dist.get_rank()}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def full_ranks(tmp_path_factory):
    return launched(tmp_path_factory.mktemp("fsdp_full"), "--full")


@pytest.fixture(scope="module")
def full_single(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_full_single")
    return {
        run: run_full_calls(make_full_curve(mask, **kwargs), out / run)
        for run, (mask, kwargs) in FULL_RUNS.items()
    }


def _assert_close_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in b.items():
        torch.testing.assert_close(a[key], value, rtol=0, atol=1e-5)


@pytest.mark.slow  # the 2-process launch and the single run take about 15 s
@pytest.mark.parametrize("run", FULL_RUNS)
def test_sharded_full_curve_fits_and_exports_as_one_process(full_ranks, full_single, run):
    single = full_single[run]
    for rank in full_ranks:
        assert rank[run]["loss"] == pytest.approx(single["loss"], rel=1e-5)
        assert rank[run]["class"] == "TiedBlocks"
        for t in FULL_TS:
            _assert_close_states(rank[run]["exports"][t], single["exports"][t])
    assert full_ranks[0][run]["loss"] == full_ranks[1][run]["loss"]
    for t in FULL_TS:
        exports = [r[run]["exports"][t] for r in full_ranks]
        assert all(torch.equal(exports[0][k], exports[1][k]) for k in exports[0])


@pytest.mark.slow  # the 2-process launch and the single run take about 15 s
def test_the_export_keeps_the_tie_and_the_loss_moved(full_ranks, full_single):
    export = full_ranks[0]["plain"]["exports"][0.6]
    assert "head.weight" not in export or torch.equal(export["head.weight"], export["embed.weight"])
    assert full_single["plain"]["loss"][-1] < full_single["plain"]["loss"][0]


@pytest.mark.slow  # the 2-process launch and the single run take about 15 s
def test_each_rank_holds_half_the_bends_gradients_and_optimizer_state(full_ranks, full_single):
    whole = full_single["plain"]["bytes"]
    for rank in full_ranks:
        assert 0.45 * whole <= rank["plain"]["bytes"] <= 0.55 * whole


@pytest.mark.slow  # two 2-process launches, about 40 s
def test_a_sharded_run_sigkilled_under_torchrun_resumes_to_the_uninterrupted_one(
    full_ranks, tmp_path
):
    launch(__file__, tmp_path, 2, "--killed", killed=True)
    for rank in range(2):  # killed after its epoch-2 checkpoint, before any result
        assert not (tmp_path / f"rank{rank}.pt").exists()
        assert [p.name for p in (tmp_path / f"killed{rank}").iterdir()] == [
            f"fit_curve.rank{rank}-of-2.pt"
        ]
    for rank, resumed in enumerate(launched(tmp_path, "--killed", "--resume")):
        plain = full_ranks[rank]["plain"]
        assert resumed["epochs run"] == [3, 4]  # continued from the checkpoint, not from 0
        assert resumed["loss"] == plain["loss"]
        for key, value in plain["bends"].items():
            assert torch.equal(resumed["bends"][key], value)
        for t in FULL_TS:
            exported = resumed["exports"][t]
            assert all(torch.equal(exported[k], v) for k, v in plain["exports"][t].items())


@pytest.mark.slow  # the 2-process launch and the single run take about 15 s
def test_a_resumed_sharded_run_matches_the_uninterrupted_one(full_ranks):
    for rank in full_ranks:
        assert rank["resumed"]["loss"] == rank["plain"]["loss"]
        for key, value in rank["plain"]["bends"].items():
            assert torch.equal(rank["resumed"]["bends"][key], value)
        for t in FULL_TS:
            exports = (rank["resumed"]["exports"][t], rank["plain"]["exports"][t])
            assert all(torch.equal(exports[0][k], exports[1][k]) for k in exports[0])
    assert full_ranks[0]["files"] == ["fit_curve.rank0-of-2.pt"]
    assert full_ranks[1]["files"] == ["fit_curve.rank1-of-2.pt"]


@pytest.mark.slow  # the 2-process launch and the single run take about 15 s
def test_full_curve_refusals_say_what_to_do(full_ranks):
    refused = full_ranks[0]["refused"]
    assert "without compile" in refused["compile"]
    assert "not part of the curve's model" in refused["foreign block"]
    assert "reshard_after_forward=False" in refused["changed before backward"]


@pytest.mark.slow  # the 2-process launch and the single run take about 15 s
@pytest.mark.parametrize("run", FULL_RUNS)
def test_resharding_frees_the_gathered_weights_and_changes_no_gradient(full_ranks, run):
    for rank in full_ranks:
        resharded, kept = rank[f"{run}, one step"][True], rank[f"{run}, one step"][False]
        # Autograd holds no gathered weight once the forward pass is over...
        assert resharded["kept"] == []
        # ... where without resharding it holds those of every layer it needs for backward.
        assert "norm" in kept["kept"] and "head" in kept["kept"]
        if run != "per-tensor":  # there the blocks' linear weights are constants of no use
            assert {"blocks.0.0", "blocks.1.0"} <= set(kept["kept"])
        assert len(resharded["grads"]) == len(kept["grads"]) > 0
        for a, b in zip(resharded["grads"], kept["grads"], strict=True):
            assert torch.equal(a, b)  # the same gather again: bit-identical values


@pytest.mark.slow  # the 2-process launch and the single run take about 15 s
def test_a_run_that_keeps_the_gathered_weights_trains_the_same(full_ranks):
    for rank in full_ranks:
        assert rank["kept"]["loss"] == rank["plain"]["loss"]
        for key, value in rank["plain"]["bends"].items():
            assert torch.equal(rank["kept"]["bends"][key], value)


# ------------------------------------------------------------------- the path on a sharded curve
class BNBlocks(nn.Module):
    """Features -> a stem, two blocks with BatchNorm in a ModuleList, a head (3 classes).

    ``norm=nn.LayerNorm`` for training under torchrun: BatchNorm in training mode
    normalises each rank's part of the batch by its own statistics (no SyncBatchNorm),
    so it would not compute what one process computes on the whole batch.
    """

    def __init__(self, dim: int = 12, norm: type[nn.Module] = nn.BatchNorm1d) -> None:
        super().__init__()
        self.stem = nn.Linear(6, dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), norm(dim), nn.ReLU()) for _ in range(2)
        )
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.stem(x)
        for block in self.blocks:
            hidden = hidden + block(hidden)
        return self.head(hidden)


def bent(curve: CurveModel, seed: int) -> CurveModel:
    """``curve`` with its control point moved off the straight line (seeded, every rank alike)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in curve.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    return curve


def make_bn_curve() -> CurveModel:
    """A full-parameter curve over a BatchNorm model whose statistics the path re-estimates."""
    torch.manual_seed(20)
    start = BNBlocks()
    end = copy.deepcopy(start)
    gen = torch.Generator().manual_seed(21)
    with torch.no_grad():
        for p in end.parameters():
            p.add_(0.4 * torch.randn(p.shape, generator=gen))
        for model in (start, end):  # statistics that re-estimation must replace
            for m in model.modules():
                if isinstance(m, nn.BatchNorm1d):
                    m.running_mean.normal_(generator=gen)
    return bent(CurveModel(start, start=start, end=end), seed=22)


def make_bn_data() -> dict[str, TensorDataset]:
    gen = torch.Generator().manual_seed(23)
    x = torch.randn(41, 6, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return {"retain": TensorDataset(x[:30], y[:30]), "forget": TensorDataset(x[30:], y[30:])}


#: Each path case: the curve, its splits, the task and the search's targets.
PATH_CASES = {
    "lora": (
        lambda: bent(make_curve(), seed=5),
        lambda: dict(zip(("retain", "forget"), make_data(), strict=True)),
        TASK,
        (60.0, 5.0),
    ),
    "full": (make_bn_curve, make_bn_data, None, (30.0, 40.0)),
}


def run_path_calls(curve: CurveModel, case: str) -> dict[str, object]:
    """evaluate_path, search_path and export(t, bn_loader=retain): what both runs save."""
    _, data, task, (retain_target, forget_target) = PATH_CASES[case]
    splits = data()
    report = evaluate_path(curve, splits, ts=[0.0, 0.3, 0.7, 1.0], task=task, progress=False)
    found = search_path(
        curve,
        splits,
        retain_target=retain_target,
        forget_target=forget_target,
        max_points=8,
        task=task,
        progress=False,
    )
    metrics = {
        f"{split}_{metric}": report.metric(split, metric).tolist()
        for split in report.splits
        for metric in ("acc", "loss")
    }
    pinned = None
    if task is None:  # BatchNorm statistics pinned on the curve, then the curve's own forward
        curve.update_bn(splits["retain"], t=0.5)
        pinned = curve.eval()(splits["forget"].tensors[0], t=0.5).detach()
    return {
        "pinned": pinned,
        "report": metrics,
        "segments": [float(v) for v in report.segment_lengths],
        "search_t": found.report.t.tolist(),
        "search": {s: found.report.acc(s).tolist() for s in ("retain", "forget")},
        "search_loss": {s: found.report.loss(s).tolist() for s in ("retain", "forget")},
        "best_t": float(found.best.t),
        "export": curve.export(found.best.t, bn_loader=splits["retain"]).state_dict(),
    }


def _path_worker(out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    try:
        mesh = init_device_mesh("cpu", (2,))
        result = {
            case: run_path_calls(shard_curve(make(), mesh), case)
            for case, (make, *_) in PATH_CASES.items()
        }
        torch.save(result, out / f"rank{dist.get_rank()}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def path_ranks(tmp_path_factory):
    return launched(tmp_path_factory.mktemp("fsdp_path"), "--path")


@pytest.mark.slow  # the 2-process launch takes about 15 s
@pytest.mark.parametrize("case", PATH_CASES)
def test_path_and_search_on_a_sharded_curve_match_a_single_process(path_ranks, case):
    single = run_path_calls(PATH_CASES[case][0](), case)
    for rank in path_ranks:
        got = rank[case]
        for key, values in single["report"].items():
            assert got["report"][key] == pytest.approx(values, rel=1e-5, abs=1e-6), key
        assert got["segments"] == pytest.approx(single["segments"], rel=1e-5)
        assert got["search_t"] == pytest.approx(single["search_t"], abs=1e-9)
        assert got["search"] == single["search"]
        for split, values in single["search_loss"].items():
            assert got["search_loss"][split] == pytest.approx(values, rel=1e-5)
        assert got["best_t"] == pytest.approx(single["best_t"], abs=1e-9)
        _assert_close_states(got["export"], single["export"])
        if single["pinned"] is not None:
            torch.testing.assert_close(got["pinned"], single["pinned"], rtol=0, atol=1e-5)
    first, second = (rank[case] for rank in path_ranks)
    assert first["report"] == second["report"] and first["best_t"] == second["best_t"]
    assert all(torch.equal(first["export"][k], second["export"][k]) for k in first["export"])
    # The path is not flat: the comparison sees the accuracies move along it.
    assert len(set(single["report"]["retain_loss"])) > 1


# ------------------------------------------------------------------- the recipe, sharded
RECIPE_RETAIN, RECIPE_FORGET, RECIPE_EPOCHS = 30, 6, 3


def balanced_seed(retain: int, forget: int) -> int:
    """A seed whose 2-rank DistributedSamplers give each rank half the forget samples.

    Checked for every epoch (the sampler of epoch ``e`` is seeded with ``seed + e``).
    """

    def balanced(seed: int) -> bool:
        order = torch.randperm(retain + forget, generator=torch.Generator().manual_seed(seed))
        return int((order[0::2] >= retain).sum()) == forget // 2

    return next(s for s in range(1000) if all(balanced(s + e) for e in range(RECIPE_EPOCHS)))


def recipe_inputs() -> tuple[dict[str, object], int]:
    """Models, data and targets of the ``trained`` recipe run, and its seed.

    The per-rank objective ``CE(retain) - beta * CE(forget)`` averaged over the ranks is
    the single process's objective when each rank's half of the one global batch holds
    as many forget samples as the other's and beta is the same on each: the seed is
    chosen so that the DistributedSampler's split is balanced, the forget labels are the
    original's predictions (forget accuracy 100 % on every rank) and ``beta_low ==
    beta_high``.
    """
    torch.manual_seed(30)
    original = BNBlocks(norm=nn.LayerNorm)
    theta_u = copy.deepcopy(original)
    gen = torch.Generator().manual_seed(31)
    with torch.no_grad():
        for p in theta_u.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        x = torch.randn(RECIPE_RETAIN + RECIPE_FORGET, 6, generator=gen)
        x[RECIPE_RETAIN:] *= 4.0  # far out: the whole curve predicts what the original does
        y = original(x).argmax(1)
    seed = balanced_seed(RECIPE_RETAIN, RECIPE_FORGET)
    retain = TensorDataset(x[:RECIPE_RETAIN], y[:RECIPE_RETAIN])
    forget = TensorDataset(x[RECIPE_RETAIN:], y[RECIPE_RETAIN:])
    return {"original": original, "theta_u": theta_u, "retain": retain, "forget": forget}, seed


#: The recipe runs: ``line`` (num_bends=2: no training; BatchNorm re-estimated along the
#: path and in the export), ``trained`` (one control point, layer mask, 3 steps) and
#: ``lora`` (a LoRA curve, 3 steps, the matching objective, adapters merged in the export).
RECIPE_RUNS = {
    "line": {"num_bends": 2},
    "trained": {"epochs": RECIPE_EPOCHS, "beta_low": 0.3, "beta_high": 0.3},
    "lora": {"epochs": RECIPE_EPOCHS, "mask": "all", "objective": "match", "merged": True},
}
CLASS_TARGETS = Targets(retain=100.0, forget=0.0, scenario="class")
#: A forget loss far above any reached: ``|CE(forget) - tau| = tau - CE(forget)`` is linear,
#: so the ranks' average is the single process's objective (with balanced halves).
LM_TARGETS = Targets(retain=50.0, forget=5.0, scenario="random", forget_loss=50.0)


def lora_recipe_inputs() -> tuple[dict[str, object], int]:
    """The tiny Llama's adapters, 16 retain and 4 forget sequences, and a balanced seed."""
    original, theta_u = make_lora_pair()
    retain, forget = make_data()
    forget = TensorDataset(*(t[:4] for t in forget.tensors))
    inputs = {"original": original, "theta_u": theta_u, "retain": retain, "forget": forget}
    return inputs, balanced_seed(16, 4)


def run_recipe(case: str, *, shard: bool) -> dict[str, object]:
    """mcu_unlearn on the case's models and data: what both runs save."""
    inputs, seed = lora_recipe_inputs() if case == "lora" else recipe_inputs()
    if case == "line":
        curve = make_bn_curve()
        inputs["original"], inputs["theta_u"] = curve.export(0.0), curve.export(1.0)
        inputs.update(make_bn_data())
    lora = case == "lora"
    config = RecipeConfig(
        **RECIPE_RUNS[case],
        t_range=(0.0, 1.0),
        keep_base=False,
        lr=0.05,
        retain_ratio=1.0,
        batch_size=20 if lora else RECIPE_RETAIN + RECIPE_FORGET,
        optimizer="adam" if lora else "sgd",
        shard=shard,
    )
    result = mcu_unlearn(
        inputs.pop("original"),
        inputs.pop("theta_u"),
        inputs.pop("retain"),
        inputs.pop("forget"),
        targets=LM_TARGETS if lora else CLASS_TARGETS,
        config=config,
        seed=seed,
        progress=False,
        task=TASK if lora else None,
    )
    return {
        "sharded": is_sharded(result.curve),
        "t": float(result.t),
        "model": result.model.state_dict(),
        "loss": [r.loss for r in result.history],
        "beta": [r.beta for r in result.history],
        "acc": {s: result.report.acc(s).tolist() for s in ("retain", "forget")},
        "class": type(result.model).__name__,
    }


def _recipe_worker(out: Path) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    try:
        result = {case: run_recipe(case, shard=True) for case in RECIPE_RUNS}
        torch.save(result, out / f"rank{dist.get_rank()}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def recipe_ranks(tmp_path_factory):
    return launched(tmp_path_factory.mktemp("fsdp_recipe"), "--recipe")


@pytest.mark.slow  # the 2-process launch takes about 15 s
@pytest.mark.parametrize("case", RECIPE_RUNS)
def test_a_sharded_recipe_matches_a_single_process(recipe_ranks, case):
    single = run_recipe(case, shard=False)
    for rank in recipe_ranks:
        got = rank[case]
        assert got["sharded"] and not single["sharded"]
        assert got["class"] == single["class"]
        assert got["loss"] == pytest.approx(single["loss"], rel=1e-5)
        assert got["acc"] == single["acc"]
        assert got["t"] == pytest.approx(single["t"], abs=1e-9)
        _assert_close_states(got["model"], single["model"])
    first, second = (rank[case] for rank in recipe_ranks)
    assert first["t"] == second["t"] and first["loss"] == second["loss"]
    assert all(torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    assert single["class"] == ("LlamaForCausalLM" if case == "lora" else "BNBlocks")
    if case == "trained":
        # The precondition of the comparison: beta was the same on every rank at every step.
        assert single["beta"] == [0.3] * RECIPE_EPOCHS and first["beta"] == single["beta"]
    if case != "line":  # the curve moved, and the search chose a point inside the path
        assert single["loss"][-1] != single["loss"][0]
        assert 0.0 < single["t"] < 1.0


def test_a_sharded_recipe_needs_a_process_group():
    with pytest.raises(ModeConnError, match="shard must be True or False"):
        RecipeConfig(shard="yes")  # type: ignore[arg-type]
    inputs, _ = recipe_inputs()
    with pytest.raises(ModeConnError, match=r"shard=True.*torchrun"):
        mcu_unlearn(
            inputs["original"],
            inputs["theta_u"],
            inputs["retain"],
            inputs["forget"],
            targets=CLASS_TARGETS,
            config=RecipeConfig(shard=True),
            progress=False,
        )


# ------------------------------------------------------------------- a Hugging Face Trainer
#: Each step takes the whole retain set as one global batch: 8 sequences per rank on two
#: ranks, all 16 in the single process, so both see the same global batch whatever order
#: the Trainer's (accelerate's) sampler gives. The loss is a per-sample mean over equal
#: halves, so the ranks' averaged gradient is the single process's.
TRAINER_STEPS, TRAINER_BATCH = 3, 16


class CurveTrainer(transformers.Trainer):  # type: ignore[misc]
    """The Trainer of docs/language_models.md; it also records each step's loss and ``t``."""

    objective = finetune(task=TASK)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        loss = self.objective(model, inputs)  # model: the curve (in DDP on several ranks)
        self.record.append((float(loss.detach()), self.model.last_t))  # self.model: the curve
        return (loss, None) if return_outputs else loss


def run_trainer(out: Path, world: int) -> dict[str, object]:
    """The docs' recipe (scale_out.md): TrainingArguments, shard_curve, Trainer.train, export.

    On ``world`` ranks under torchrun (``TrainingArguments`` starts the gloo process group),
    or in this process when ``world == 1`` (not sharded).
    """
    args = transformers.TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=TRAINER_BATCH // world,
        max_steps=TRAINER_STEPS,
        optim="sgd",  # plain SGD: a wrongly scaled gradient changes the step (Adam's not)
        learning_rate=5.0,
        remove_unused_columns=False,  # the batch is ours, not a datasets'
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        ddp_backend="gloo" if world > 1 else None,  # one process: no process group
        disable_tqdm=True,
        seed=5,
    )
    curve = make_curve().to(args.device)  # TrainingArguments started the process group
    if world > 1:
        shard_curve(curve)
    retain, _ = make_data()
    trainer = CurveTrainer(
        model=curve,
        args=args,
        train_dataset=UnlearnDataset(retain, None),
        data_collator=PadCollator(0, as_dict=True),
    )
    trainer.record = []
    trainer.train()
    return {
        "wrapped": type(trainer.model_wrapped).__name__,
        "sharded": is_sharded(curve),
        "record": trainer.record,
        "bends": {k: v.detach().clone() for k, v in curve.state_dict().items()},
        "export": curve.export(0.5, merged=True).state_dict(),  # collective when sharded
    }


def _trainer_worker(out: Path) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        result = run_trainer(out, world=2)
        torch.save(result, out / f"rank{dist.get_rank()}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow  # the 2-process launch and the single run take about 15 s
def test_a_trainer_trains_a_sharded_lora_curve_as_one_process(tmp_path):
    """Trainer (DDP on top of shard_curve) on 2 ranks ends where one process's Trainer does."""
    ranks = launched(tmp_path, "--trainer")
    single = run_trainer(tmp_path, world=1)
    first, second = ranks
    assert first["wrapped"] == second["wrapped"] == "DistributedDataParallel"
    assert single["wrapped"] == "CurveModel" and not single["sharded"]
    assert first["sharded"] and second["sharded"]
    # Each step drew one t, the same on both ranks (the Trainer seeds every rank alike)
    # and in the single process; the ranks' mean loss is the one of the global batch.
    ts = [[t for _, t in run["record"]] for run in (first, second, single)]
    assert len(ts[2]) == TRAINER_STEPS and ts[0] == ts[1] == ts[2]
    halves = zip(first["record"], second["record"], strict=True)
    mean_loss = [(a + b) / 2 for (a, _), (b, _) in halves]
    assert mean_loss == pytest.approx([loss for loss, _ in single["record"]], rel=1e-5)
    # Both ranks end with the same bends and export, and those of the single process.
    assert _same(first["bends"], second["bends"]) and _same(first["export"], second["export"])
    for key, value in single["bends"].items():
        torch.testing.assert_close(first["bends"][key], value, rtol=0, atol=1e-5)
    assert first["export"].keys() == single["export"].keys()
    for key, value in single["export"].items():
        torch.testing.assert_close(first["export"][key], value, rtol=0, atol=1e-5)
    # The ends stayed and the control point moved by far more than the tolerance, so a
    # gradient summed instead of averaged over the ranks (twice the SGD step) would show.
    start = make_curve()
    trained = {name for name, _ in start.named_parameters()}
    for key, value in start.state_dict().items():
        moved = float((single["bends"][key] - value).abs().max())
        assert moved > 1e-3 if key in trained else moved == 0.0, key


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", type=Path, required=True)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--path", action="store_true")
    parser.add_argument("--recipe", action="store_true")
    parser.add_argument("--killed", action="store_true")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--trainer", action="store_true")
    arguments = parser.parse_args()
    if arguments.killed:
        _killed_worker(arguments.worker, arguments.resume)
        finish()
    worker = _worker
    if arguments.trainer:
        worker = _trainer_worker
    elif arguments.recipe:
        worker = _recipe_worker
    elif arguments.path:
        worker = _path_worker
    elif arguments.full:
        worker = _full_worker
    worker(arguments.worker)
    finish()
