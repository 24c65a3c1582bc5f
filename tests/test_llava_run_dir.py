"""LLaVA runs and merges: nothing planted in a checkpoint runs, a trained output_dir is never replaced unasked,
two runs never share one, and a LoRA merge never builds a wrong model without a word. Every case is the
command a user types (`reasonclip llava-train` / `llava-merge`), exit status 2 and one line naming the file."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlavaNextForConditionalGeneration

from crash_helpers import PAYLOAD_KINDS, WEIGHT_DAMAGES, assert_payload_is_live, damage_weights, one_error_line, payload_bytes
from llava_train_helpers import tiny_llava_stages
from pretrain_helpers import single_thread
from reasonclip_llava.cli import main
from reasonclip_llava.io_utils import RUN_LOCK, claim_run_directory
from reasonclip_llava.mllm_train.train import NON_LORA_TRAINABLES, LlavaTrainConfig, save_train_config, train_llava

COMMON = dict(per_device_train_batch_size=2, logging_steps=1, report_to="none", warmup_ratio=0.0, max_steps=2,
              save_steps=1, save_total_limit=None)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def recipe_file(config: LlavaTrainConfig, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return save_train_config(config, directory)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_clip_dir):
    """A finished stage A (full checkpoints 1-2) and a LoRA stage B on it (adapter checkpoints 1-2)."""
    setup = tiny_llava_stages(tmp_path_factory.mktemp("llava_run_dir"), tiny_clip_dir)
    root = setup["root"]
    stage_a = LlavaTrainConfig(language_model=setup["lm"], vision_tower=setup["encoder"], template="plain",
                               mm_tunable_parts="mm_mlp_adapter", learning_rate=1e-3, output_dir=str(root / "stage_a"),
                               **setup["pretrain"], **COMMON)
    lora = LlavaTrainConfig(model_name_or_path=str(root / "stage_a"), template="qwen_1_5", lora_enable=True, lora_r=4,
                            lora_alpha=8, mm_tunable_parts="mm_mlp_adapter,mm_language_model", learning_rate=1e-3,
                            output_dir=str(root / "lora"), **setup["instruct"], **COMMON)
    with single_thread():
        train_llava(stage_a)
        train_llava(lora)
    return dict(root=root, stage_a=stage_a, lora=lora, setup=setup)


# ---- 1: a planted pickle never runs ---------------------------------------------------------------------------
def test_a_payload_planted_in_any_llava_checkpoint_file_never_runs_and_is_named(runs, tmp_path, capsys):
    assert_payload_is_live(tmp_path)
    marker = tmp_path / "unpickled.txt"
    for config in (runs["stage_a"], runs["lora"]):
        checkpoint = Path(config.output_dir) / "checkpoint-2"
        files = sorted(p for p in checkpoint.rglob("*") if p.is_file())
        names = {p.name for p in files}
        assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.json"} <= names
        assert "training_args.bin" not in names  # the Trainer's pickle of TrainingArguments is written as JSON
        assert {"model.safetensors"} <= names if not config.lora_enable else {"adapter_model.safetensors", NON_LORA_TRAINABLES} <= names
        recipe = recipe_file(config, tmp_path / Path(config.output_dir).name)
        for path in files:
            original = path.read_bytes()
            for kind in PAYLOAD_KINDS:
                path.write_bytes(payload_bytes(kind, marker))
                try:
                    assert main(["llava-train", str(recipe), f"--resume_from_checkpoint={checkpoint}"]) == 2, (path, kind)
                    line = one_error_line(capsys)
                finally:
                    path.write_bytes(original)
                assert str(path) in line and "weights_only" not in line, line
                assert not marker.exists(), (path, kind)

    # latest skips the planted checkpoint (a notice naming the file) and resumes the one before it
    config = runs["stage_a"]
    optimizer = Path(config.output_dir) / "checkpoint-2" / "optimizer.pt"
    original = optimizer.read_bytes()
    optimizer.write_bytes(payload_bytes("torch_zip", marker))
    try:
        with single_thread():
            assert main(["llava-train", str(recipe_file(config, tmp_path / "a")), "--resume_from_checkpoint=latest"]) == 0
    finally:
        optimizer.write_bytes(original)
    out = capsys.readouterr().out
    assert f"skipping checkpoint checkpoint-2: {optimizer}" in out and not marker.exists()


# ---- 2 and 7: a trained output_dir is never replaced unasked, nor shared ------------------------------------
def test_llava_train_refuses_a_trained_output_dir_unless_overwrite_or_resume(runs, tmp_path, capsys):
    trained = tmp_path / "trained"
    shutil.copytree(runs["stage_a"].output_dir, trained)
    config = dataclasses.replace(runs["stage_a"], output_dir=str(trained))
    recipe = recipe_file(config, tmp_path / "recipe")
    before = snapshot(trained)
    # the case: the same command again used to exit 0, replace the weights and rotate checkpoint-2 away
    assert main(["llava-train", str(recipe)]) == 2
    line = one_error_line(capsys)
    assert f"{trained} is not empty" in line and "--resume_from_checkpoint=latest" in line and "--overwrite" in line
    assert main(["llava-train", str(recipe), "--learning_rate=5e-4"]) == 2
    assert "holds another run (differing in learning_rate: 0.001 -> 0.0005)" in one_error_line(capsys)
    assert main(["llava-train", str(recipe), "--learning_rate=5e-4", f"--resume_from_checkpoint={trained / 'checkpoint-1'}"]) == 2
    assert "learning_rate: 0.001 -> 0.0005" in one_error_line(capsys)
    assert snapshot(trained) == before
    with claim_run_directory(trained):  # another run is writing it
        assert main(["llava-train", str(recipe), "--resume_from_checkpoint=latest"]) == 2
        assert f"output directory {trained} is in use by another run (pid" in one_error_line(capsys)
    assert snapshot(trained) == before
    # --overwrite replaces the old run as a whole: no stale checkpoint, no old file beside the new ones
    (trained / "notes_of_the_old_run.txt").write_text("old")
    (trained / ".staging" / "checkpoint-9").mkdir(parents=True)
    with single_thread():
        assert main(["llava-train", str(recipe), "--overwrite"]) == 0
    assert sorted(p.name for p in trained.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert not (trained / "notes_of_the_old_run.txt").exists() and not (trained / ".staging").exists()
    assert not (trained / RUN_LOCK).exists()
    LlavaNextForConditionalGeneration.from_pretrained(trained)


# ---- 3 and 10: llava-merge ---------------------------------------------------------------------------------
def test_merge_refuses_a_lora_run_without_its_non_lora_trainables(runs, tmp_path, capsys):
    run = tmp_path / "lora"
    shutil.copytree(runs["lora"].output_dir, run, ignore=shutil.ignore_patterns("checkpoint-*"))
    side = run / NON_LORA_TRAINABLES
    trained_projector = load_file(side)["model.multi_modal_projector.linear_1.weight"]
    # the merge records where each part came from
    assert main(["llava-merge", str(run), str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "config.json").read_text())["reasonclip_merge"]
    assert merged["parts"]["mm_mlp_adapter"] == str(side)
    assert merged["parts"]["mm_vision_tower"].startswith("base (") and "+ LoRA" in merged["parts"]["mm_language_model"]
    model = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "merged")
    assert torch.equal(model.model.multi_modal_projector.linear_1.weight, trained_projector)
    # the case: without the file the merge used the base's untrained projector, exit 0
    side.unlink()
    assert main(["llava-merge", str(run), str(tmp_path / "wrong")]) == 2
    line = one_error_line(capsys)
    assert f"{side}: missing" in line and "mm_mlp_adapter" in line
    assert not (tmp_path / "wrong").exists()
    # source == output, even with --overwrite, is refused: it used to destroy the run
    assert main(["llava-merge", str(tmp_path / "merged"), str(tmp_path / "merged"), "--overwrite"]) == 2
    assert "is the input" in one_error_line(capsys)
    assert (tmp_path / "merged" / "model.safetensors").is_file()


@pytest.mark.parametrize("damage", WEIGHT_DAMAGES)
def test_merge_names_a_truncated_or_pickled_adapter(runs, tmp_path, capsys, damage):
    run = tmp_path / "lora"
    shutil.copytree(runs["lora"].output_dir, run, ignore=shutil.ignore_patterns("checkpoint-*"))
    marker = tmp_path / "unpickled.txt"
    named = damage_weights(run / "adapter_model.safetensors", damage, marker, "adapter_model.bin")
    expected = {"truncated": f"{named}: not a complete safetensors file",
                "pickled": f"{named}: a pickle (torch.save) file where safetensors is expected",
                "pickle_only": f"{named}: pickle adapter weights are never unpickled"}[damage]
    assert main(["llava-merge", str(run), str(tmp_path / "merged")]) == 2
    assert expected in one_error_line(capsys)
    assert not marker.exists() and not (tmp_path / "merged").exists()
