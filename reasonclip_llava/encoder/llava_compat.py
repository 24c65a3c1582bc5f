"""Make LLaVA's own code base (the `llava` package: original LLaVA or LLaVA-NeXT) accept ReasonCLIP towers.

LLaVA's `build_vision_tower` accepts a name only if it is an existing path, starts with 'openai' or
'laion', or contains 'ShareGPT4V' (all -> its CLIP tower); LLaVA-NeXT adds names containing 'siglip'
(not a local path: that rule comes first) -> its `SigLipVisionTower`. So a Hub id such as
'org/ReasonCLIP-L14-336' raises 'Unknown vision tower', and a local SigLIP export goes to the CLIP tower
and fails with a size mismatch. LLaVA-NeXT's `SigLipVisionTower` is no way out: under transformers 5 it
fails to load anything (`_set_token_in_kwargs`, then an IndexError on position ids), it reports
So400M/14-384's sizes whatever it loads, and it asserts 729 tokens. What it computes is a plain SigLIP
forward with the last encoder layer and the head deleted, read at the new last layer, i.e. the full
model's `hidden_states[-2]` with every token: `ReasonCLIPVisionTower` with `mm_vision_select_layer=-2`
gives the same features bitwise (bench/llava_next_siglip_parity.py runs LLaVA-NeXT's class against it).
An exported CLIP checkpoint given as a local path already works with LLaVA's own CLIP tower.

`register_with_llava()` adds one rule in front of LLaVA's, decided in `tower_route(name)`: a ReasonCLIP
name (containing 'reasonclip' / 'reasonsiglip', or a registered alias) or a local SigLIP export (any
size) -> `ReasonCLIPVisionTower`; everything else (a local CLIP export included) -> LLaVA's own builder.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable

import transformers

from .tower import ReasonCLIPVisionTower, load_vision_config

# alias -> Hub id or local path, filled by register_with_llava(aliases=...)
REGISTERED_TOWERS: dict[str, str] = {}
OUR_NAME_MARKERS = ("reasonclip", "reasonsiglip")
# The modules register_with_llava patches (llava_arch imported build_vision_tower by name).
LLAVA_BUILDER_MODULES = ("llava.model.multimodal_encoder.builder", "llava.model.llava_arch")
_original_builder: Callable[..., Any] | None = None


def tower_route(name: str) -> str | None:
    """The one decision point: 'reasonclip' (our tower) or None (LLaVA's own rule).

    Ours: a ReasonCLIP name or alias (CLIP or SigLIP), or a local SigLIP export of any size. A local CLIP
    export that is not named ours stays with LLaVA's CLIP tower, which takes it unchanged, and a local folder
    that is no CLIP / SigLIP checkpoint stays with LLaVA's rule.
    """
    if name in REGISTERED_TOWERS or any(marker in name.lower() for marker in OUR_NAME_MARKERS):
        return "reasonclip"
    if not os.path.isdir(name):
        return None
    try:
        model_type = load_vision_config(name).model_type
    except (ValueError, FileNotFoundError):  # not a CLIP / SigLIP checkpoint: LLaVA's rule decides, as unregistered
        return None
    return "reasonclip" if model_type == "siglip_vision_model" else None


def is_reasonclip_tower(name: str) -> bool:
    """Does this tower name belong to us rather than to LLaVA's own rule?"""
    return tower_route(name) is not None


def build_vision_tower(vision_tower_cfg: Any, **kwargs: Any) -> Any:
    """Drop-in replacement for `llava.model.multimodal_encoder.builder.build_vision_tower`."""
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if name is not None and tower_route(str(name)) == "reasonclip":
        return ReasonCLIPVisionTower(REGISTERED_TOWERS.get(str(name), str(name)), args=vision_tower_cfg, **kwargs)
    if _original_builder is None:
        raise RuntimeError("register_with_llava() has not been called")
    return _original_builder(vision_tower_cfg, **kwargs)


def _innermost_llava_module(error: BaseException) -> str:
    """The deepest `llava` module on the error's traceback: where the failing import statement is."""
    module, frame = "llava", error.__traceback__
    while frame is not None:
        name = frame.tb_frame.f_globals.get("__name__", "")
        if name == "llava" or name.startswith("llava."):
            module = name
        frame = frame.tb_next
    return module


def _import_skipping_package_inits(target: str) -> None:
    """Import `target` with the `__init__` of every package above it left unexecuted.

    LLaVA-NeXT's `llava/model/__init__.py` catches each language model's import error, prints it and goes
    on, so `import llava` then fails on a name that is merely absent ('LlavaLlamaForCausalLM'); importing the
    builder modules past those `__init__`s raises the error that was swallowed.
    """
    parts = target.split(".")
    for depth in range(1, len(parts)):
        package = ".".join(parts[:depth])
        if package not in sys.modules:
            spec = importlib.util.find_spec(package)
            if spec is None or spec.submodule_search_locations is None:
                return
            sys.modules[package] = importlib.util.module_from_spec(spec)  # __path__ set, body not run
    importlib.import_module(target)


def llava_import_error(error: ImportError) -> str:
    """One line naming why `import llava` failed: 'not installed', or the failing module and its error."""
    if isinstance(error, ModuleNotFoundError) and error.name == "llava":
        return "LLaVA is not installed (pip install --no-deps llava-torch, or LLaVA-NeXT's repo)"
    cause: BaseException = error
    saved = {name: module for name, module in sys.modules.items() if name == "llava" or name.startswith("llava.")}
    try:
        for name in saved:
            del sys.modules[name]
        for target in LLAVA_BUILDER_MODULES:
            _import_skipping_package_inits(target)
    except Exception as swallowed:  # any error here is the one to name
        cause = swallowed
    finally:  # leave sys.modules as the failed import left it
        for name in [name for name in sys.modules if name == "llava" or name.startswith("llava.")]:
            del sys.modules[name]
        sys.modules.update(saved)
    message = " ".join(str(cause).split())
    return (f"LLaVA's `llava` package is installed but does not import (transformers {transformers.__version__}): "
            f"{_innermost_llava_module(cause)}: {type(cause).__name__}: {message}")


def register_with_llava(aliases: dict[str, str | Path] | None = None) -> None:
    """Patch the installed LLaVA / LLaVA-NeXT tower builder (idempotent). `aliases` maps extra names to ids or paths."""
    global _original_builder
    try:
        from llava.model import llava_arch
        from llava.model.multimodal_encoder import builder
    except ImportError as error:
        raise ImportError(llava_import_error(error)) from error
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
