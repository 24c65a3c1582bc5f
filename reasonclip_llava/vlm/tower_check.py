"""The tower after training is the tower that was trained.

ReasonCLIP's authors found merged LLaVA checkpoints holding a stale or NaN vision tower (their evaluation
reloads the tower from the encoder instead). Here every save is checked instead: after a full, LoRA or
ZeRO-3 run (`train_llava`) and after `llava-merge`, the tower read back from what was written must equal,
bitwise, the tower that was in memory when training ended, and hold no NaN/inf. `reasonclip verify
--encoder` compares a LLaVA checkpoint's tower against an encoder: bitwise, or by how much it moved.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from ..encoder.tower import load_vision_config, load_vision_model
from ..io_utils import atomic_write_text

TOWER_CHECK_NAME = "reasonclip_tower_check.json"
TOWER_PREFIX = "model.vision_tower."


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The LLaVA model inside a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def vision_tower_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the vision tower's tensors, named as in the tower (`vision_model.*`).

    Under ZeRO-3 the parameters are partitioned; they are gathered first (a collective: call on every rank).
    """
    tower = unwrap(model).model.vision_tower
    partitioned = [p for p in tower.parameters() if hasattr(p, "ds_id")]
    gather = nullcontext()
    if partitioned:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)
    with gather:
        return {name: tensor.detach().cpu().clone() for name, tensor in tower.state_dict().items()}


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
    """The tower as plain transformers reads it back from a LLaVA checkpoint of either architecture.

    Read in full: after a ZeRO-3 run transformers' DeepSpeed config is still registered, and
    from_pretrained would partition (size-0 tensors) what it reads.
    """
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from .architectures import architecture_of

    unset_hf_deepspeed_config()
    architecture = architecture_of(checkpoint_dir)
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = architecture.model_class.from_pretrained(checkpoint_dir, **kwargs)
    return {name: tensor.detach().clone() for name, tensor in model.model.vision_tower.state_dict().items()}


def side_file_tower_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tower tensors of a LoRA run's non_lora_trainables (named `model.vision_tower.*`)."""
    return {name.removeprefix(TOWER_PREFIX): tensor for name, tensor in tensors.items() if name.startswith(TOWER_PREFIX)}


def write_tower_check(report: dict[str, Any], out_dir: str | Path) -> Path:
    return atomic_write_text(Path(out_dir) / TOWER_CHECK_NAME, json.dumps(report, indent=2) + "\n")


def verify_llava_tower(llava_dir: str | Path, encoder: str | Path, require_equal: bool = False) -> dict[str, Any]:
    """`reasonclip verify LLAVA_DIR --encoder ENC`: the LLaVA checkpoint's tower against an encoder.

    ok = same architecture and tensors, no NaN/inf (and bitwise equal when `require_equal`). The report says
    whether the tower is bitwise the encoder's (cast to the checkpoint's dtype), else how far it moved
    (max |diff|, ||diff|| / ||encoder||).
    """
    from .architectures import architecture_of
    from .swap import architecture_mismatch

    architecture = architecture_of(llava_dir)
    llava_config = architecture.config_class.from_pretrained(llava_dir)
    mismatch = architecture_mismatch(load_vision_config(encoder), llava_config.vision_config)
    report: dict[str, Any] = {"llava": str(llava_dir), "encoder": str(encoder), "architecture": architecture.name}
    if mismatch:
        return {**report, "ok": False, "failed": ["tower_architecture_equal"], "tower_architecture": mismatch}
    found = saved_tower_state(llava_dir)  # in the checkpoint's own dtype
    # The encoder in the checkpoint's dtype: a frozen tower stored in bf16 is then bitwise the encoder's.
    reference = {name: tensor.to(found[name].dtype) if name in found else tensor
                 for name, tensor in load_vision_model(encoder).state_dict().items()}
    comparison = compare_towers(reference, found)
    failed = [name for name, bad in (("same_tensors", not comparison["same_tensors"]),
                                     ("finite", comparison["nonfinite_values"] > 0),
                                     ("bitwise_equal", require_equal and not comparison["bitwise_equal"])) if bad]
    return {**report, "ok": not failed, "failed": failed, **comparison}
