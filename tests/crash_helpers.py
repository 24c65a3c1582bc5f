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


class Payload:
    """Unpickling this writes `marker`: the proof that a pickle was (or was not) executed."""

    def __init__(self, marker) -> None:  # noqa: ANN001
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        from pathlib import Path

        return (Path.write_text, (Path(self.marker), "unpickled!"))


PAYLOAD_KINDS = ("pickle", "torch_zip")


def payload_bytes(kind: str, marker) -> bytes:  # noqa: ANN001
    """A live payload: a bare pickle (protocol 4, STACK_GLOBAL) or a torch.save zip archive (protocol 2, GLOBAL)."""
    import io
    import pickle

    import torch

    if kind == "pickle":
        return pickle.dumps(Payload(marker))
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    return buffer.getvalue()


def assert_payload_is_live(tmp_path) -> None:  # noqa: ANN001
    """The payloads do run when unpickled as DeepSpeed / accelerate's custom state load them (weights_only=False)."""
    import torch

    for kind in PAYLOAD_KINDS:
        marker = tmp_path / f"live_{kind}.txt"
        path = tmp_path / f"live_{kind}.bin"
        path.write_bytes(payload_bytes(kind, marker))
        try:
            torch.load(path, weights_only=False)
        except Exception:  # noqa: BLE001 - the bare pickle fails torch's magic-number check after it ran
            pass
        assert marker.is_file(), kind
        marker.unlink()


WEIGHT_DAMAGES = ("truncated", "pickled", "pickle_only")


def damage_weights(weights, damage: str, marker, pickle_only_name: str):  # noqa: ANN001, ANN201
    """Cut a safetensors file in half, replace it by a live payload, or replace it by a payload-only sibling
    `pickle_only_name` (pytorch_model.bin, adapter_model.bin); returns the file a refusal must name."""
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return weights
    if damage == "pickled":
        weights.write_bytes(payload_bytes("torch_zip", marker))
        return weights
    weights.unlink()
    sibling = weights.with_name(pickle_only_name)
    sibling.write_bytes(payload_bytes("pickle", marker))
    return sibling
