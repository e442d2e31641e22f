"""Launch a test file's ``--worker`` under ``torchrun`` with 2 CPU processes (gloo).

Robust on a busy machine: a free port from binding port 0, one thread per
worker, a hard wall-clock limit after which the whole process group is killed.
The worker itself sets generous collective timeouts and destroys its process
group in ``finally``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH_TIMEOUT_S = 420


def finish() -> None:
    """End a worker that has written its results: flush and skip the interpreter's teardown.

    At teardown gloo's threads sometimes abort a finished process ("terminate called
    without an active exception", SIGABRT), which torchrun reports as a failed run.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(script: str, out: Path, nproc: int, *args: str, killed: bool = False) -> None:
    """Run ``python -m torch.distributed.run ... script --worker out *args``; fail on error.

    With ``killed=True`` the workers are expected to die (e.g. by SIGKILL, as a preempted
    job does): a run that exits cleanly fails the test instead.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={nproc}", "--nnodes=1", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}", "--max_restarts=0",
        script, "--worker", str(out), *args,
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers
        output, _ = process.communicate()
        pytest.fail(f"torchrun did not finish in {LAUNCH_TIMEOUT_S}s:\n{output.decode()[-4000:]}")
    if killed:
        if process.returncode == 0:
            pytest.fail(f"torchrun was to be killed but finished:\n{output.decode()[-4000:]}")
    elif process.returncode != 0:
        pytest.fail(f"torchrun failed ({process.returncode}):\n{output.decode()[-4000:]}")
