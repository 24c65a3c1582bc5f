"""open_clip's own model classes, imported from the installed open-clip-torch wheel without `import open_clip`.

Why this way: `open_clip/__init__.py` imports factory -> transform -> torchvision, and torchvision's
PyPI wheels do not run with the CPU torch build this project pins (CI installs open-clip-torch with
--no-deps and has no torchvision at all). The model classes themselves (open_clip/model.py,
transformer.py) need only torch, its tokenizer (tokenizer.py) ftfy and regex. So the package folder is
mounted under another package name whose `__init__` is empty (`reasonclip_llava.assets.open_clip_module`,
which the converter uses for open_clip's pretrained table): the modules are open_clip's unmodified files
with their relative imports resolved inside the same folder, and open_clip/__init__.py never runs.

One stub, only while open_clip/utils.py executes its imports: utils.py does
`from torchvision.ops.misc import FrozenBatchNorm2d` at module level for `freeze_batch_norm_2d`, which
only the ResNet / timm towers' `lock(freeze_bn_stats=True)` calls; the ViT CLIP never does, and the stub
raises if anything ever constructs it. The stub is removed from sys.modules before anything else is
imported, so transformers' torchvision checks never see it.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import types
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from reasonclip_llava.assets import open_clip_module, open_clip_package_dir


class _FrozenBatchNorm2dStub:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision's FrozenBatchNorm2d is stubbed: only ResNet/timm towers use it")


@lru_cache(maxsize=1)
def open_clip_model_module() -> types.ModuleType:
    """open_clip/model.py (CLIP, CLIPVisionCfg, ...) loaded without open_clip/__init__.py."""
    import transformers.modeling_outputs  # noqa: F401  (imported before the stub window: hf_model.py uses it)

    stubs = {}
    if "torchvision" not in sys.modules:
        for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc"):
            stubs[name] = sys.modules[name] = types.ModuleType(name)
        stubs["torchvision.ops.misc"].FrozenBatchNorm2d = _FrozenBatchNorm2dStub
    try:
        open_clip_module("utils")
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return open_clip_module("model")


def open_clip_tokenizer(context_length: int = 77):
    """open_clip's own SimpleTokenizer (open_clip/tokenizer.py, unmodified), as open_clip.get_tokenizer gives it
    for every CLIP text tower (clean='lower', truncation with EOT last)."""
    return open_clip_module("tokenizer").SimpleTokenizer(context_length=context_length)


def model_config(name: str) -> dict:
    """open_clip's model config JSON for `name`, as shipped in the wheel."""
    return json.loads((open_clip_package_dir() / "model_configs" / f"{name}.json").read_text())


def shrink(config: dict, image_size: int | None = None) -> dict:
    """The same family at tiny width: patch size, image size, activation and text length kept."""
    config = copy.deepcopy(config)
    config["embed_dim"] = 24
    config["vision_cfg"].update(width=64, layers=2, head_width=32)
    config["text_cfg"].update(width=32, heads=2, layers=2)
    if image_size:
        config["vision_cfg"]["image_size"] = image_size
    return config


def build_open_clip(config: dict, seed: int = 0, device: str | None = None) -> torch.nn.Module:
    """open_clip's CLIP for a model config, every weight random (LayerNorms and logit scale included)."""
    model_module = open_clip_model_module()
    kwargs = {k: v for k, v in config.items() if k not in ("preprocess_cfg", "custom_text")}
    if device == "meta":
        with torch.device("meta"):
            return model_module.CLIP(**kwargs)
    torch.manual_seed(seed)
    model = model_module.CLIP(**kwargs).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # open_clip leaves LayerNorms at 1/0 and some tensors at zero
            parameter.add_(torch.randn_like(parameter) * 0.05)
        model.logit_scale.fill_(2.3)
    return model


OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # open_clip/constants.py
TORCHVISION = importlib.util.find_spec("torchvision") is not None


def open_clip_eval_transform(image: Image.Image, size: int, mean=OPENAI_MEAN, std=OPENAI_STD, resize_mode: str = "shortest",
                             resample: int = 3) -> np.ndarray:
    """open_clip's eval transform (open_clip/transform.py: Resize -> CenterCrop -> convert("RGB") -> ToTensor ->
    Normalize). open_clip's own when torchvision imports; else restated from torchvision's documented rules:
    Resize(size) on a PIL image = Pillow resize (in the image's own mode) of the shorter edge to `size`, the longer
    to int(size * long / short); CenterCrop offset = int(round((side - crop) / 2.0)); squash = Resize((size, size))."""
    if TORCHVISION:
        interpolation = {3: "bicubic", 2: "bilinear"}[resample]
        transform = open_clip_module("transform").image_transform(size, is_train=False, mean=mean, std=std,
                                                                  resize_mode=resize_mode, interpolation=interpolation)
        return transform(image).numpy()
    if resize_mode == "shortest":
        width, height = image.size
        new = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
        image = image.resize(new, resample)
        left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    else:
        image = image.resize((size, size), resample)
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return ((array - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)).transpose(2, 0, 1)
