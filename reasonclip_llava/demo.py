"""`reasonclip demo`: the whole pipeline, offline, on tiny models, in a few minutes on 2 CPU cores.

synthetic data -> stage 1 -> stage 2 -> export -> verify -> original LLaVA tower -> `compare`: the same
LLaVA-NeXT recipe (projector pretraining -> instruction tuning -> merge) on the base and the stage-2
encoder -> plain-transformers reload -> answers -> evaluation of the encoders (base / stage 1 / stage 2)
and of both MLLMs on held-out data, per question kind -> report.

The demo owns its folder: `reasonclip_demo.json` (the manifest) lists what it writes there. A rerun in
the same folder removes those entries and runs again (exit 0, the same tables); a non-empty folder
without the manifest is refused, so the demo never deletes what it did not write.
"""

from __future__ import annotations

import json
import shutil
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


MANIFEST = "reasonclip_demo.json"
MANIFEST_FORMAT = "reasonclip.demo/1"
OWNED = ("pretrain", "encoders", "llava", "eval")  # every entry the demo writes in its folder, beside the manifest
# held-out images of the MLLM benchmarks (4 GQA kinds + POPE presence each); the 77 training images are
# the tiny workspace's
MLLM_EVAL_IMAGES = {False: 60, True: 8}


def claim_demo_folder(work: Path) -> None:
    """Make `work` the demo's: empty or absent -> manifest written; the demo's own -> its entries removed.

    A non-empty folder without the manifest is refused in one line (ValueError): it holds something else.
    """
    manifest = work / MANIFEST
    if work.is_dir() and any(work.iterdir()):
        if not manifest.is_file():
            raise ValueError(f"--work-dir {work} is not empty and is not a demo folder (no {MANIFEST}); "
                             "choose an empty or new folder")
        try:
            owned = json.loads(manifest.read_text())["owns"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"--work-dir {work}: {MANIFEST} is not the demo's manifest; choose another folder") from None
        for name in owned:
            if name in OWNED:  # only names the demo writes, whatever the file says
                shutil.rmtree(work / name, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"format": MANIFEST_FORMAT, "owns": list(OWNED)}, indent=2) + "\n")


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
    claim_demo_folder(work)
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

    step("LLaVA-NeXT, the same recipe on the base and the stage-2 encoder (reasonclip compare): tiny Qwen2-style LM")
    # training questions over the images pretraining generated; held-out images drawn after them
    images = sorted((synthetic_root / "images").glob("*.png"))
    num_train = len(images) - round(len(images) * 0.2)  # generate_synthetic's training images
    vqa = generate_synthetic_vqa(synthetic_root, num_images=num_train + MLLM_EVAL_IMAGES[quick], num_eval=MLLM_EVAL_IMAGES[quick],
                                 image_size=image_size(images[0])[0])
    comparison = _compare_mllms(work / "llava", {name: encoders[name] for name in ("base", "stage2")}, vqa, synthetic_root, quick)
    llava = Path(comparison["arms"]["stage2_seed0"]) / "merged"

    step("answers from the stage-2 arm's merged checkpoint, loaded with plain transformers")
    _show_answers(llava, vqa)

    step("evaluation on held-out synthetic data")
    table = _evaluate(work / "eval", encoders, comparison, pretrain, vqa)
    print(table)
    print("\nthe MLLM inside: the same LLaVA-NeXT recipe on each encoder, per question kind (GQA-format questions; POPE = presence)")
    print(mllm_table(comparison))
    return {"encoders": encoders, "llava": llava, "verify": report, "report": work / "eval" / "report.md",
            "comparison": work / "llava" / "comparison.md"}


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


def demo_recipe(vqa: dict[str, Path], image_folder: Path, quick: bool) -> list[dict[str, Any]]:
    """The demo's two LLaVA stages (llava-train keys): projector pretraining, then instruction tuning."""
    common = dict(image_folder=str(image_folder), per_device_train_batch_size=8, model_max_length=512, save_steps=1000, report_to="none")
    stage_a = dict(common, data_path=str(vqa["pretrain"]), template="plain", mm_tunable_parts="mm_mlp_adapter", learning_rate=1e-2,
                   max_steps=4 if quick else 20)
    # The tiny LM starts random, so the demo tunes it fully; quick (the tests' path) adds LoRA adapters.
    stage_b = dict(common, data_path=str(vqa["instruct"]), template="auto", mm_tunable_parts="mm_mlp_adapter,mm_language_model",
                   lora_enable=quick, lora_r=16, lora_alpha=32, learning_rate=3e-3, mm_projector_lr=1e-3, max_steps=6 if quick else 150)
    return [stage_a, stage_b]


