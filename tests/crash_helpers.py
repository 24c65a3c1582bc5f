"""Test helpers for failures: SIGKILL a worker at a chosen moment; the one error line a command prints."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable


def sigkill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float, waiting_for: str) -> None:
    """Wait until ready() (the worker must still be alive), then kill -9 it and check it died of the signal."""
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, f"worker exited early: {process.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline, f"{waiting_for} within {timeout:.0f} s"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def one_error_line(capsys) -> str:
    """The single 'error:' line a command wrote to stderr, with no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]  # (transformers' progress bars share stderr)
    assert len(lines) == 1, err
    return lines[0]
