"""Crash and resume: SIGKILL a run mid-way, resume from the latest checkpoint, get the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crash_helpers import sigkill_when
from pretrain_crash_worker import logging_forward
from pretrain_helpers import REPO, checkpoint_tensors, make_workspace, recipe, single_thread, stage_args
from reasonclip_llava.pretrain.objective import StageObjective
from reasonclip_llava.pretrain.trainer import list_checkpoints, pretrain_from_yaml

WORKER = Path(__file__).with_name("pretrain_crash_worker.py")
BATCH, ACCUM, STEPS, SAVE_EVERY = 8, 2, 12, 3


def _read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _args(ws, out: Path, *extra: str) -> list[str]:
    return stage_args(ws, "stage1", out, f"--schedule.max_steps={STEPS}", f"--runtime.save_every={SAVE_EVERY}",
                      f"--runtime.gradient_accumulation_steps={ACCUM}", "--runtime.keep_last=null", *extra)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    ws = make_workspace(tmp_path / "ws")
    original = StageObjective.forward
    # 1) uninterrupted reference run, in this process
    with single_thread(), monkeypatch.context() as patch:
        patch.setattr(StageObjective, "forward", logging_forward(original, str(tmp_path / "reference.jsonl")))
        reference = pretrain_from_yaml(recipe("stage1"), _args(ws, tmp_path / "reference"))

    # 2) the same run in a subprocess, killed with SIGKILL once a mid-run checkpoint exists
    crash_dir = tmp_path / "crashed"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "crash.jsonl"), "0.25", str(recipe("stage1")),
                                *_args(ws, crash_dir)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sigkill_when(process, (crash_dir / "checkpoint-6").is_dir, 180, "no mid-run checkpoint")
    assert not (crash_dir / "final").exists()
    latest = list_checkpoints(crash_dir)[-1]
    resumed_at = int(latest.name.split("-")[1])
    assert SAVE_EVERY * 2 <= resumed_at < STEPS

    # The checkpoint records the exact sample position: 2 micro-batches of 8 per step, 4 full batches
    # (32 of the 38 rows) per epoch; at an epoch's end the position is (that epoch, 32) until the next starts.
    progress = json.loads((latest / "trainer_state" / "progress.json").read_text())  # JSON: never a pickle
    samples = resumed_at * ACCUM * BATCH
    assert progress["step"] == resumed_at
    position = progress["data"]["position"]
    assert position["epoch"] * 32 + position["consumed"] == samples and 0 < position["consumed"] <= 32

    # 3) resume from the latest checkpoint and finish
    with single_thread(), monkeypatch.context() as patch:
        patch.setattr(StageObjective, "forward", logging_forward(original, str(tmp_path / "resumed.jsonl")))
        resumed = pretrain_from_yaml(recipe("stage1"), _args(ws, crash_dir, "--runtime.resume_from=latest"))

    # Same samples in the same order ...
    crash_log = [e for e in _read_log(tmp_path / "crash.jsonl") if e["step"] < resumed_at]
    assert crash_log + _read_log(tmp_path / "resumed.jsonl") == _read_log(tmp_path / "reference.jsonl")
    # ... and bit-identical final weights.
    expected, got = checkpoint_tensors(reference), checkpoint_tensors(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
