"""DeepSpeed ZeRO-2 (stage A) then ZeRO-3 (stage B full), both through the `deepspeed` launcher, and
ZeRO-3 LoRA through torchrun, on CPU; and the LLaVA-1.5 format ReasonCLIP published (pad + flat, tower
unfrozen) under ZeRO-3 through the launcher.

ZeRO-3 is where LLaVA loses weights: a tower or projector loaded into an already-partitioned model comes
back with size-0 tensors or random values. Stage B here trains only the LM, so after a ZeRO-3 run the
tower must still equal the encoder and the projector must equal the one stage A trained, bitwise.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    CLIPModel,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
)

from reasonclip_llava.vlm.build import build_llava, save_llava
from reasonclip_llava.mllm_train.merge import merge_and_export
from reasonclip_llava.testing.tiny_lm import build_tiny_lm
from reasonclip_llava.vlm.tower_check import TOWER_CHECK_NAME
from reasonclip_llava.mllm_train.train import NON_LORA_TRAINABLES

from llava_train_helpers import tiny_llava_stages, write_conversations  # tests/ helper module

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(recipe: dict, path: Path, *overrides: str, launcher: str = "torchrun") -> subprocess.CompletedProcess:
    """One CPU process through `deepspeed --module` (as train/launch_llava_*.sh) or `torchrun -m` (multi-node)."""
    path.write_text(yaml.safe_dump(recipe))
    env = dict(os.environ, DS_ACCELERATOR="cpu", DS_BUILD_OPS="0", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    if launcher == "deepspeed":
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus=1", f"--master_port={free_port()}",
                   "--module", "reasonclip_llava.mllm_train.train"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                   "-m", "reasonclip_llava.mllm_train.train"]
    result = subprocess.run([*command, str(path), *overrides], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def losses(run_dir: Path) -> list[float]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def assert_complete(model: torch.nn.Module) -> None:
    empty = [name for name, tensor in model.state_dict().items() if tensor.numel() == 0]
    assert not empty, f"size-0 tensors after reload: {empty[:5]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_clip_dir):
    data = tiny_llava_stages(tmp_path_factory.mktemp("llava_deepspeed"), tiny_clip_dir)
    root, lm = data["root"], data["lm"]
    pretrain_json, pretrain_images = data["pretrain"]["data_path"], data["pretrain"]["image_folder"]
    instruct_json, instruct_images = data["instruct"]["data_path"], data["instruct"]["image_folder"]
    common = dict(per_device_train_batch_size=2, max_steps=2, save_steps=2, logging_steps=1, report_to="none",
                  warmup_ratio=0.0, bf16=False)
    stage_a = root / "stage_a"
    launch(dict(common, language_model=str(lm), vision_tower=str(tiny_clip_dir), template="plain",
                mm_tunable_parts="mm_mlp_adapter", learning_rate=1e-3, data_path=str(pretrain_json),
                image_folder=str(pretrain_images), output_dir=str(stage_a)),
           root / "stage_a.yaml", f"--deepspeed={REPO / 'train/zero2.json'}", launcher="deepspeed")
    stage_b = root / "stage_b"
    launch(dict(common, model_name_or_path=str(stage_a), template="qwen_1_5", mm_tunable_parts="mm_language_model",
                learning_rate=1e-3, data_path=str(instruct_json), image_folder=str(instruct_images),
                output_dir=str(stage_b)),
           root / "stage_b.yaml", f"--deepspeed={REPO / 'train/zero3.json'}", "--gradient_checkpointing", launcher="deepspeed")
    lora = root / "lora"
    launch(dict(common, model_name_or_path=str(stage_a), template="qwen_1_5",
                mm_tunable_parts="mm_mlp_adapter,mm_language_model", lora_enable=True, lora_r=4, lora_alpha=8,
                learning_rate=1e-2, mm_projector_lr=1e-3, data_path=str(instruct_json),
                image_folder=str(instruct_images), output_dir=str(lora)),
           root / "lora.yaml", f"--deepspeed={REPO / 'train/zero3.json'}")
    return dict(stage_a=stage_a, stage_b=stage_b, lora=lora, root=root, encoder=tiny_clip_dir)


def test_zero2_projector_pretraining(runs):
    run_dir = runs["stage_a"]
    assert len(losses(run_dir)) == 2 and all(torch.isfinite(torch.tensor(losses(run_dir))))
    assert (run_dir / "checkpoint-2").is_dir()
    model = LlavaNextForConditionalGeneration.from_pretrained(run_dir)
    assert_complete(model)
    encoder = CLIPModel.from_pretrained(runs["encoder"]).vision_model.state_dict()
    tower = model.model.vision_tower.state_dict()
    assert all(torch.equal(tower[name], tensor) for name, tensor in encoder.items())


def test_zero3_keeps_tower_and_pretrained_projector(runs):
    run_dir = runs["stage_b"]
    assert len(losses(run_dir)) == 2 and all(torch.isfinite(torch.tensor(losses(run_dir))))
    assert (run_dir / "checkpoint-2").is_dir()
    before = LlavaNextForConditionalGeneration.from_pretrained(runs["stage_a"])
    after = LlavaNextForConditionalGeneration.from_pretrained(run_dir)
    assert_complete(after)
    assert {n: t.shape for n, t in after.state_dict().items()} == {n: t.shape for n, t in before.state_dict().items()}
    encoder = CLIPModel.from_pretrained(runs["encoder"]).vision_model.state_dict()
    tower = after.model.vision_tower.state_dict()
    assert all(torch.equal(tower[name], tensor) for name, tensor in encoder.items())
    for name, tensor in before.model.multi_modal_projector.state_dict().items():
        assert torch.equal(after.model.multi_modal_projector.state_dict()[name], tensor), name
    assert torch.equal(after.model.image_newline, before.model.image_newline)
    lm_before, lm_after = before.model.language_model.state_dict(), after.model.language_model.state_dict()
    assert any(not torch.equal(lm_before[k], lm_after[k]) for k in lm_before)  # the LM did train

    generates(after, LlavaNextProcessor.from_pretrained(run_dir))


def test_zero3_lora_saves_adapter_and_projector_then_merges(runs):
    run_dir = runs["lora"]
    assert len(losses(run_dir)) == 2 and all(torch.isfinite(torch.tensor(losses(run_dir))))
    adapter = load_file(run_dir / "adapter_model.safetensors")
    side = load_file(run_dir / NON_LORA_TRAINABLES)
    assert adapter and all(t.numel() > 0 for t in adapter.values()) and all(t.numel() > 0 for t in side.values())
    assert all(".language_model." in name for name in adapter)
    before = LlavaNextForConditionalGeneration.from_pretrained(runs["stage_a"])
    assert not torch.equal(side["model.multi_modal_projector.linear_1.weight"],
                           before.model.multi_modal_projector.linear_1.weight)  # gathered, trained values

    merged = LlavaNextForConditionalGeneration.from_pretrained(merge_and_export(run_dir, runs["root"] / "merged"))
    assert_complete(merged)
    assert torch.equal(merged.model.multi_modal_projector.linear_1.weight, side["model.multi_modal_projector.linear_1.weight"])
    encoder = CLIPModel.from_pretrained(runs["encoder"]).vision_model.state_dict()
    assert all(torch.equal(merged.model.vision_tower.state_dict()[n], t) for n, t in encoder.items())
    generates(merged, LlavaNextProcessor.from_pretrained(runs["root"] / "merged"))


def generates(model, processor) -> None:
    image = Image.new("RGB", (70, 40), (220, 30, 30))
    inputs = processor(images=image, text="<image>\nWhat colour is the square?", return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 2


def test_zero3_llava15_pad_flat_saves_the_trained_tower(tmp_path, tiny_clip_dir):
    """ReasonCLIP's stage B (pad + flat, tower at its own lr) under ZeRO-3: the run itself gathers the
    partitioned tower and checks the saved one against it; here the result reloads and the tower trained."""
    lm = build_tiny_lm(tmp_path / "qwen2", family="qwen2")
    start = save_llava(*build_llava(lm, tiny_clip_dir, arch="llava", image_aspect_ratio="square"), tmp_path / "start")
    data_json, images = write_conversations(tmp_path / "instruct", n_images=4, n_text=2)
    run_dir = tmp_path / "stage_b"
    launch(dict(model_name_or_path=str(start), template="qwen_1_5", image_aspect_ratio="pad", mm_patch_merge_type="flat",
                mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model", learning_rate=1e-3,
                mm_vision_tower_lr=1e-3, data_path=str(data_json), image_folder=str(images), output_dir=str(run_dir),
                per_device_train_batch_size=2, max_steps=2, save_steps=100, logging_steps=1, report_to="none",
                warmup_ratio=0.0, bf16=False),
           tmp_path / "stage_b.yaml", f"--deepspeed={REPO / 'train/zero3.json'}", launcher="deepspeed")
    check = json.loads((run_dir / TOWER_CHECK_NAME).read_text())
    assert check["saved"] and check["bitwise_equal"] and check["nonfinite_values"] == 0
    model = LlavaForConditionalGeneration.from_pretrained(run_dir)
    assert_complete(model)
    encoder = CLIPModel.from_pretrained(tiny_clip_dir).vision_model.state_dict()
    tower = model.model.vision_tower.state_dict()
    assert any(not torch.equal(tower[name], tensor) for name, tensor in encoder.items())  # the tower trained
    processor = LlavaProcessor.from_pretrained(run_dir)
    assert processor.image_processor.do_pad is True
    generates(model, processor)
