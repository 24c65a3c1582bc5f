"""The contrastive losses on 2 ranks (torchrun, gloo, CPU) against one process on the whole batch.

Scaling contract checked (see reasonclip_llava/losses.py): per-rank losses average to the global
loss; each rank's feature gradients are world_size x the global gradient on its slice (so DDP's
averaging gives the global gradient); logit_scale / logit_bias gradients average to the global ones.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("dist_losses_worker.py")
WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load_worker():
    spec = importlib.util.spec_from_file_location("dist_losses_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist_losses") / "result"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={WORLD_SIZE}", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(WORKER), str(out),
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    saved = [torch.load(f"{out}.rank{rank}.pt") for rank in range(WORLD_SIZE)]
    assert [s["rank"] for s in saved] == list(range(WORLD_SIZE))
    assert all(s["world_size"] == WORLD_SIZE for s in saved)
    return [s["results"] for s in saved]


@pytest.fixture(scope="module")
def worker():
    return _load_worker()


@pytest.fixture(scope="module")
def reference(worker) -> dict:
    return worker.run_cases(rank=0, world_size=1)


CASES = [
    f"{case}/gather_with_grad={mode}"
    for case in ("clip", "siglip", "hard_negative", "hard_negative_accum", "paraphrase")
    for mode in (False, True)
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_ranks_match_one_process(rank_results, reference, worker, case):
    ref = reference[case]
    ranks = [r[case] for r in rank_results]
    close = dict(rtol=1e-9, atol=1e-12)

    # Loss: the ranks' values average to the single-process loss on the concatenated batch.
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), ref["loss"], **close)
    if case.endswith("gather_with_grad=False"):
        for r in ranks:  # without grad every rank scores the whole global batch
            torch.testing.assert_close(r["loss"], ref["loss"], **close)

    # Replicated scalars: DDP averages their gradients.
    for scalar in ("grad_logit_scale", "grad_logit_bias"):
        if scalar in ref:
            torch.testing.assert_close(torch.stack([r[scalar] for r in ranks]).mean(), ref[scalar], **close)

    # Features: each rank holds world_size x the global gradient of its own slice.
    feature_grads = [k for k in ref if k.startswith("grad_") and k not in ("grad_logit_scale", "grad_logit_bias")]
    assert feature_grads
    for key in feature_grads:
        name = key.removeprefix("grad_")
        rows = (worker.GLOBAL_BATCH // WORLD_SIZE) * (worker.NUM_NEGATIVES if name == "negative" else 1)
        for rank, r in enumerate(ranks):
            expected = WORLD_SIZE * ref[key][:, rank * rows : (rank + 1) * rows]
            assert expected.abs().max() > 0
            torch.testing.assert_close(r[key], expected, **close, msg=lambda m: f"{case} {key} rank {rank}: {m}")


@pytest.mark.slow
def test_both_gather_modes_agree_on_gradients(rank_results):
    """The two modes reach the same per-rank gradients by different routes."""
    for r in rank_results:
        for case in ("clip", "siglip", "hard_negative", "hard_negative_accum", "paraphrase"):
            no_grad, with_grad = r[f"{case}/gather_with_grad=False"], r[f"{case}/gather_with_grad=True"]
            for key in with_grad:
                if key.startswith("grad_") and key not in ("grad_logit_scale", "grad_logit_bias"):
                    torch.testing.assert_close(no_grad[key], with_grad[key], rtol=1e-9, atol=1e-12)
