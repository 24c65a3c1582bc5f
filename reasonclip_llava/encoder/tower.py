"""The LLaVA vision-tower interface over a ReasonCLIP (or any CLIP/SigLIP) checkpoint.

Behaves like LLaVA's `CLIPVisionTower` (same constructor, `load_model`, `feature_select`, properties),
with the two fixes LLaVA-NeXT users need: no blanket `torch.no_grad()` (an unfrozen tower trains) and
an `image_size` property (anyres needs it). SigLIP towers have no CLS token, so 'patch' keeps every token.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, CLIPVisionModel, PretrainedConfig, PreTrainedModel, SiglipVisionModel

from ..io_utils import load_pretrained_strict, require_existing
from .modeling import SUPPORTED_MODEL_TYPES, training_only_keys
from .open_clip_image_processor import load_image_processor

SELECT_FEATURES = ("patch", "cls_patch")
# vision sub-config model_type -> (vision model class, has a CLS token)
VISION_MODELS: dict[str, tuple[type, bool]] = {
    "clip_vision_model": (CLIPVisionModel, True),
    "siglip_vision_model": (SiglipVisionModel, False),
}
# What a dual-encoder checkpoint holds beside its vision model: the text half, the projections, the
# temperature (and a released stage-2 checkpoint's heads). Any other leftover is a vision tensor the config
# has no place for (e.g. layers cut from num_hidden_layers) and makes the load fail.
DUAL_ENCODER_EXTRAS = ("text_model.", "text_projection.", "visual_projection.", "logit_scale", "logit_bias")


def dual_encoder_extras(unexpected: list[str]) -> list[str]:
    """The unexpected keys of a vision-model load that belong to the rest of a dual encoder."""
    extras = [key for key in unexpected if key.startswith(DUAL_ENCODER_EXTRAS)]
    return extras + training_only_keys(unexpected)


def load_vision_config(name_or_path: str | Path) -> PretrainedConfig:
    """The vision sub-config of a CLIP/SigLIP checkpoint (dual encoder or vision-only)."""
    require_existing(name_or_path, "encoder")
    try:
        config = AutoConfig.from_pretrained(str(name_or_path))
    except OSError as error:
        raise FileNotFoundError(f"cannot read a model config from '{name_or_path}': {error}") from None
    if config.model_type not in set(SUPPORTED_MODEL_TYPES) | set(VISION_MODELS):
        raise ValueError(
            f"'{name_or_path}': vision model_type '{config.model_type}' is not supported; a vision tower needs a CLIP / SigLIP "
            f"checkpoint (model_type {sorted(set(SUPPORTED_MODEL_TYPES) | set(VISION_MODELS))})"
        )
    vision_config = getattr(config, "vision_config", config)
    expected = SUPPORTED_MODEL_TYPES.get(config.model_type, (None, None))[1]
    if expected is not None and getattr(vision_config, "model_type", None) != expected:
        raise ValueError(f"'{name_or_path}': config.json is a '{config.model_type}' checkpoint but its vision_config is "
                         f"'{getattr(vision_config, 'model_type', None)}', not '{expected}'")
    if getattr(vision_config, "model_type", None) not in VISION_MODELS:
        raise ValueError(
            f"'{name_or_path}': vision model_type '{vision_config.model_type}' is not supported; a vision tower needs one of {sorted(VISION_MODELS)}"
        )
    return vision_config


def load_vision_model(name_or_path: str | Path, device_map: str | dict | None = None, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """The vision half of a CLIP/SigLIP checkpoint, strictly: every vision weight present and used, all finite.

    The text half of a dual-encoder checkpoint is an expected leftover (DUAL_ENCODER_EXTRAS); a missing,
    mismatched or unexpected *vision* weight (a config that drops layers) is an error naming the checkpoint.
    """
    model_class, _ = VISION_MODELS[load_vision_config(name_or_path).model_type]
    return load_pretrained_strict(model_class, name_or_path, "encoder (vision weights)", tolerated=dual_encoder_extras,
                                  device_map=device_map, dtype=dtype)


class ReasonCLIPVisionTower(nn.Module):
    """LLaVA vision tower: `ReasonCLIPVisionTower(name, args, delay_load=False)`.

    `args` is LLaVA's model/config namespace; it provides `mm_vision_select_layer` (default -2),
    `mm_vision_select_feature` ('patch' or 'cls_patch'), `unfreeze_mm_vision_tower` and LLaVA-NeXT's
    `mm_tunable_parts`.
    """

    def __init__(self, vision_tower: str | Path, args: Any = None, delay_load: bool = False):
        super().__init__()
        args = args if args is not None else SimpleNamespace()
        self.is_loaded = False
        self.vision_tower_name = str(vision_tower)
        self.select_layer = int(getattr(args, "mm_vision_select_layer", -2))
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if self.select_feature not in SELECT_FEATURES:
            raise ValueError(f"mm_vision_select_feature must be one of {SELECT_FEATURES}, got '{self.select_feature}'")
        self.cfg_only = load_vision_config(self.vision_tower_name)
        self._model_class, self.has_cls_token = VISION_MODELS[self.cfg_only.model_type]
        if not self.has_cls_token and self.select_feature == "cls_patch":
            raise ValueError(f"'{self.vision_tower_name}' is a SigLIP tower without a CLS token: use mm_vision_select_feature='patch'")
        # LLaVA-NeXT's towers load at once, delay_load or not, when the checkpoint holds trained tower weights
        # (unfreeze_mm_vision_tower, or mm_tunable_parts naming mm_vision_tower): the modules must exist
        # before its from_pretrained fills them, or the trained tower is dropped and the encoder's reloaded.
        tower_trained = getattr(args, "unfreeze_mm_vision_tower", False) or "mm_vision_tower" in (getattr(args, "mm_tunable_parts", None) or "")
        if not delay_load or tower_trained:
            self.load_model()

    def load_model(self, device_map: str | dict | None = None) -> None:
        if self.is_loaded:
            return
        self.image_processor = load_image_processor(self.vision_tower_name)
        self.vision_tower = load_vision_model(self.vision_tower_name, device_map=device_map)
        # Frozen by default as in LLaVA; a trainer unfreezes it with requires_grad_(True).
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def load_empty(self, device: str | torch.device = "meta") -> None:
        """Instantiate the architecture without weights (meta device): shapes, counts and FLOPs for free."""
        with torch.device(device):
            self.vision_tower = self._model_class(self.cfg_only)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def feature_select(self, image_forward_outs: Any) -> torch.Tensor:
        features = image_forward_outs.hidden_states[self.select_layer]
        if self.select_feature == "patch" and self.has_cls_token:
            features = features[:, 1:]
        return features

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        # No torch.no_grad(): when the tower is frozen autograd records nothing anyway, and when it is
        # unfrozen (LLaVA-NeXT's mm_vision_tower_lr) gradients must reach it.
        if isinstance(images, list):
            return [self._encode(image.unsqueeze(0)) for image in images]
        return self._encode(images)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.vision_tower(images.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return self.feature_select(outputs).to(images.dtype)

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device

    @property
    def config(self) -> PretrainedConfig:
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2
