"""The tower after training is the tower that was trained; what a VLM's tower is, at the feature it reads.

ReasonCLIP's authors found merged LLaVA checkpoints holding a stale or NaN vision tower (their evaluation
reloads the tower from the encoder instead). Here every save is checked instead: after a full, LoRA or
ZeRO-3 run (`train_llava`) and after `llava-merge`, the tower read back from what was written must equal,
bitwise, the tower that was in memory when training ended, and hold no NaN/inf. Towers are found through
`vlm.families` (any registered VLM family). `reasonclip verify VLM --encoder ENC` (verify_vlm_tower) runs
the VLM's own feature path, captures the projector's input and compares it bitwise with the standalone
encoder's output at the family's rule: `equal`, `fine-tuned from ENC` or `not ENC`.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from ..io_utils import atomic_write_text

TOWER_CHECK_NAME = "reasonclip_tower_check.json"
TOWER_PREFIX = "model.vision_tower."  # the LLaVA families' tower path (+ "."); others: family.tower_paths


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The VLM inside a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def tower_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """{tower path: module} of a VLM of any registered family (vlm.families decides where towers sit)."""
    from .families import family_of

    model = unwrap(model)
    return family_of(model).towers(model)


def _tower_tensors(towers: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """One tower: its own names (`embeddings...`); several (Video-LLaVA): prefixed with the tower path."""
    if len(towers) == 1:
        return dict(next(iter(towers.values())).state_dict())
    return {f"{path}.{name}": tensor for path, tower in towers.items() for name, tensor in tower.state_dict().items()}


def vision_tower_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the vision tower's tensors, named as in the tower (several towers: `<path>.<name>`).

    Under ZeRO-3 the parameters are partitioned; they are gathered first (a collective: call on every rank).
    """
    towers = tower_modules(model)
    partitioned = [p for tower in towers.values() for p in tower.parameters() if hasattr(p, "ds_id")]
    gather = nullcontext()
    if partitioned:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)
    with gather:
        return {name: tensor.detach().cpu().clone() for name, tensor in _tower_tensors(towers).items()}


