from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

from modeconn_unlearn.checkpoint import load_checkpoint, save_checkpoint
from modeconn_unlearn.errors import ModeConnError


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_load_from_module_mapping_and_file(tmp_path) -> None:
    model = nn.Linear(3, 2)
    path = tmp_path / "m.pt"
    save_checkpoint(model.state_dict(), path)
    for source in (model, model.state_dict(), path, str(path)):
        state = load_checkpoint(source)
        assert sorted(state) == ["bias", "weight"]
        torch.testing.assert_close(state["weight"], model.weight.detach())


def test_unwraps_training_checkpoints_and_prefixes(tmp_path) -> None:
    model = nn.Linear(3, 2)
    wrapped = {
        "epoch": 3,
        "model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
    }
    path = tmp_path / "ck.pt"
    save_checkpoint(wrapped, path)
    assert sorted(load_checkpoint(path)) == ["bias", "weight"]
    compiled = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    assert sorted(load_checkpoint(compiled)) == ["bias", "weight"]
    partial = {"module.weight": torch.ones(1), "bias": torch.ones(1)}
    assert sorted(load_checkpoint(partial)) == ["bias", "module.weight"]


def test_refuses_pickles_that_run_code(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"weight": Evil()}, f, protocol=2)
    with pytest.raises(ModeConnError, match="weights_only"):
        load_checkpoint(path)


def test_missing_and_empty(tmp_path) -> None:
    with pytest.raises(ModeConnError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(ModeConnError, match="no tensors"):
        load_checkpoint({"epoch": 1})
    with pytest.raises(TypeError):
        load_checkpoint(42)  # type: ignore[arg-type]


def test_save_is_atomic(tmp_path, monkeypatch) -> None:
    path = tmp_path / "sub" / "ck.pt"
    save_checkpoint({"w": torch.zeros(3)}, path)

    def broken_save(obj, stream):
        stream.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"w": torch.ones(3)}, path)
    monkeypatch.undo()
    torch.testing.assert_close(load_checkpoint(path)["w"], torch.zeros(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck.pt"]


def test_refusing_a_whole_pickled_model_names_it_without_terminal_codes(tmp_path) -> None:
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(ModeConnError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\x1b" not in message
    assert "torch.nn.modules.linear.Linear" in message
    assert "model.state_dict()" in message


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from modeconn_unlearn.checkpoint import atomic_write

    target = tmp_path / "report.json"
    target.write_text("old")

    def fail(stream):
        stream.write(b"half of the new")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary left
