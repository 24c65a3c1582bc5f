"""`reasonclip verify`: prove an exported encoder is a drop-in for its base model, at the same cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoConfig, AutoModel

from ..io_utils import check_model_files, require_existing
from .export import PROVENANCE_KEYS
from .flops import vision_flops_per_image
from .modeling import SUPPORTED_MODEL_TYPES, training_only_keys
from .tower import VISION_MODELS, ReasonCLIPVisionTower, load_vision_model

# Config fields that describe a file, not an architecture (every `reasonclip_*` provenance field too).
NON_ARCHITECTURE_KEYS = {"_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype", "_commit_hash", *PROVENANCE_KEYS}


def architecture_dict(config: Any) -> dict:
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in NON_ARCHITECTURE_KEYS and not str(k).startswith("reasonclip_")}
        return value

    return strip(config.to_dict())


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for key in keys:
        left, right = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(left, dict) and isinstance(right, dict):
            out += _diff(left, right, f"{prefix}{key}.")
        elif left != right:
            out.append(f"{prefix}{key}: {left!r} != {right!r}")
    return out


def verify_export(export_dir: str | Path, base: str | Path, select_layer: int = -2, seed: int = 0) -> dict:
    """Run every drop-in check; returns {'ok': bool, 'checks': {name: {'ok', 'detail'}}, ...}."""
    if not Path(export_dir).is_dir():  # an export is always local; transformers would call it a bad repo id
        raise FileNotFoundError(f"export directory {export_dir}: path does not exist" if not Path(export_dir).exists() else f"{export_dir} is not a directory")
    require_existing(base, "--base")
    check_model_files(export_dir, "export")
    export_dir = str(export_dir)
    checks: dict[str, dict] = {}

    def check(name: str, fn: Callable[[], tuple[bool, Any]]) -> None:
        try:
            ok, detail = fn()
        except Exception as error:  # a failing check is reported by name, never a traceback
            ok, detail = False, f"{type(error).__name__}: {error}"
        checks[name] = {"ok": bool(ok), "detail": detail}

    export_config = AutoConfig.from_pretrained(export_dir)
    base_config = AutoConfig.from_pretrained(str(base))
    if export_config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"'{export_dir}' is a '{export_config.model_type}' checkpoint, not CLIP/SigLIP")

    def config_equal() -> tuple[bool, Any]:
        differences = _diff(architecture_dict(export_config), architecture_dict(base_config))
        return not differences, differences[:10] or "identical architecture config"

    loaded: dict[str, Any] = {}

    findings: dict[str, Any] = {}

    def strict_load() -> tuple[bool, Any]:
        model, info = AutoModel.from_pretrained(export_dir, dtype=torch.float32, output_loading_info=True)
        loaded["export"] = model
        # The authors' training heads (a released stage-2 checkpoint) are a named finding, not a failure.
        heads = training_only_keys(info.get("unexpected_keys", ()))
        if heads:
            findings["training_only_tensors"] = {
                "tensors": heads,
                "detail": f"{len(heads)} training-only tensor(s) beside the {type(model).__name__} weights: they load with an "
                          "unused-weights warning and do nothing at inference; `reasonclip export` strips them",
            }
        info = {**info, "unexpected_keys": [k for k in info.get("unexpected_keys", ()) if k not in heads]}
        bad = {k: sorted(map(str, v)) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        return not bad, bad or f"{type(model).__name__}: no missing, unexpected or mismatched keys"

    def parameters_equal() -> tuple[bool, Any]:
        with torch.device("meta"):
            base_model = AutoModel.from_config(base_config)
        export_model = loaded.get("export") or AutoModel.from_pretrained(export_dir)
        base_shapes = {n: tuple(p.shape) for n, p in base_model.named_parameters()}
        export_shapes = {n: tuple(p.shape) for n, p in export_model.named_parameters()}
        base_count, export_count = sum(p.numel() for p in base_model.parameters()), sum(p.numel() for p in export_model.parameters())
        ok = base_shapes == export_shapes and base_count == export_count
        return ok, {"base_parameters": base_count, "export_parameters": export_count, "names_and_shapes_equal": base_shapes == export_shapes}

    vision_config = getattr(export_config, "vision_config", export_config)
    model_class, _ = VISION_MODELS[vision_config.model_type]

    def features_bitwise() -> tuple[bool, Any]:
        tower = ReasonCLIPVisionTower(export_dir, _Args(select_layer))
        reference = load_vision_model(export_dir, dtype=torch.float32).eval()
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.randn(2, 3, vision_config.image_size, vision_config.image_size, generator=generator)
        with torch.no_grad():
            ours = tower(pixels)
            hidden = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[select_layer]
        expected = hidden[:, 1:] if tower.has_cls_token else hidden
        return torch.equal(ours, expected), {"layer": select_layer, "shape": list(ours.shape), "max_abs_diff": float((ours - expected).abs().max())}

    def flops_equal() -> tuple[bool, Any]:
        base_vision_config = getattr(base_config, "vision_config", base_config)
        with torch.device("meta"):
            base_tower = model_class(base_vision_config)
            export_tower = model_class(vision_config)
        base_flops = vision_flops_per_image(base_tower, base_vision_config.image_size)
        export_flops = vision_flops_per_image(export_tower, vision_config.image_size)
        return base_flops == export_flops, {"base_flops_per_image": base_flops, "export_flops_per_image": export_flops}

    check("architecture_config_equal", config_equal)
    check("strict_load", strict_load)
    check("parameters_equal", parameters_equal)
    check("tower_features_bitwise_equal", features_bitwise)
    check("flops_per_image_equal", flops_equal)
    return {
        "export": export_dir,
        "base": str(base),
        "model_type": export_config.model_type,
        "ok": all(c["ok"] for c in checks.values()),
        "failed": [name for name, c in checks.items() if not c["ok"]],
        "checks": checks,
        "findings": findings,
    }


class _Args:
    def __init__(self, select_layer: int):
        self.mm_vision_select_layer = select_layer
        self.mm_vision_select_feature = "patch"