_SAME_WIDTH_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (a NaN equals the same NaN; torch.equal says NaN != NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        width = _SAME_WIDTH_INT[a.element_size()]
        return torch.equal(a.contiguous().view(width), b.contiguous().view(width))
    return torch.equal(a, b)


def compare_towers(reference: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> dict[str, Any]:
    """How `found` differs from `reference`: names, bitwise equality, how far it moved, NaN/inf count."""
    if reference.keys() != found.keys():
        missing, extra = sorted(reference.keys() - found.keys()), sorted(found.keys() - reference.keys())
        return {"same_tensors": False, "bitwise_equal": False, "missing": missing[:3], "unexpected": extra[:3],
                "nonfinite_values": sum(int((~torch.isfinite(t.float())).sum()) for t in found.values())}
    if any(reference[name].shape != found[name].shape for name in reference):
        name = next(n for n in reference if reference[n].shape != found[n].shape)
        return {"same_tensors": False, "bitwise_equal": False,
                "shape_mismatch": f"{name}: {list(reference[name].shape)} vs {list(found[name].shape)}",
                "nonfinite_values": sum(int((~torch.isfinite(t.float())).sum()) for t in found.values())}
    changed, max_abs, delta_sq, norm_sq, nonfinite = 0, 0.0, 0.0, 0.0, 0
    for name, ref in reference.items():
        new = found[name]
        nonfinite += int((~torch.isfinite(new.float())).sum())
        if bitwise_equal(ref, new):
            norm_sq += float(ref.double().pow(2).sum())
            continue
        changed += 1
        delta = new.double() - ref.double()
        max_abs = max(max_abs, float(delta.abs().max()))
        delta_sq += float(delta.pow(2).sum())
        norm_sq += float(ref.double().pow(2).sum())
    return {
        "same_tensors": True,
        "bitwise_equal": changed == 0,
        "tensors": len(reference),
        "tensors_changed": changed,
        "max_abs_diff": max_abs,
        "relative_change": (delta_sq ** 0.5) / (norm_sq ** 0.5) if norm_sq else 0.0,  # ||found - ref|| / ||ref||
        "nonfinite_values": nonfinite,
    }


def require_saved_tower(trained: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], where: str | Path) -> dict[str, Any]:
    """The saved tower must equal the trained one bitwise and be finite; one-line RuntimeError otherwise."""
    report = compare_towers(trained, saved)
    if report["nonfinite_values"]:
        raise RuntimeError(f"{where}: the saved vision tower holds {report['nonfinite_values']} NaN/inf values")
    if not report["bitwise_equal"]:
        detail = {k: v for k, v in report.items() if k not in ("same_tensors", "bitwise_equal")}
        raise RuntimeError(f"{where}: the saved vision tower is not the trained one ({detail})")
    return report


def saved_tower_state(checkpoint_dir: str | Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tower as plain transformers reads it back from a checkpoint of any registered VLM family.

    Read in full: after a ZeRO-3 run transformers' DeepSpeed config is still registered, and
    from_pretrained would partition (size-0 tensors) what it reads.
    """
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from .families import family_of

    unset_hf_deepspeed_config()
    family = family_of(checkpoint_dir)
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = family.model_class.from_pretrained(checkpoint_dir, **kwargs)
    return {name: tensor.detach().clone() for name, tensor in _tower_tensors(family.towers(model)).items()}


def side_file_tower_state(tensors: dict[str, torch.Tensor], tower_path: str = TOWER_PREFIX.rstrip(".")) -> dict[str, torch.Tensor]:
    """The tower tensors of a LoRA run's non_lora_trainables (named `<tower path>.*`, LLaVA: model.vision_tower)."""
    prefix = tower_path + "."
    return {name.removeprefix(prefix): tensor for name, tensor in tensors.items() if name.startswith(prefix)}


def write_tower_check(report: dict[str, Any], out_dir: str | Path) -> Path:
    return atomic_write_text(Path(out_dir) / TOWER_CHECK_NAME, json.dumps(report, indent=2) + "\n")



# ---- verify VLM --encoder ENC: proof at the feature the VLM reads -------------------------------------

# Verdict thresholds. Two encoders initialised independently with the same shape sit at a relative weight
# distance ||A - B|| / ||B|| of about sqrt(2) (about 1 when their LayerNorm weights, ones, are shared: the
# issue's probe measured 1.24) and their features are uncorrelated; fine-tuning at LLaVA's tower learning
# rate (2e-6) moves a tower by ~1e-3..1e-2. "fine-tuned from ENC" therefore needs BOTH a relative weight
# change of at most FINE_TUNED_MAX_CHANGE (halfway to an unrelated encoder) AND a Pearson correlation of
# the projector's input with the encoder's feature of at least FINE_TUNED_MIN_CORRELATION, at every tower.
FINE_TUNED_MAX_CHANGE = 0.5
FINE_TUNED_MIN_CORRELATION = 0.5
VERDICTS = ("equal", "fine-tuned from ENC", "not ENC")


def _layer_group(name: str) -> str:
    parts = name.split(".")
    for index, part in enumerate(parts[:-1]):
        if part == "layers" and parts[index + 1].isdigit():
            return ".".join(parts[: index + 2])
    return parts[0] if len(parts) > 1 else name


def per_layer_change(reference: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> dict[str, float]:
    """||found - ref|| / ||ref|| per block (embeddings, encoder.layers.N, post_layernorm, ...)."""
    delta_sq: dict[str, float] = {}
    norm_sq: dict[str, float] = {}
    for name, ref in reference.items():
        group = _layer_group(name)
        delta_sq[group] = delta_sq.get(group, 0.0) + float((found[name].double() - ref.double()).pow(2).sum())
        norm_sq[group] = norm_sq.get(group, 0.0) + float(ref.double().pow(2).sum())
    return {group: (delta_sq[group] ** 0.5) / (norm_sq[group] ** 0.5) if norm_sq[group] else 0.0 for group in delta_sq}


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return next(v for k, v in kwargs.items() if isinstance(v, torch.Tensor) and k in ("pixel_values", "image_features",
                                                                                        "image_hidden_states", "hidden_states"))


def captured_features(model: torch.nn.Module, family: Any, probe: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{tower path: (the pixels the tower got, the tensor the projector got)} from the VLM's own feature calls."""
    projector = family.projector(model)
    towers = family.towers(model)
    results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for path, call in family.feature_calls(model, probe).items():
        seen: dict[str, torch.Tensor] = {}

        def keep(key: str):  # noqa: ANN202 - the first call's input only (a hook returning None changes nothing)
            def hook(_module, args, kwargs) -> None:  # noqa: ANN001
                seen.setdefault(key, _first_tensor(args, kwargs).detach().clone())
            return hook

        hooks = [towers[path].register_forward_pre_hook(keep("pixels"), with_kwargs=True),
                 projector.register_forward_pre_hook(keep("features"), with_kwargs=True)]
        try:
            with torch.no_grad():
                call()
        finally:
            for hook in hooks:
                hook.remove()
        results[path] = (seen["pixels"], seen["features"])
    return results


def feature_comparison(found: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    if found.shape != reference.shape:
        return {"features_bitwise_equal": False, "feature_shape": f"{list(found.shape)} vs {list(reference.shape)}",
                "feature_correlation": None}
    a, b = found.double().flatten(), reference.double().flatten()
    correlation = float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if a.numel() > 1 else float(torch.equal(a, b))
    return {
        "features_bitwise_equal": bitwise_equal(found, reference),
        "feature_max_abs_diff": float((a - b).abs().max()),
        "feature_relative_diff": float((a - b).norm() / b.norm()) if b.norm() else 0.0,
        "feature_correlation": correlation,
    }


def verify_vlm_tower(vlm_dir: str | Path, encoder: str | Path, expect_different: bool = False,
                     require_equal: bool = False) -> dict[str, Any]:
    """`reasonclip verify VLM_DIR --encoder ENC`: what the VLM's tower is, proven at the feature it reads.

    The VLM (any registered family, its own class) runs its own get_image_features (and Video-LLaVA's
    get_video_features) on probe inputs; a forward pre-hook on the projector captures its input, which is
    compared in fp32 with the standalone encoder's output at the family's rule on the same pixels. The
    tower's weights are compared with the encoder's (cast to the checkpoint's dtype). Verdict: `equal`
    (bitwise at every tower), `fine-tuned from ENC` (see FINE_TUNED_*), or `not ENC`; ok is False for
    `not ENC` unless `expect_different`, for NaN/inf in the tower, and for anything but `equal` with
    `require_equal`.
    """
    from ..encoder.tower import load_vision_config, load_vision_model
    from ..io_utils import check_model_files, short_key_report
    from .families import FeatureRule, family_of, map_encoder_to_tower

    load_vision_config(encoder)  # a missing / non-CLIP encoder is bad input (one line, exit 2)
    check_model_files(vlm_dir, "VLM")
    family = family_of(vlm_dir)
    # Strict about names (a missing tower tensor would be random), not about values: a NaN is reported below.
    model, info = family.model_class.from_pretrained(str(vlm_dir), output_loading_info=True)
    problems = {kind: info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)}
    if problems:
        raise ValueError(f"VLM {vlm_dir}: weights do not match {family.class_name}: {short_key_report(problems)}")
    model.eval()
    towers = family.towers(model)
    stored = {path: next(tower.parameters()).dtype for path, tower in towers.items()}
    report: dict[str, Any] = {"vlm": str(vlm_dir), "encoder": str(encoder), "architecture": family.name,
                              "class": family.class_name, "tower_paths": list(family.tower_paths)}
    encoder_model = load_vision_model(encoder).eval()
    encoder_weights = {n: t.detach().clone() for n, t in encoder_model.state_dict().items()}
    try:
        tower_map = map_encoder_to_tower(encoder_model, family, model.config, f"encoder {encoder}")
    except ValueError as error:
        verdict = "not ENC"
        failed = [] if expect_different else ["not_encoder"]
        return {**report, "verdict": verdict, "ok": not failed, "failed": failed, "tower_architecture": str(error)}

    found = _tower_tensors(towers)
    reference_state = {path: {n: t.to(stored[path]) for n, t in tower_map.state.items()} for path in towers}
    reference = (reference_state[family.tower_paths[0]] if len(towers) == 1 else
                 {f"{path}.{n}": t for path, state in reference_state.items() for n, t in state.items()})
    weights = compare_towers(reference, found)
    per_layer = per_layer_change(reference, found) if weights["same_tensors"] else {}

    # The standalone encoder, at the checkpoint's precision, run in fp32 on the pixels each tower got.
    model.float()
    depth, encoder_depth = model.config.vision_config.num_hidden_layers, tower_map.encoder_layers
    probe = family.probe_inputs(model.config)
    tower_reports = []
    for path, (pixels, features) in captured_features(model, family, probe).items():
        rule = family.feature_rule(model.config, path)
        encoder_rule = rule.absolute(depth)  # a shorter tower's hidden_states[-1] is the encoder's [-2]
        with torch.no_grad():
            encoder_model.load_state_dict({n: t.to(stored[path]).float() for n, t in encoder_weights.items()}, strict=True)
            expected = encoder_rule.apply(encoder_model.float()(pixels.float(), output_hidden_states=True))
        shown = encoder_rule if rule.layers is None else FeatureRule(
            tuple(a - encoder_depth - 1 if r < 0 else a for a, r in zip(encoder_rule.layers, rule.layers)), rule.drop_cls)
        tower_reports.append({"path": path, "feature_rule": rule.describe(), "encoder_feature": shown.describe(),
                              **feature_comparison(features, expected)})

    finite = weights["nonfinite_values"] == 0
    if finite and all(t["features_bitwise_equal"] for t in tower_reports) and weights["bitwise_equal"]:
        verdict = "equal"
    elif (finite and weights["same_tensors"] and weights["relative_change"] <= FINE_TUNED_MAX_CHANGE
          and all((t["feature_correlation"] or 0.0) >= FINE_TUNED_MIN_CORRELATION for t in tower_reports)):
        verdict = "fine-tuned from ENC"
    else:
        verdict = "not ENC"
    failed = [name for name, bad in (("finite", not finite),
                                     ("not_encoder", verdict == "not ENC" and not expect_different),
                                     ("bitwise_equal", require_equal and verdict != "equal")) if bad]
    return {**report, "verdict": verdict, "ok": not failed, "failed": failed, "towers": tower_reports,
            "dropped_from_encoder": tower_map.dropped, "encoder_layers": tower_map.encoder_layers,
            "tower_layers": tower_map.tower_layers, **weights, "per_layer_relative_change": per_layer,
            "thresholds": {"fine_tuned_max_relative_change": FINE_TUNED_MAX_CHANGE,
                           "fine_tuned_min_feature_correlation": FINE_TUNED_MIN_CORRELATION}}


verify_llava_tower = verify_vlm_tower  # the name of the LLaVA-only version