def _compare_mllms(out: Path, encoders: dict[str, Path], vqa: dict[str, Path], image_folder: Path, quick: bool) -> dict[str, Any]:
    from .compare import compare_encoders
    from .testing.tiny_lm import build_tiny_lm

    lm = build_tiny_lm(out / "tiny_lm", family="qwen2")
    print("   per encoder: build -> stage A projector pretraining (tower and LM frozen, plain template) -> stage B instruction "
          f"tuning ({'LoRA on' if quick else 'full'} LM, projector at its own LR, tokenizer chat template) -> merge -> answers")
    # one-word answers: 16 new tokens instead of LLaVA's 128 keep the demo short on a CPU
    return compare_encoders(list(encoders.values()), lm, demo_recipe(vqa, image_folder, quick), vqa["gqa"].parents[1], out,
                            names=list(encoders), benchmarks=["gqa", "pope"], seeds=1, max_new_tokens=16,
                            title="tiny LLaVA-NeXT, same recipe: base vs stage-2 encoder")


def mllm_table(comparison: dict[str, Any]) -> str:
    """The comparison table with what each kind needs, and the one-line reading."""
    from .compare import comparison_markdown, reading
    from .data.synthetic_vqa import KIND_NEEDS

    lines = comparison_markdown(comparison).splitlines()
    for index, line in enumerate(lines):
        cells = line.split(" | ")
        if line.startswith("| ") and len(cells) > 2 and cells[1] in KIND_NEEDS:
            cells[1] = f"{cells[1]} (needs {KIND_NEEDS[cells[1]]})"
            lines[index] = " | ".join(cells)
    return "\n".join(lines) + "\n" + reading(comparison) + "\n"


def _show_answers(model_dir: Path, vqa: dict[str, Path]) -> None:
    from .evaluation.benchmarks import load_questions, read_items
    from .evaluation.generate import answer_questions, load_llava_next

    questions = load_questions("gqa", vqa["gqa"], vqa["gqa_images"])[:4]
    truth = {item.question_id: item.answer for item in read_items("gqa", vqa["gqa"])}
    model, processor = load_llava_next(model_dir)  # LlavaNextForConditionalGeneration.from_pretrained, nothing else
    for batch, answers in answer_questions(model, processor, questions, batch_size=4):
        for question, answer in zip(batch, answers):
            print(f"   Q: {question.prompt.splitlines()[0]}  A: {answer!r}  (truth: {truth[question.question_id]})")


def _evaluate(out: Path, encoders: dict[str, Path], comparison: dict[str, Any], pretrain: dict, vqa: dict[str, Path]) -> str:
    from .evaluation.encoder import evaluate_encoder
    from .evaluation.report import write_report

    runs = []
    for name, encoder in encoders.items():
        run_dir = out / name
        study = pretrain["study"]  # RCLIP-Bench-style 5-way items on the held-out images of the learning stages
        evaluate_encoder(encoder, "rclip_bench", study["rclip_bench"], study["root"], out_dir=run_dir, model_name=name)
        evaluate_encoder(encoder, "sugarcrepe", vqa["sugarcrepe"] / "swap_obj.json", vqa["encoder_images"], out_dir=run_dir, model_name=name)
        runs.append(f"{name}={run_dir}")
    for label, arm in comparison["arms"].items():  # the MLLMs' answers and scores, as compare wrote them
        runs.append(f"llava_next+{label.removesuffix('_seed0')}={Path(arm) / 'eval'}")
    markdown, _ = write_report(runs, out, title="reasonclip demo (tiny models, synthetic data)")
    return Path(markdown).read_text() + CHANCE_NOTE


CHANCE_NOTE = ("\nGQA has open answers (no chance column; per kind below). The MLLMs are a tiny random LM tuned for a few "
               "steps on each encoder.\n")
