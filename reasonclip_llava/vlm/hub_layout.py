"""Write VLM checkpoints in the layout of the published Hub checkpoints, so every reader loads the same model.

transformers >= 5.6 keeps CLIP / SigLIP vision models flat (`vision_tower.embeddings.*`) and writes them so
unless the model was itself loaded from a Hub-layout file; the published checkpoints (llava-hf, google
PaliGemma / Gemma 3, LLaVA-OneVision) nest the tower (`vision_tower.vision_model.embeddings.*`), and that
is the only layout transformers 4.57 / 5.0 (which then initialise the tower at random, with a warning) and
vLLM read. The newer readers load the nested layout too (their `PrefixChange(prefix_to_remove=...)`).
5.25's config.json also moved RoPE into `rope_parameters`, which 4.57 does not read (it would build its
default `rope_theta` 10000 instead of, e.g., Qwen2's 1e6).

`save_vlm` (every VLM this package writes: llava-build, swap, llava-merge, a trained stage's final save) =
`save_pretrained` (transformers' own names, legacy `language_model.model.*` renames included) + processor,
then `to_hub_layout` on the written files:
  * tower names: a sub-model whose class transformers declares to have dropped a checkpoint prefix (its
    conversion mapping holds `PrefixChange(prefix_to_remove=P)`: CLIPVisionModel, SiglipVisionModel and
    their aliases) and that holds no `P` child gets `P.` back in front of its own tensor names
    (`<where transformers wrote it>.vision_model.<rest>`). Towers that were never flattened (Idefics3's
    `model.vision_model.*`) and a model loaded from a Hub-layout file (already nested) stay as written.
    Only the safetensors headers change (data bytes are copied as they are), plus the shard index;
  * config.json: every (sub-)config with `rope_parameters` also gets the fields transformers < 5 reads:
    `rope_theta`, `rope_scaling` (non-default RoPE types), `rope_local_base_freq` (layer-type-nested
    parameters as Gemma 3's: full_attention / sliding_attention). They say the same as `rope_parameters`,
    so the current reader builds the same model.
Trainer intermediate checkpoints (checkpoint-N) stay as transformers writes them: resume reads them with the
version that wrote them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import torch

from ..io_utils import atomic_directory, safetensors_header

WEIGHTS_INDEX = "model.safetensors.index.json"
LEGACY_ROPE_LAYER_FIELDS = {"full_attention": "rope_theta", "sliding_attention": "rope_local_base_freq"}


def save_vlm(model: torch.nn.Module, processor: Any, out_dir: str | Path, overwrite: bool = False,
             sources: Iterable[str | Path | None] = ()) -> Path:
    """save_pretrained model + processor into a staging dir, in the Hub layout, renamed to out_dir at the end.

    A non-empty out_dir needs `overwrite`; an out_dir that is one of `sources` is refused. The result loads
    with the model's plain transformers class in transformers 4.57, 5.0 and the current one.
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite, sources=sources) as staging:
        model.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        to_hub_layout(model, staging)
    return out_dir


def to_hub_layout(model: torch.nn.Module, directory: str | Path) -> dict[str, str]:
    """Rewrite a directory that `model.save_pretrained` just wrote into the Hub layout (see module doc).

    Returns the renamed tensors (written name -> Hub name). A LoRA adapter dir (no model weights) and a
    PeftModel are left as they are (their merge is written by `save_vlm`).
    """
    directory = Path(directory)
    if hasattr(model, "get_base_model") or not _weight_files(directory):
        return {}
    renames = tower_renames(model, written_names(directory))
    if renames:
        rename_tensors(directory, renames)
    legacy_config_fields(directory / "config.json")
    return renames


