"""Progress bars: shown when asked, and no tqdm object (nor its lock) when off."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import modeconn_unlearn as mcu
from modeconn_unlearn import progress
from modeconn_unlearn.progress import NoBar, progress_bar


def test_an_enabled_bar_is_tqdm_and_a_disabled_one_is_not(monkeypatch):
    built = []

    def fake_tqdm(iterable=None, **options):
        built.append(options)
        return iterable

    monkeypatch.setattr(progress, "tqdm", fake_tqdm)
    assert progress_bar(True, [1, 2], desc="x") == [1, 2]
    assert built == [{"desc": "x"}]
    assert progress_bar(False, [1, 2], desc="x") == [1, 2]
    assert isinstance(progress_bar(False, total=3), NoBar)
    assert len(built) == 1


def test_library_loops_build_no_tqdm_when_progress_is_off(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a progress bar was built with progress=False")

    monkeypatch.setattr(progress, "tqdm", refuse)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(24, 4, generator=g), torch.randint(0, 3, (24,), generator=g))
    retain, forget = mcu.forget_retain_split(data, forget_ratio=0.25, seed=0)
    model = nn.Linear(4, 3)
    other = mcu.unlearn(
        model, retain, forget, loss=mcu.losses.gradient_ascent(), epochs=1, lr=0.1, progress=False
    )
    curve = mcu.CurveModel(model, start=model, end=other)
    mcu.fit_curve(
        curve, retain, forget, loss=mcu.losses.mcu_objective(0.1), epochs=1, lr=0.1, progress=False
    )
    mcu.evaluate_path(curve, {"retain": retain}, ts=3, progress=False)
    mcu.connectivity_matrix({"a": model, "b": other}, {"retain": retain}, ts=3, progress=False)
    with pytest.raises(AssertionError, match="progress bar"):
        mcu.unlearn(
            model,
            retain,
            forget,
            loss=mcu.losses.gradient_ascent(),
            epochs=1,
            lr=0.1,
            progress=True,
        )


@pytest.mark.skipif(os.name != "posix", reason="needs fork and SIGKILL")
def test_a_process_killed_holding_the_bar_lock_does_not_block_a_later_run():
    # tqdm's write lock is shared by every process forked from one parent. A child killed while
    # it holds the lock leaves it taken; a later child must still train with progress=False.
    script = textwrap.dedent(
        """
        import faulthandler, os, signal, sys, time
        import torch
        from torch import nn
        from torch.utils.data import TensorDataset
        from tqdm import tqdm
        import modeconn_unlearn as mcu

        lock = tqdm.get_lock()
        holder = os.fork()
        if holder == 0:
            lock.acquire()
            time.sleep(60)
            os._exit(0)
        time.sleep(0.5)
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
        runner = os.fork()
        if runner == 0:
            faulthandler.dump_traceback_later(60, exit=True)  # a hang exits non-zero
            x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
            data = TensorDataset(x, y)
            mcu.unlearn(nn.Linear(4, 3), data, data, loss=mcu.losses.gradient_ascent(),
                        epochs=1, lr=0.1, progress=False)
            os._exit(0)
        _, status = os.waitpid(runner, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=240, check=False)
    assert done.returncode == 0


def test_every_long_step_shows_a_bar_by_default_and_one_default_holds(monkeypatch):
    import inspect
    import io

    from modeconn_unlearn.evaluation import PathSettings

    descriptions = []
    real = progress.tqdm

    def recording(*args, **options):
        descriptions.append(options.get("desc"))
        return real(*args, file=io.StringIO(), **options)

    monkeypatch.setattr(progress, "tqdm", recording)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(48, 4, generator=g), torch.randint(0, 3, (48,), generator=g))
    train, holdout = mcu.carve_holdout(data, fraction=0.25, seed=0)
    retain, forget = mcu.forget_retain_split(train, forget_ratio=0.25, seed=0)
    model = nn.Linear(4, 3)
    theta_u = mcu.unlearn(
        model, retain, forget, loss=mcu.losses.gradient_ascent(), epochs=1, lr=0.1
    )
    descriptions.clear()
    targets = mcu.user_targets(model, retain, holdout)
    config = mcu.RecipeConfig(epochs=1, lr=0.1, mask="layer")
    mcu.mcu_unlearn(model, theta_u, retain, forget, targets=targets, config=config)
    shown = " ".join(str(d) for d in descriptions)
    assert "mask: retain_data" in shown and "mask: forget_data" in shown
    assert "evaluate_path" in shown  # the search's rounds
    assert len(descriptions) >= 4  # and the curve's training
    defaults = [
        inspect.signature(f).parameters["progress"].default
        for f in (mcu.mcu_unlearn, mcu.layer_mask, mcu.saliency_mask, mcu.train_reference_models)
    ]
    assert defaults == [True] * 4
    assert PathSettings().progress and mcu.TrainConfig(lr=0.1, epochs=1).progress
