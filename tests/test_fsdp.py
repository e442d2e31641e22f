"""shard_curve: a LoRA curve's frozen base under FSDP2, 2 CPU processes with gloo.

The workers run this file as a script (launched by :mod:`torchrun_launch`); each
shards a curve over two adapters of a tiny Llama, runs ``fit_curve``,
``evaluate_path`` and ``export`` on it, and saves what the tests compare with a
single-process run of the same calls.
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
from torchrun_launch import launch

from modeconn_unlearn.curve import CurveModel
from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.evaluation import evaluate_path
from modeconn_unlearn.losses import finetune
from modeconn_unlearn.tasks import CausalLMTask
from modeconn_unlearn.training import fit_curve, shard_curve

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
    return CurveModel(start, start=start, end=end)


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


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    launch(__file__, out, 2)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


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


def test_a_full_parameter_curve_is_refused_before_anything_runs():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    with pytest.raises(ModeConnError, match=r"not implemented yet.*DDP"):
        shard_curve(CurveModel(a, start=a, end=b))


def test_sharding_needs_a_process_group_and_a_curve():
    with pytest.raises(ModeConnError, match="process group"):
        shard_curve(make_curve())
    with pytest.raises(TypeError, match="CurveModel"):
        shard_curve(nn.Linear(2, 2))  # type: ignore[arg-type]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", type=Path, required=True)
    _worker(parser.parse_args().worker)
