"""Subprocess of the LLaVA crash test: a tiny LLaVA-NeXT run that hangs inside one checkpoint write.

    python tests/llava_crash_worker.py CONFIG.json HANG_AT_STEP READY_FILE

When the Trainer writes checkpoint-HANG_AT_STEP, the model weights and optimizer are already written
and the RNG state is next; the worker touches READY_FILE and sleeps there, so the parent can SIGKILL it
in the middle of the checkpoint.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch


if __name__ == "__main__":
    torch.set_num_threads(1)  # the same as the in-process runs it is compared with
    from transformers import Trainer

    from reasonclip_llava.mllm_train.train import LlavaTrainConfig, train_llava

    config_path, hang_at, ready = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    original = Trainer._save_rng_state

    def hanging_save_rng_state(self, output_dir):  # noqa: ANN001, ANN202
        if self.state.global_step == hang_at:
            ready.write_text(str(output_dir))
            time.sleep(600)
        return original(self, output_dir)

    Trainer._save_rng_state = hanging_save_rng_state
    train_llava(LlavaTrainConfig(**json.loads(Path(config_path).read_text())))
