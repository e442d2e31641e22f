"""Faults: SIGKILL while checkpoints are written, then resume to the uninterrupted result.

A worker process trains with ``checkpoint_dir`` and ``resume=True`` on a tiny model whose
epochs are short, so that a checkpoint is written every few milliseconds. The test kills it
with SIGKILL at random moments, scaled to the length of one uninterrupted run on this
machine, checks after every kill that the checkpoint on disk loads (never half a file),
starts it again, and finally compares the weights with those of a worker that ran without
interruption.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")]

KILLS = 10
EPOCHS = 100

# A zygote: imports torch and the library once, then forks one training child per command, so
# that each of the many restarts costs no import time. Nothing runs in parallel in the zygote
# before it forks (one intra-op thread), which keeps fork safe.
ZYGOTE = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    from torch import nn
    from torch.utils.data import TensorDataset
    import modeconn_unlearn as mcu

    def train(kind, out_dir, result):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(48, 8, generator=g)
        y = torch.randint(0, 3, (48,), generator=g)
        retain, forget = TensorDataset(x[:40], y[:40]), TensorDataset(x[40:], y[40:])
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        common = dict(epochs=EPOCHS, lr=0.05, batch_size=16, progress=False,
                      checkpoint_dir=out_dir, resume=True, seed=3)
        if kind == "unlearn":
            loss = mcu.losses.neggrad_plus(0.9)
            state = mcu.unlearn(model, retain, forget, loss=loss, **common).state_dict()
        else:
            torch.manual_seed(1)
            end = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
            curve = mcu.CurveModel(model, start=model, end=end)
            mcu.fit_curve(curve, retain, forget, loss=mcu.losses.mcu_objective(0.2), **common)
            state = curve.state_dict()
        torch.save({k: v.clone() for k, v in state.items()}, result)

    # Warm up (first-call costs of a training run) so children reach their epochs at once.
    import tempfile
    with tempfile.TemporaryDirectory() as warm:
        train("unlearn", warm + "/u", warm + "/u.pt")
        train("fit_curve", warm + "/c", warm + "/c.pt")
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "run":
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    train(*args)
                except BaseException:
                    import traceback
                    traceback.print_exc()
                    code = 1
                finally:
                    os._exit(code)
            print(pid, flush=True)
        elif command == "wait":
            _, status = os.waitpid(int(args[0]), 0)
            print(os.waitstatus_to_exitcode(status), flush=True)
    """
).replace("EPOCHS", str(EPOCHS))


class _Zygote:
    def __init__(self, script: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self._read() == "ready"

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the zygote process died"
        return line.strip()

    def _send(self, *words: object) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def start(self, kind: str, out_dir: Path, result: Path) -> int:
        return int(self._send("run", kind, out_dir, result))

    def wait(self, pid: int) -> int:
        return int(self._send("wait", pid))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def _checkpoints_load(out_dir: Path) -> int:
    """Load every finished checkpoint file; return how many there were."""
    files = sorted(out_dir.glob("*.pt"))
    for path in files:
        torch.load(path, weights_only=True, map_location="cpu")
    return len(files)


@pytest.mark.parametrize("kind", ["unlearn", "fit_curve"])
def test_sigkill_while_checkpointing_then_resume_is_bit_identical(kind, tmp_path):
    script = tmp_path / "zygote.py"
    script.write_text(ZYGOTE)
    zygote = _Zygote(script)
    try:
        reference = tmp_path / "reference.pt"
        began = time.perf_counter()
        assert zygote.wait(zygote.start(kind, tmp_path / "uninterrupted", reference)) == 0
        # Kill times scale with this machine's speed: the lives together sleep at most 80 % of
        # one uninterrupted run, so all kills land on a fast idle machine and on a busy one.
        window = (time.perf_counter() - began) / KILLS

        out_dir, result = tmp_path / "killed", tmp_path / "killed.pt"
        rng = random.Random(f"faults-{kind}")
        kills = 0
        while kills < KILLS:
            pid = zygote.start(kind, out_dir, result)
            # The child spends nearly all its time in short epochs, each ending in a write.
            time.sleep(rng.uniform(0.05, 0.8) * window)
            os.kill(pid, signal.SIGKILL)
            code = zygote.wait(pid)
            if code == 0:
                break  # it finished before the kill landed: nothing left to interrupt
            assert code == -signal.SIGKILL
            kills += 1
            _checkpoints_load(out_dir)  # never half a file
        assert kills >= KILLS // 2, f"only {kills} kills landed before training finished"
        assert _checkpoints_load(out_dir) >= 1
        assert zygote.wait(zygote.start(kind, out_dir, result)) == 0
    finally:
        zygote.close()

    expected = torch.load(reference, weights_only=True)
    got = torch.load(result, weights_only=True)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
