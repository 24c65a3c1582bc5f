"""Make original LLaVA (the `llava` package) accept ReasonCLIP checkpoints as `mm_vision_tower`.

LLaVA's `build_vision_tower` accepts a name only if it is an existing path, starts with 'openai' or
'laion', or contains 'ShareGPT4V'; a Hub id such as 'org/ReasonCLIP-L14-336' raises 'Unknown vision
tower'. An exported CLIP checkpoint given as a local path already works unchanged. `register_with_llava()`
adds one rule in front of LLaVA's: ReasonCLIP names (anything containing 'reasonclip', names registered
here, local SigLIP exports which LLaVA's CLIP-only tower cannot read) build a `ReasonCLIPVisionTower`;
everything else goes to LLaVA's own builder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .tower import ReasonCLIPVisionTower, load_vision_config

# alias -> Hub id or local path, filled by register_with_llava(aliases=...)
REGISTERED_TOWERS: dict[str, str] = {}
_original_builder: Callable[..., Any] | None = None


def is_reasonclip_tower(name: str) -> bool:
    """The one decision point: does this tower name belong to us rather than to LLaVA's own rule?"""
    if name in REGISTERED_TOWERS or "reasonclip" in name.lower():
        return True
    if os.path.isdir(name):
        # LLaVA's tower reads CLIP only; a local SigLIP export must come to us.
        return load_vision_config(name).model_type != "clip_vision_model"
    return False


def build_vision_tower(vision_tower_cfg: Any, **kwargs: Any) -> Any:
    """Drop-in replacement for `llava.model.multimodal_encoder.builder.build_vision_tower`."""
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if name is not None and is_reasonclip_tower(str(name)):
        return ReasonCLIPVisionTower(REGISTERED_TOWERS.get(str(name), str(name)), args=vision_tower_cfg, **kwargs)
    if _original_builder is None:
        raise RuntimeError("register_with_llava() has not been called")
    return _original_builder(vision_tower_cfg, **kwargs)


def register_with_llava(aliases: dict[str, str | Path] | None = None) -> None:
    """Patch original LLaVA's tower builder (idempotent). `aliases` maps extra names to ids or paths."""
    global _original_builder
    try:
        from llava.model import llava_arch
        from llava.model.multimodal_encoder import builder
    except ImportError as error:
        raise ImportError("original LLaVA is not installed (pip install --no-deps llava-torch)") from error
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