# --------------------------------------------------------------------------- tower names
def dropped_prefixes(model: torch.nn.Module) -> dict[str, str]:
    """Module path -> the checkpoint prefix transformers removed from it (sub-models that are flat here)."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
        from transformers.core_model_loading import PrefixChange
    except ImportError:  # transformers < 5.6 keeps these sub-models nested: nothing was removed
        return {}
    from transformers import PreTrainedModel

    found: dict[str, str] = {}
    for path, module in model.named_modules():
        if not path or not isinstance(module, PreTrainedModel):
            continue
        conversions = get_checkpoint_conversion_mapping(type(module).__name__) or []
        for conversion in conversions:
            prefix = getattr(conversion, "prefix_to_remove", None)
            if isinstance(conversion, PrefixChange) and prefix and not conversion.model_prefix:
                if not isinstance(getattr(module, prefix, None), torch.nn.Module):  # nested already: nothing removed
                    found[path] = prefix
    return found


def tower_renames(model: torch.nn.Module, written: set[str]) -> dict[str, str]:
    """Written name -> Hub name for every tensor of a flat sub-model (see dropped_prefixes).

    Where transformers wrote sub-model `path` (e.g. `model.vision_tower` -> `vision_tower.` in the legacy
    layout) is found in the written names: the one prefix under which all of the sub-model's own tensor
    names are, whose last part is the module's name. Ambiguity or absence is an error, never a guess.
    """
    renames: dict[str, str] = {}
    modules = dict(model.named_modules())
    for path, prefix in dropped_prefixes(model).items():
        own = sorted(modules[path].state_dict().keys())
        if not own:
            continue
        leaf = path.rsplit(".", 1)[-1]
        candidates = {name[: -len(own[0])] for name in written if name.endswith(own[0])}
        candidates = {c for c in candidates if (c == "" or c.endswith(".")) and all(c + name in written for name in own)}
        # Written nested already (a model loaded from a Hub-layout checkpoint): `...<leaf>.<prefix>.`;
        # flat: `...<leaf>.` (DeepSeek-VL's tower is itself named `vision_model`: both forms end the same way).
        nested = [c for c in candidates if c == f"{leaf}.{prefix}." or c.endswith(f".{leaf}.{prefix}.")]
        flat = [c for c in candidates if c not in nested and (c == f"{leaf}." or c.endswith(f".{leaf}."))]
        if len(nested) + len(flat) != 1:
            raise RuntimeError(f"cannot tell where {path} ({type(modules[path]).__name__}) was written: "
                               f"{len(nested) + len(flat)} candidate prefixes {sorted(nested + flat)[:3]} in the saved weights")
        if nested:
            continue
        where = flat[0]
        renames.update({where + name: f"{where}{prefix}.{name}" for name in own})
    return renames


def _weight_files(directory: Path) -> list[Path]:
    index = directory / WEIGHTS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / shard for shard in shards]
    single = directory / "model.safetensors"
    return [single] if single.is_file() else []


def written_names(directory: str | Path) -> set[str]:
    names: set[str] = set()
    for path in _weight_files(Path(directory)):
        header = safetensors_header(path)
        if header is None:
            raise ValueError(f"{path}: not a safetensors file")
        names.update(key for key in header if key != "__metadata__")
    return names


def rename_tensors(directory: str | Path, renames: dict[str, str]) -> None:
    """Rename tensors in the safetensors files of `directory` (and its shard index) without touching their bytes."""
    directory = Path(directory)
    for path in _weight_files(directory):
        _rename_in_file(path, renames)
    index = directory / WEIGHTS_INDEX
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {renames.get(name, name): shard for name, shard in data["weight_map"].items()}
        _replace_text(index, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _rename_in_file(path: Path, renames: dict[str, str]) -> None:
    header = safetensors_header(path)
    if header is None:
        raise ValueError(f"{path}: not a safetensors file")
    if not any(name in renames for name in header):
        return
    old_length = int.from_bytes(_first_bytes(path), "little")
    new_header = {renames.get(name, name): entry for name, entry in header.items()}
    text = json.dumps(new_header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data section stays 8-byte aligned, as safetensors writes it
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(path, "rb") as source, open(partial, "wb") as target:
            source.seek(8 + old_length)
            target.write(len(text).to_bytes(8, "little"))
            target.write(text)
            shutil.copyfileobj(source, target, 16 * 1024 * 1024)  # the tensors' bytes, unchanged
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _first_bytes(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(8)


def _replace_text(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


# --------------------------------------------------------------------------- config.json
def legacy_rope_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The fields transformers < 5 reads for the RoPE that `rope_parameters` (5.x) describes; {} if none."""
    parameters = config.get("rope_parameters")
    if not isinstance(parameters, dict):
        return {}
    fields: dict[str, Any] = {}
    if any(key in LEGACY_ROPE_LAYER_FIELDS for key in parameters):  # nested by layer type (Gemma 2 / 3)
        for layer_type, theta_field in LEGACY_ROPE_LAYER_FIELDS.items():
            nested = parameters.get(layer_type)
            if isinstance(nested, dict) and "rope_theta" in nested:
                fields[theta_field] = nested["rope_theta"]
        full = parameters.get("full_attention")
        if isinstance(full, dict):
            fields.update(_legacy_scaling(full))
        return fields
    if "rope_theta" in parameters:
        fields["rope_theta"] = parameters["rope_theta"]
    fields.update(_legacy_scaling(parameters))
    return fields


def _legacy_scaling(parameters: dict[str, Any]) -> dict[str, Any]:
    if parameters.get("rope_type", "default") == "default":
        return {}
    return {"rope_scaling": {key: value for key, value in parameters.items() if key != "rope_theta"}}


def legacy_config_fields(path: str | Path) -> list[str]:
    """Add legacy RoPE fields (legacy_rope_fields) to config.json and its sub-configs; returns the keys added."""
    path = Path(path)
    if not path.is_file():
        return []
    config = json.loads(path.read_text(encoding="utf-8"))
    added: list[str] = []

    def visit(node: dict[str, Any], where: str) -> None:
        fields = legacy_rope_fields(node)
        if node.get("model_type") == "vipllava" and isinstance(node.get("vision_feature_layer"), list):
            fields["vision_feature_layers"] = node["vision_feature_layer"]  # its name before 5.x (4.57: 5 layers by default)
        for key, value in fields.items():
            if node.get(key) is None:
                node[key] = value
                added.append(f"{where}{key}")
        for key, value in node.items():
            if isinstance(value, dict) and "model_type" in value:
                visit(value, f"{where}{key}.")

    visit(config, "")
    if added:
        _replace_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return added
