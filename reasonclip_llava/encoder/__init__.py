"""ReasonCLIP encoder classes: the training-time model, export, verification and the LLaVA tower."""

from .convert_open_clip import convert_open_clip
from .export import export_encoder
from .modeling import CATEGORIES, HeadsConfig, ReasonCLIPForPretraining, TrainingInfo
from .tower import ReasonCLIPVisionTower, load_vision_config
from .verify import verify_export

__all__ = [
    "CATEGORIES",
    "HeadsConfig",
    "ReasonCLIPForPretraining",
    "ReasonCLIPVisionTower",
    "TrainingInfo",
    "convert_open_clip",
    "export_encoder",
    "load_vision_config",
    "verify_export",
]
