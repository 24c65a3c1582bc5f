"""A tiny offline pretraining run on generated synthetic data (tests, `reasonclip demo`).

    paths = run_tiny_pretraining("demo_work")     # ~1 min on 2 CPU cores
    paths["stage1"], paths["stage2"]              # training checkpoints (ReasonCLIPForPretraining)

Everything is built locally: a tiny random CLIP (real CLIP BPE tokenizer), the synthetic ReasonLite /
ReasonPro parquet files, and (for READ) a tiny T5 with a SentencePiece tokenizer trained on the
synthetic captions. The runs use the tiny recipes in train/ (train/tiny_*.yaml) with the paths passed
as overrides; the same recipe names work from any directory because their absolute paths are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .trainer import pretrain_from_yaml

TRAIN_DIR = Path(__file__).resolve().parents[2] / "train"


def tiny_recipe(name: str) -> Path:
    """Path of a tiny recipe (tiny_stage1 / tiny_stage2 / tiny_read) in the repository's train/ folder."""
    path = TRAIN_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"tiny recipe not found: {path} (run from a source checkout)")
    return path


def build_tiny_t5(out_dir: str | Path) -> Path:
    """A tiny random T5 (d_model 16, 1 layer) saved with a tiny SentencePiece T5 tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    from ..data import build_tiny_t5_tokenizer

    out_dir = Path(out_dir)
    tokenizer = build_tiny_t5_tokenizer(out_dir)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
        decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    T5ForConditionalGeneration(config).save_pretrained(out_dir)
    return out_dir


def prepare_tiny_workspace(work_dir: str | Path, num_images: int = 96, seed: int = 0) -> dict[str, Path]:
    """Tiny CLIP + synthetic data + tiny T5 under work_dir (reused when already there)."""
    from ..data import generate_synthetic
    from ..data.synthetic import TRAIN_FILES
    from ..testing.tiny import save_tiny_clip

    work = Path(work_dir)
    clip = work / "tiny_clip"
    if not (clip / "model.safetensors").is_file():
        save_tiny_clip(clip, seed=seed)
    data_dir = work / "synthetic"
    if (data_dir / f"{TRAIN_FILES['reasonpro']}.parquet").is_file():
        data = {name: data_dir / f"{stem}.parquet" for name, stem in TRAIN_FILES.items()}
        data["swap_eval"] = data_dir / "swap_eval.parquet"
    else:
        data = generate_synthetic(data_dir, num_images=num_images, seed=seed, image_size=32)
    t5 = work / "tiny_t5"
    if not (t5 / "model.safetensors").is_file():
        build_tiny_t5(t5)
    return {"clip": clip, "reasonlite": Path(data["reasonlite"]), "reasonpro": Path(data["reasonpro"]),
            "cc12m_refined": Path(data["cc12m_refined"]), "swap_eval": Path(data["swap_eval"]), "t5": t5, "work": work}


def run_tiny_pretraining(work_dir: str | Path, read: bool = False, max_steps: int | None = None) -> dict[str, Path]:
    """Stage 1 -> stage 2 (-> READ on the stage-1 checkpoint when `read`) on synthetic data.

    Returns the workspace paths plus "stage1", "stage2" (and "read"): each a training checkpoint dir
    (output_dir/final) that `reasonclip export` turns into a drop-in CLIP checkpoint.
    """
    paths = prepare_tiny_workspace(work_dir)
    work = paths["work"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model gains nothing from intra-op threads and loses a lot on a busy machine
    try:
        _run_stages(paths, work, read, max_steps)
    finally:
        torch.set_num_threads(threads)
    return paths


def _run_stages(paths: dict[str, Path], work: Path, read: bool, max_steps: int | None) -> None:
    # The demo's work dir is its own: a re-run replaces its earlier runs.
    steps = [f"--schedule.max_steps={max_steps}"] if max_steps else []
    steps.append("--runtime.overwrite=true")
    paths["stage1"] = pretrain_from_yaml(tiny_recipe("tiny_stage1"), [
        f"--model.name_or_path={paths['clip']}", f"--data.train={paths['reasonlite']}",
        f"--runtime.output_dir={work / 'runs' / 'stage1'}", *steps])
    paths["stage2"] = pretrain_from_yaml(tiny_recipe("tiny_stage2"), [
        f"--model.name_or_path={paths['stage1']}", f"--data.train={paths['reasonpro']}",
        f"--runtime.output_dir={work / 'runs' / 'stage2'}", *steps])
    if read:
        paths["read"] = pretrain_from_yaml(tiny_recipe("tiny_read"), [
            f"--model.name_or_path={paths['stage1']}", f"--data.train={paths['reasonlite']}",
            f"--stage.t5_model={paths['t5']}", f"--runtime.output_dir={work / 'runs' / 'read'}", *steps])


# Steps per stage of the demo's learning story (`run_learning_stages`): enough for a 32-wide CLIP to learn.
# With these, data and seed 0 the demo's runs are those of seed 0 in docs/LEARNING_STUDY.md.
LEARNING_STEPS = {"base": 1000, "stage0 reasoning": 800, "stage1": 800, "stage2": 400}


def run_learning_stages(work_dir: str | Path, quick: bool = False) -> dict[str, Any]:
    """base -> stage 1 -> stage 2, and stage 0 reasoning from the same base, measured on held-out images.

    base is a learnable tiny CLIP after stage 0 on descriptive captions (a CLIP that knows descriptions,
    as the paper's starting CLIP does); the data is `study.write_study_data`'s. Returns {"data": paths,
    "checkpoints": {name: final dir}, "scores": {name: study.measure(...)}}.
    """
    from ..testing.tiny import save_learnable_tiny_clip
    from .study import measure, study_overrides, study_paths, write_study_data

    work = Path(work_dir)
    data = study_paths(work / "study")
    if not data["choice"].is_file():
        data = write_study_data(work / "study", *((200, 40) if quick else (3000, 250)))
    clip = work / "tiny_clip_init"
    if not (clip / "model.safetensors").is_file():
        save_learnable_tiny_clip(clip, logit_scale=50.0)
    steps = {name: 5 if quick else n for name, n in LEARNING_STEPS.items()}
    plan = {  # name: (recipe, start from, data, LR: from scratch, then continual pretraining at half of it, stage keys)
        "base": ("tiny_stage1", clip, data["train"], "2e-3", ["--stage.name=stage0", "--stage.captions=descriptive"]),
        "stage0 reasoning": ("tiny_stage1", "base", data["train"], "1e-3", ["--stage.name=stage0", "--stage.captions=reasoning"]),
        "stage1": ("tiny_stage1", "base", data["train"], "1e-3", ["--stage.name=stage1"]),  # the recipe's published w(t), beta
        "stage2": ("tiny_stage2", "stage1", data["pro"], "1e-3", ["--stage.name=stage2"]),
    }
    checkpoints: dict[str, Path] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model gains nothing from intra-op threads and loses a lot on a busy machine
    try:
        for name, (recipe, start, train, lr, stage) in plan.items():
            model = checkpoints.get(start, start)
            overrides = study_overrides(model, train, work / "runs" / name.replace(" ", "_"), steps[name], lr, progress=True)
            checkpoints[name] = pretrain_from_yaml(tiny_recipe(recipe), [*overrides, *stage])
    finally:
        torch.set_num_threads(threads)
    scores = {name: measure(path, data) for name, path in checkpoints.items()}
    return {"data": data, "checkpoints": checkpoints, "scores": scores}


def learning_table(scores: dict[str, dict[str, float]], data: dict[str, Path]) -> str:
    """Markdown table of the held-out scores with the chance level of each column, and a one-line reading."""
    import pyarrow.parquet as pq

    held_out = pq.read_table(data["eval"]).to_pylist()
    chance = {"descriptive R@1": 1 / len({r["desc"] for r in held_out}), "reasoning R@1": 1 / len({r["reason"] for r in held_out}),
              "reasoning 5-way": 0.2}
    lines = ["| encoder | " + " | ".join(f"{k} (chance {v:.1%})" for k, v in chance.items()) + " |",
             "|---|" + "---:|" * len(chance)]
    lines += [f"| {name} | " + " | ".join(f"{values[k]:.1%}" for k in chance) + " |" for name, values in scores.items()]

    def change(name: str, key: str, against: str = "base") -> str:
        return f"{100 * (scores[name][key] - scores[against][key]):+.1f}"

    reading = "; ".join(
        f"{name} (vs {against}): reasoning 5-way {change(name, 'reasoning 5-way', against)}, reasoning R@1 "
        f"{change(name, 'reasoning R@1', against)}, descriptive R@1 {change(name, 'descriptive R@1', against)} points"
        for name, against in (("stage1", "base"), ("stage0 reasoning", "base"), ("stage2", "stage1")) if name in scores)
    return "\n".join(lines) + "\n\nreading: " + reading
