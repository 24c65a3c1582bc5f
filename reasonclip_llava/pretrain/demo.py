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
    from ..tiny import save_tiny_clip

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
