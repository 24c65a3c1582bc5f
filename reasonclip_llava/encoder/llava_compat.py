"""Make LLaVA's own code base (the `llava` package: original LLaVA or LLaVA-NeXT) accept ReasonCLIP towers.

LLaVA's `build_vision_tower` accepts a name only if it is an existing path, starts with 'openai' or
'laion', or contains 'ShareGPT4V' (all -> its CLIP tower); LLaVA-NeXT adds names containing 'siglip'
(not a local path: that rule comes first) -> its `SigLipVisionTower`, which is hard-wired to
So400M/14-384 (config defaults, 729 tokens asserted). So a Hub id such as 'org/ReasonCLIP-L14-336'
raises 'Unknown vision tower', and a local SigLIP export goes to the CLIP tower and fails with a size
mismatch. An exported CLIP checkpoint given as a local path already works unchanged.

`register_with_llava()` adds one rule in front of LLaVA's, decided in `tower_route(name)`:
  * ReasonCLIP names (containing 'reasonclip' / 'reasonsiglip', or registered aliases) and local SigLIP
    exports are ours;
  * ours + SigLIP + the installed `llava` has a SigLIP tower class whose fixed size fits -> that class;
  * ours otherwise -> `ReasonCLIPVisionTower` (any CLIP/SigLIP size; a SigLIP that LLaVA-NeXT's class
    cannot take gets one warning line saying so instead of a size-mismatch traceback);
  * everything else -> LLaVA's own builder, unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from transformers import PretrainedConfig

from .tower import ReasonCLIPVisionTower, load_vision_config

logger = logging.getLogger(__name__)

# alias -> Hub id or local path, filled by register_with_llava(aliases=...)
REGISTERED_TOWERS: dict[str, str] = {}
OUR_NAME_MARKERS = ("reasonclip", "reasonsiglip")
# What LLaVA-NeXT's SigLipVisionTower takes from its config defaults rather than from the checkpoint.
LLAVA_SIGLIP_FIXED_FIELDS = ("hidden_size", "image_size", "patch_size")
_original_builder: Callable[..., Any] | None = None


def llava_siglip_tower() -> tuple[type, PretrainedConfig] | None:
    """(LLaVA-NeXT's SigLipVisionTower, its hard-wired config) if the installed `llava` has them, else None."""
    try:
        from llava.model.multimodal_encoder.siglip_encoder import SigLipVisionConfig, SigLipVisionTower
    except ImportError:  # original LLaVA (llava-torch) has a CLIP tower only
        return None
    return SigLipVisionTower, SigLipVisionConfig()


def siglip_size_mismatch(config: PretrainedConfig, fixed: PretrainedConfig) -> str | None:
    """Why LLaVA-NeXT's SigLIP class cannot take this SigLIP ('hidden_size 32 vs 1152, ...'), or None."""
    differences = [f"{field} {getattr(config, field)} vs {getattr(fixed, field)}" for field in LLAVA_SIGLIP_FIXED_FIELDS
                   if getattr(config, field) != getattr(fixed, field)]
    return ", ".join(differences) or None


def tower_route(name: str) -> str | None:
    """The one decision point: 'llava_siglip' (LLaVA-NeXT's SigLIP class), 'reasonclip' (our tower) or
    None (LLaVA's own rule)."""
    ours = name in REGISTERED_TOWERS or any(marker in name.lower() for marker in OUR_NAME_MARKERS)
    if not ours and not os.path.isdir(name):
        return None
    config = load_vision_config(REGISTERED_TOWERS.get(name, name))
    if config.model_type == "clip_vision_model":
        return "reasonclip" if ours else None  # a local CLIP export works with LLaVA's own CLIP tower
    siglip = llava_siglip_tower()
    if siglip is None:
        return "reasonclip"
    _, fixed = siglip
    mismatch = siglip_size_mismatch(config, fixed)
    if mismatch is None:
        return "llava_siglip"
    tokens = (fixed.image_size // fixed.patch_size) ** 2
    logger.warning(
        "%s: LLaVA-NeXT's SigLipVisionTower is hard-wired to So400M/%d-%d (%d tokens) and cannot take this SigLIP "
        "(%s); using ReasonCLIPVisionTower", name, fixed.patch_size, fixed.image_size, tokens, mismatch,
    )
    return "reasonclip"


def is_reasonclip_tower(name: str) -> bool:
    """Does this tower name belong to us rather than to LLaVA's own rule?"""
    return tower_route(name) is not None


def build_vision_tower(vision_tower_cfg: Any, **kwargs: Any) -> Any:
    """Drop-in replacement for `llava.model.multimodal_encoder.builder.build_vision_tower`."""
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    route = tower_route(str(name)) if name is not None else None
    target = REGISTERED_TOWERS.get(str(name), str(name))
    if route == "llava_siglip":
        tower_class, _ = llava_siglip_tower()
        return tower_class(target, vision_tower_cfg=vision_tower_cfg, **kwargs)  # LLaVA-NeXT's signature
    if route == "reasonclip":
        return ReasonCLIPVisionTower(target, args=vision_tower_cfg, **kwargs)
    if _original_builder is None:
        raise RuntimeError("register_with_llava() has not been called")
    return _original_builder(vision_tower_cfg, **kwargs)


def register_with_llava(aliases: dict[str, str | Path] | None = None) -> None:
    """Patch the installed LLaVA / LLaVA-NeXT tower builder (idempotent). `aliases` maps extra names to ids or paths."""
    global _original_builder
    try:
        from llava.model import llava_arch
        from llava.model.multimodal_encoder import builder
    except ImportError as error:
        raise ImportError("LLaVA is not installed (pip install --no-deps llava-torch, or LLaVA-NeXT's repo)") from error
    REGISTERED_TOWERS.update({alias: str(target) for alias, target in (aliases or {}).items()})
    if _original_builder is None:
        _original_builder = builder.build_vision_tower
    # llava_arch imported the function by name, so both references are replaced.
    builder.build_vision_tower = build_vision_tower
    llava_arch.build_vision_tower = build_vision_tower


def unregister_from_llava() -> None:
    """Undo `register_with_llava` (LLaVA's own builder back in place, aliases forgotten)."""
    global _original_builder
    if _original_builder is None:
        return
    from llava.model import llava_arch
    from llava.model.multimodal_encoder import builder

    builder.build_vision_tower = llava_arch.build_vision_tower = _original_builder
    _original_builder = None
    REGISTERED_TOWERS.clear()
