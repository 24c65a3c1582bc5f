"""Subprocess of the crash/resume test: a tiny pretraining run that logs the samples of every step.

    python tests/pretrain_crash_worker.py LOG_JSONL STEP_DELAY_S CONFIG.yaml [--key=value ...]

Each step sleeps STEP_DELAY_S first, so the parent can SIGKILL the run between two checkpoints.
"""

from __future__ import annotations

import json
import sys
import time

import torch


def logging_forward(original, log_path: str, delay: float = 0.0):  # noqa: ANN001, ANN201
    """StageObjective.forward that first appends {"step", "indices"} of its micro-batch to log_path."""

    def forward(self, batch, step):  # noqa: ANN001, ANN202
        with open(log_path, "a") as log:
            log.write(json.dumps({"step": step, "indices": batch["indices"].tolist()}) + "\n")
        if delay:
            time.sleep(delay)
        return original(self, batch, step)

    return forward


if __name__ == "__main__":
    torch.set_num_threads(1)  # the same as the in-process runs it is compared with
    from reasonclip_llava.pretrain.objective import StageObjective
    from reasonclip_llava.pretrain.trainer import main

    StageObjective.forward = logging_forward(StageObjective.forward, sys.argv[1], float(sys.argv[2]))

    sys.exit(main(sys.argv[3:]))
