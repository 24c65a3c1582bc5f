"""Two processes (torchrun, gloo) train stage 1 like one process on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from pretrain_helpers import REPO, checkpoint_tensors, make_workspace, recipe, single_thread, stage_args
from reasonclip_llava.pretrain.trainer import pretrain_from_yaml


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_stage1_matches_single_process_global_batch(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    common = ("--schedule.max_steps=2", "--runtime.save_every=1", "--optim.lr=1e-4")
    # One process, batch 8 ...
    with single_thread():
        single = pretrain_from_yaml(recipe("stage1"), stage_args(ws, "stage1", tmp_path / "one", *common))
    # ... and two processes with 4 each: rank r reads positions r, r + 2, ... of the same global order,
    # so every step sees the same 8 samples (in another order, which the contrastive losses ignore).
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    args = stage_args(ws, "stage1", tmp_path / "two", *common)
    args[args.index("--data.batch_size=8")] = "--data.batch_size=4"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
         "-m", "reasonclip_llava.pretrain", str(recipe("stage1")), *args],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "two" / "final"
    state = tmp_path / "two" / "checkpoint-1" / "trainer_state"
    assert (state / "rng_state_1.safetensors").is_file() and not list(state.glob("*.pkl"))  # every rank saved its RNG, no pickle
    expected, got = checkpoint_tensors(single), checkpoint_tensors(two)
    start = checkpoint_tensors(ws["clip"])
    assert expected.keys() == got.keys()
    moved = max((expected[k] - start[k]).abs().max().item() for k in expected)
    worst = max((expected[k] - got[k]).abs().max().item() for k in expected)
    print(f"max update {moved:.3g}, max 1-vs-2-process difference {worst:.3g}")
    assert moved > 1e-4  # training did move the weights ...
    assert worst < moved / 20, f"2-process weights differ by {worst} (updates are {moved})"  # ... and both runs moved them alike
