"""Export a training checkpoint as a drop-in CLIP/SigLIP checkpoint.

The result is what a user of transformers, open_clip or LLaVA expects from a CLIP: config.json with the
stock model_type, model.safetensors with exactly the base architecture's weights, the preprocessor and
tokenizer files and a README model card. Training-only heads are left out (heads.safetensors, and the
authors' text_classifier.* / image_classifier.* inside a released stage-2 checkpoint); provenance is kept as extra
`reasonclip_*` config fields, which transformers carries through save/load untouched.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModel

from .. import __version__
from ..io_utils import atomic_directory, load_pretrained_strict, refuse_existing
from .modeling import HEADS_FILE, SUPPORTED_MODEL_TYPES, TRAINING_FILE, TrainingInfo, copy_sidecar_files, load_dual_encoder_config, training_only_keys

PROVENANCE_KEYS = ("reasonclip_base_model", "reasonclip_stage", "reasonclip_recipe", "reasonclip_version")
WEIGHTS_FILE = "model.safetensors"


def expected_weight_names(model: torch.nn.Module) -> set[str]:
    """Names a checkpoint of this architecture must hold: parameters and persistent buffers."""
    return set(model.state_dict().keys())


def saved_weight_names(directory: Path) -> set[str]:
    names: set[str] = set()
    for path in sorted(directory.glob("*.safetensors")):
        if path.name == HEADS_FILE:
            continue
        with safe_open(str(path), framework="pt") as handle:
            names.update(handle.keys())
    return names


def export_encoder(
    train_ckpt: str | Path,
    out_dir: str | Path,
    *,
    stage: str | None = None,
    recipe: str | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the plain CLIP/SigLIP checkpoint of a ReasonCLIP training checkpoint (or any dual encoder).

    Refuses to write anything when the weights in `train_ckpt` do not match the architecture exactly,
    and never replaces a non-empty `out_dir` unless `overwrite` is set.
    """
    train_ckpt, out_dir = Path(train_ckpt), Path(out_dir)
    if not train_ckpt.is_dir():
        raise FileNotFoundError(f"training checkpoint directory not found: {train_ckpt}")
    config = load_dual_encoder_config(train_ckpt)
    refuse_existing(out_dir, overwrite, sources=(train_ckpt,))  # before the (slow) load; never onto its own input
    model = load_pretrained_strict(AutoModel, train_ckpt, f"training checkpoint ({config.model_type})", dtype=torch.float32,
                                  tolerated=training_only_keys)  # a released stage-2 checkpoint's heads: stripped

    info = TrainingInfo.load(train_ckpt) or TrainingInfo()
    provenance = {
        "reasonclip_base_model": base_model or info.base_model or getattr(config, "reasonclip_base_model", "") or str(train_ckpt),
        "reasonclip_stage": stage or info.stage or getattr(config, "reasonclip_stage", ""),
        "reasonclip_recipe": recipe or info.recipe or getattr(config, "reasonclip_recipe", ""),
        "reasonclip_version": __version__,
    }
    for key, value in provenance.items():
        setattr(model.config, key, value)

    # Written into a sibling temp dir and renamed into place: a failed export leaves nothing half-written.
    with atomic_directory(out_dir, overwrite, sources=(train_ckpt,)) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        copy_sidecar_files(train_ckpt, staging)
        for leftover in (HEADS_FILE, TRAINING_FILE):
            (staging / leftover).unlink(missing_ok=True)
        check_exported_weights(staging, model)
        write_export_card(staging, config.model_type, provenance)
    return out_dir


def check_exported_weights(directory: Path, model: torch.nn.Module) -> None:
    """Fail when the written weights would drop or add tensors relative to the architecture."""
    expected, saved = expected_weight_names(model), saved_weight_names(directory)
    dropped, added = sorted(expected - saved), sorted(saved - expected)
    if dropped or added:
        raise ValueError(f"export would drop {len(dropped)} weight(s) {dropped[:3]} and add {len(added)} {added[:3]}")


def write_export_card(directory: Path, model_type: str, provenance: dict[str, str]) -> Path:
    """A short model card; `reasonclip card` replaces it with one carrying evaluation results."""
    model_class = {"clip": "CLIPModel", "siglip": "SiglipModel"}[model_type]
    family = SUPPORTED_MODEL_TYPES[model_type][0]
    text = f"""---
library_name: transformers
pipeline_tag: zero-shot-image-classification
base_model: {provenance['reasonclip_base_model']}
tags: [reasonclip, {family}, vision-language]
---
# ReasonCLIP encoder ({provenance['reasonclip_stage'] or 'unspecified stage'})

A plain `{model_class}` continually pretrained with reasoning supervision (ReasonCLIP / READ recipes,
`reasonclip-llava` {provenance['reasonclip_version']}). Same architecture and inference cost as the base
model `{provenance['reasonclip_base_model']}`; the training-only heads are not included.

```python
from transformers import {model_class}, AutoProcessor
model = {model_class}.from_pretrained("path/to/this/checkpoint")
processor = AutoProcessor.from_pretrained("path/to/this/checkpoint")
```

As a LLaVA vision tower: set `mm_vision_tower` to this checkpoint's path, or use its vision config and
weights in transformers' `LlavaNextForConditionalGeneration`.

Recipe: {provenance['reasonclip_recipe'] or 'n/a'}.
"""
    path = directory / "README.md"
    path.write_text(text)
    return path

