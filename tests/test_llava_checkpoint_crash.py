"""LLaVA training killed while a checkpoint is being written: `latest` resumes the previous complete
checkpoint (with a notice about the interrupted one) and ends with the uninterrupted run's weights."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crash_helpers import sigkill_when
from llava_train_helpers import write_conversations
from pretrain_helpers import single_thread
from reasonclip_llava.cli import main
from reasonclip_llava.mllm_train.checkpoints import STAGING_DIR, latest_checkpoint
from reasonclip_llava.testing.tiny_lm import build_tiny_lm
from reasonclip_llava.mllm_train.train import LlavaTrainConfig, train_llava

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("llava_crash_worker.py")
STEPS, HANG_AT = 4, 3


def stage_a_config(root: Path, encoder: Path, out: Path, **overrides) -> LlavaTrainConfig:
    data, images = write_conversations(root / "data", n_images=8, n_text=0)
    values = dict(language_model=str(build_tiny_lm(root / "lm")), vision_tower=str(encoder), template="plain",
                  mm_tunable_parts="mm_mlp_adapter", learning_rate=1e-2, max_steps=STEPS, save_steps=1, save_total_limit=None,
                  per_device_train_batch_size=2, logging_steps=1, report_to="none", warmup_ratio=0.0,
                  data_path=str(data), image_folder=str(images), output_dir=str(out))
    values.update(overrides)
    return LlavaTrainConfig(**values)


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_then_latest_resumes_the_previous_one(tmp_path, tiny_clip_dir, capsys):
    # 1) the uninterrupted reference run
    with single_thread():
        reference = train_llava(stage_a_config(tmp_path / "ref", tiny_clip_dir, tmp_path / "reference"))

    # 2) the same run in a subprocess, SIGKILLed while it writes checkpoint-3
    crashed = tmp_path / "crashed"
    config = stage_a_config(tmp_path / "crash", tiny_clip_dir, crashed)
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "config.json"), str(HANG_AT), str(ready)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sigkill_when(process, ready.exists, 300, "the worker did not reach the checkpoint write")
    # half of checkpoint-3 is on disk, but only in the staging dir: checkpoint-2 is the newest complete one
    assert (crashed / STAGING_DIR / "checkpoint-3" / "model.safetensors").is_file()
    assert not (crashed / "checkpoint-3").exists()
    assert sorted(p.name for p in crashed.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert latest_checkpoint(crashed) == crashed / "checkpoint-2"
    assert "skipping incomplete checkpoint" in capsys.readouterr().out

    # 3) `reasonclip llava-train ... --resume_from_checkpoint=latest` finishes the run
    overrides = [f"--{key}={value}" for key, value in dataclasses.asdict(config).items()
                 if value is not None and not isinstance(value, list)]
    with single_thread():
        assert main(["llava-train", *overrides, "--resume_from_checkpoint=latest"]) == 0
    assert "skipping incomplete checkpoint" in capsys.readouterr().out
    assert json.loads((crashed / "trainer_state.json").read_text())["global_step"] == STEPS
    assert not (crashed / STAGING_DIR).exists()
    expected, got = load_file(reference / "model.safetensors"), load_file(crashed / "model.safetensors")
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name


def test_latest_skips_a_checkpoint_with_a_corrupt_file(tmp_path, capsys):
    for step in (1, 2):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "trainer_state.json").write_text("{}")
        torch.save({"step": step}, checkpoint / "optimizer.pt")
    newest = tmp_path / "checkpoint-2" / "optimizer.pt"
    newest.write_bytes(newest.read_bytes()[:40])
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    out = capsys.readouterr().out
    assert "skipping checkpoint checkpoint-2" in out and "optimizer.pt: truncated" in out
