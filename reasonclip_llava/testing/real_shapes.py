"""The published backbones' configs at their real shape, for meta-device checks (nothing is downloaded).

`real_shape_config(name)` returns the CLIPConfig / SiglipConfig of a Hub id the recipes name; build the
model under `torch.device("meta")` to get every parameter name and shape without memory or weights:

    with torch.device("meta"):
        model = real_shape_model("google/siglip2-giant-opt-patch16-384")

Shapes: the Hub configs of openai/clip-vit-base-patch32, openai/clip-vit-large-patch14(-336),
google/siglip-so400m-patch14-384, google/siglip2-so400m-patch14-384 and google/siglip2-giant-opt-patch16-384
(SigLIP 2 giant-opt: a 1536-wide, 40-layer image tower with the so400m-shaped text tower projected to 1536).
"""

from __future__ import annotations

from transformers import CLIPConfig, CLIPModel, PreTrainedModel, SiglipConfig, SiglipModel

_CLIP_TEXT = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
_SIGLIP_IDS = dict(pad_token_id=1, eos_token_id=1, bos_token_id=2)  # within every SigLIP vocabulary

REAL_SHAPES: dict[str, tuple[type, dict, dict, dict]] = {
    # name: (config class, text config, vision config, top-level keys)
    "openai/clip-vit-base-patch32": (
        CLIPConfig, dict(_CLIP_TEXT, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=32),
        dict(projection_dim=512)),
    "openai/clip-vit-large-patch14": (
        CLIPConfig, dict(_CLIP_TEXT, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224, patch_size=14),
        dict(projection_dim=768)),
    "openai/clip-vit-large-patch14-336": (
        CLIPConfig, dict(_CLIP_TEXT, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14),
        dict(projection_dim=768)),
    "google/siglip-so400m-patch14-384": (
        SiglipConfig, dict(_SO400M, **_SIGLIP_IDS, vocab_size=32000, max_position_embeddings=64),
        dict(_SO400M, image_size=384, patch_size=14), {}),
    "google/siglip2-so400m-patch14-384": (
        SiglipConfig, dict(_SO400M, **_SIGLIP_IDS, vocab_size=256000, max_position_embeddings=64),
        dict(_SO400M, image_size=384, patch_size=14), {}),
    "google/siglip2-giant-opt-patch16-384": (
        SiglipConfig, dict(_SO400M, **_SIGLIP_IDS, vocab_size=256000, max_position_embeddings=64, projection_size=1536),
        dict(hidden_size=1536, intermediate_size=6144, num_hidden_layers=40, num_attention_heads=16, image_size=384, patch_size=16), {}),
}


def real_shape_config(name: str) -> CLIPConfig | SiglipConfig:
    """The config of a published backbone by its Hub id (a one-line error names the ids known here)."""
    if name not in REAL_SHAPES:
        raise ValueError(f"no real-shape config for {name!r}; known: {sorted(REAL_SHAPES)}")
    config_class, text, vision, top = REAL_SHAPES[name]
    return config_class(text_config=text, vision_config=vision, **top)


def real_shape_model(name: str) -> PreTrainedModel:
    """CLIPModel / SiglipModel of that shape (build it under torch.device("meta") to allocate nothing)."""
    config = real_shape_config(name)
    return (CLIPModel if isinstance(config, CLIPConfig) else SiglipModel)(config)
