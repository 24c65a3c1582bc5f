"""`reasonclip demo`: the whole pipeline, offline, on tiny models, in a few minutes on 2 CPU cores.

synthetic data -> stage 1 -> stage 2 -> export -> verify -> original LLaVA tower -> LLaVA-NeXT build ->
projector pretraining -> LoRA instruction tuning -> merge -> plain-transformers reload -> answers ->
evaluation of the encoders (base / stage 1 / stage 2) and of the MLLM on held-out data -> report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch


class _Steps:
    """Numbered, timed progress lines."""

    def __init__(self) -> None:
        self.number, self.start = 0, time.perf_counter()

    def __call__(self, title: str) -> None:
        self.number += 1
        print(f"\n== {self.number}. {title}  [{time.perf_counter() - self.start:.0f}s]", flush=True)


def run_demo(work_dir: str | Path = "reasonclip_demo", quick: bool = False) -> dict[str, Any]:
    """Run every stage on tiny models and synthetic data; returns the paths and the results."""
    from transformers.utils import logging as hf_logging

    from .data.synthetic_vqa import generate_synthetic_vqa
    from .encoder import export_encoder, verify_export
    from .pretrain.demo import learning_table, prepare_tiny_workspace, run_learning_stages
    from .images import image_size

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    step = _Steps()

    step("ReasonCLIP pretraining on synthetic data: base (stage 0, descriptive) -> stage 1 (dual stream + L2 anchor) "
         "-> stage 2 (category heads); stage 0 on reasoning captions alone from the same base, for comparison")
    learning = run_learning_stages(work / "pretrain", quick=quick)
    print("\nheld-out images, plain CLIPModel (descriptive / reasoning caption among all held-out ones; 5-way: RCLIP-Bench style)")
    print(learning_table(learning["scores"], learning["data"]))
    encoders = {}
    for stage, name in (("stage0", "base"), ("stage1", "stage1"), ("stage2", "stage2")):
        encoders[name] = export_encoder(learning["checkpoints"][name], work / "encoders" / name, stage=stage, overwrite=True)
        print(f"   exported {name}: {encoders[name]}")
    pretrain = {**prepare_tiny_workspace(work / "pretrain"), "study": learning["data"]}  # the LLaVA stages' images
    synthetic_root = pretrain["reasonlite"].parent

    step("verify: the stage-2 export is a drop-in for the base CLIP")
    report = verify_export(encoders["stage2"], encoders["base"])
    print(json.dumps({name: check["ok"] for name, check in report["checks"].items()}, indent=2))
    if not report["ok"]:
        raise RuntimeError(f"verify failed: {report['failed']}")

    step("original LLaVA: mm_vision_tower = the export")
    _load_in_original_llava(encoders["stage2"])

    step("LLaVA-NeXT: tiny Qwen2-style LM + the stage-2 encoder")
    # questions over exactly the images pretraining generated (same seed, count, size, held-out split)
    images = sorted((synthetic_root / "images").glob("*.png"))
    vqa = generate_synthetic_vqa(synthetic_root, num_images=len(images), image_size=image_size(images[0])[0])
    llava = _train_llava_next(work / "llava", encoders["stage2"], vqa, synthetic_root, quick, lora=quick)

    step("answers from the merged checkpoint, loaded with plain transformers")
    _show_answers(llava, vqa)

    step("evaluation on held-out synthetic data")
    table = _evaluate(work / "eval", encoders, llava, pretrain, vqa, quick)
    print(table)
    return {"encoders": encoders, "llava": llava, "verify": report, "report": work / "eval" / "report.md"}


def _load_in_original_llava(encoder_dir: Path) -> None:
    try:
        from llava.model.multimodal_encoder.builder import build_vision_tower
    except ImportError:
        print("   llava-torch not installed: skipped (pip install --no-deps llava-torch)")
        return
    from .encoder.llava_compat import register_with_llava, unregister_from_llava

    register_with_llava()
    try:
        tower = build_vision_tower(SimpleNamespace(mm_vision_tower=str(encoder_dir), mm_vision_select_layer=-2, mm_vision_select_feature="patch"))
    finally:
        unregister_from_llava()  # the demo leaves LLaVA as it found it
    size = tower.config.image_size  # original LLaVA towers have no image_size property
    features = tower(torch.randn(1, 3, size, size))
    print(f"   {type(tower).__module__}.{type(tower).__name__}: features {tuple(features.shape)}")


def _train_llava_next(out: Path, encoder: Path, vqa: dict[str, Path], image_folder: Path, quick: bool, lora: bool = False) -> Path:
    from .vlm.build import build_and_save
    from .mllm_train.merge import merge_and_export
    from .testing.tiny_lm import build_tiny_lm
    from .mllm_train.train import load_train_config, train_llava

    lm = build_tiny_lm(out / "tiny_lm", family="qwen2")
    built = build_and_save(lm, encoder, out / "built", overwrite=True)  # a re-run replaces the demo's own outputs
    print(f"   built {built}")
    common = dict(image_folder=str(image_folder), per_device_train_batch_size=8, model_max_length=512, save_steps=1000, report_to="none", seed=0,
                  overwrite=True)  # a re-run replaces the demo's own runs
    stage_a = load_train_config(None, dict(
        common, model_name_or_path=str(built), data_path=str(vqa["pretrain"]), template="plain",
        mm_tunable_parts="mm_mlp_adapter", learning_rate=1e-2, max_steps=4 if quick else 20, output_dir=str(out / "stage_a"),
    ))
    print("   stage A: projector pretraining (tower and LM frozen, plain template)")
    stage_a_dir = train_llava(stage_a)
    stage_b = load_train_config(None, dict(
        common, model_name_or_path=str(stage_a_dir), data_path=str(vqa["instruct"]), template="auto",
        mm_tunable_parts="mm_mlp_adapter,mm_language_model", lora_enable=lora, lora_r=16, lora_alpha=32,
        learning_rate=3e-3, mm_projector_lr=1e-3, max_steps=6 if quick else 150, output_dir=str(out / "stage_b"),
    ))
    # The tiny LM starts random, so the demo tunes it fully; `lora=True` (the tests' path) adds adapters.
    print(f"   stage B: instruction tuning ({'LoRA on' if lora else 'full'} LM, projector at its own LR, tokenizer chat template)")
    stage_b_dir = train_llava(stage_b)
    return merge_and_export(stage_b_dir, out / "merged", overwrite=True)


def _show_answers(model_dir: Path, vqa: dict[str, Path]) -> None:
    from .evaluation.benchmarks import load_questions, read_items
    from .evaluation.generate import answer_questions, load_llava_next

    questions = load_questions("gqa", vqa["gqa"], vqa["gqa_images"])[:4]
    truth = {item.question_id: item.answer for item in read_items("gqa", vqa["gqa"])}
    model, processor = load_llava_next(model_dir)  # LlavaNextForConditionalGeneration.from_pretrained, nothing else
    for batch, answers in answer_questions(model, processor, questions, batch_size=4):
        for question, answer in zip(batch, answers):
            print(f"   Q: {question.prompt.splitlines()[0]}  A: {answer!r}  (truth: {truth[question.question_id]})")


def _evaluate(out: Path, encoders: dict[str, Path], llava: Path, pretrain: dict, vqa: dict[str, Path], quick: bool) -> str:
    from .evaluation.encoder import evaluate_encoder
    from .evaluation.generate import run_vqa
    from .evaluation.report import write_report
    from .evaluation.scoring import score_answers

    runs = []
    for name, encoder in encoders.items():
        run_dir = out / name
        study = pretrain["study"]  # RCLIP-Bench-style 5-way items on the held-out images of the learning stages
        evaluate_encoder(encoder, "rclip_bench", study["rclip_bench"], study["root"], out_dir=run_dir, model_name=name)
        evaluate_encoder(encoder, "sugarcrepe", vqa["sugarcrepe"] / "swap_obj.json", vqa["encoder_images"], out_dir=run_dir, model_name=name)
        runs.append(f"{name}={run_dir}")
    mllm_dir = out / "llava_next"
    for benchmark, data, images in (("gqa", vqa["gqa"], vqa["gqa_images"]), ("pope", vqa["pope"].parent, vqa["pope_images"])):
        # one-word answers: 16 new tokens instead of LLaVA's 128 keep the demo short on a CPU
        answers = run_vqa(llava, benchmark, data, images, mllm_dir / f"{benchmark}_answers.jsonl", batch_size=8, progress=False,
                          max_new_tokens=16, overwrite=True)  # a rerun of the demo retrains the model
        score_answers(benchmark, answers, data, out_dir=mllm_dir)
    runs.append(f"llava_next+stage2={mllm_dir}")
    markdown, _ = write_report(runs, out, title="reasonclip demo (tiny models, synthetic data)")
    return Path(markdown).read_text() + CHANCE_NOTE


CHANCE_NOTE = ("\nchance levels: RCLIP-Bench 20% (5-way), SugarCrepe 50% (2-way), POPE 50% (yes/no); GQA: open answers. "
               "The MLLM is a tiny random LM tuned for a few steps: its row shows the pipeline runs, not a skill.\n")
