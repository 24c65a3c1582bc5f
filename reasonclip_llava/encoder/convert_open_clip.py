"""open_clip checkpoint -> plain Hugging Face `CLIPModel` + `CLIPImageProcessor` + CLIP BPE tokenizer.

Compositional CLIPs (NegCLIP, FSC-CLIP, DAC, CE-CLIP, TripletCLIP) ship open_clip state dicts for an
open_clip model name such as `ViT-B-32`. The architecture is read from open_clip's own model config
(the JSON files in the installed open-clip-torch wheel, read as files: importing open_clip pulls
torchvision), the weights are renamed tensor by tensor, and the result is the CLIP every stage, READ,
export, verify and LLaVA take. Only what maps exactly onto transformers' CLIP is accepted: a
standard ViT image tower and open_clip's own causal text tower; anything else is refused in one line.

    convert_open_clip("negclip.pth", "ViT-B-32-quickgelu", "encoders/negclip")
    convert_open_clip("clip.pt", "ViT-L-14-336/openai", "encoders/clip-l-336")   # NAME/TAG (or NAME:TAG)

The activation, in order of authority: a model config file's `quick_gelu`; an open_clip pretrained tag
(`NAME/TAG`: open_clip's own pretrained table, read from the wheel, says how those weights were trained:
`ViT-B-32/openai` is QuickGELU); the name (`-quickgelu` names set `quick_gelu: true`). The choice and its
reason are printed. Converting under the wrong activation still loads and runs, only with other
embeddings (the QuickGELU trap), so it is refused wherever something records how the weights were
trained: an `open_clip_config.json` beside the checkpoint (the Hub layout) that disagrees with the name,
and, when `import open_clip` works, one forward of open_clip's own CLIP on the checkpoint compared with
the converted model. A bare state dict records nothing; then the print says so.

What the converted model is fed is open_clip's too: the processor config is a plain `CLIPImageProcessor`
marked `reasonclip_preprocess: open_clip`, which the project's loader turns into `OpenCLIPImageProcessor`
(open_clip_image_processor.py: torchvision's crop rounding, Pillow resampling in the image's own mode), and `reasonclip_text_rule: open_clip` in config.json makes every project
tokenization use open_clip's text preparation (encoder/text.py).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPConfig, CLIPModel

from .. import __version__
from ..assets import clip_tokenizer, open_clip_module, open_clip_package_dir
from ..io_utils import atomic_directory, check_safetensors, torch_load_weights_only
from .open_clip_image_processor import OpenCLIPImageProcessorPil
from .text import OPEN_CLIP, TEXT_RULE_KEY, TextRule, tokenize

# Tested name by name (tiny-width parity with open_clip's forward, real-size shapes on the meta device);
# any other open_clip config that uses only the same options maps by the same rules.
SUPPORTED_MODELS = (
    "ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-B-16-quickgelu",
    "ViT-L-14", "ViT-L-14-quickgelu", "ViT-L-14-336", "ViT-L-14-336-quickgelu",
)
CLIP_BPE_VOCAB_SIZE = 49408
BOS_TOKEN_ID, EOS_TOKEN_ID = 49406, 49407  # <|startoftext|>, <|endoftext|> of the CLIP BPE

# Config keys with no effect on the weights or the eval forward (patch dropout is training-only).
_NEUTRAL = {"output_tokens", "patch_dropout", "pad_id", "eos_id"}
# open_clip's defaults (CLIPVisionCfg / CLIPTextCfg in open_clip/model.py) for the keys that change the
# architecture; a config is mapped only when it keeps every one of them at the value transformers' CLIP has.
_VISION_FIXED = {
    "ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
    "final_ln_after_pool": False, "pool_type": "tok", "act_kwargs": None, "block_type": None, "qk_norm": False,
    "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
}
_VISION_SIZES = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "norm_kwargs"}
_TEXT_FIXED = {
    "hf_model_name": None, "hf_tokenizer_name": None, "tokenizer_mode": None, "tokenizer_kwargs": None,
    "ls_init_value": None, "embed_cls": False, "no_causal_mask": False, "final_ln_after_pool": False,
    "pool_type": "argmax", "proj_bias": False, "proj_type": "linear", "act_kwargs": None, "block_type": None,
    "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
    "scale_attn": False, "scale_fc": False,
}
_TEXT_SIZES = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "norm_kwargs"}
_TOP_LEVEL = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "nonscalar_logit_scale", "preprocess_cfg", "custom_text", "init_logit_bias"}
# open_clip's PreprocessCfg defaults (open_clip/transform.py) under a model config's `preprocess_cfg`.
OPEN_CLIP_PREPROCESS = {
    "mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711),
    "interpolation": "bicubic", "resize_mode": "shortest",
}
_RESAMPLE = {"bicubic": 3, "bilinear": 2}  # PIL / transformers' PILImageResampling codes
HUB_CONFIG = "open_clip_config.json"  # open_clip's Hub layout: model_cfg + preprocess_cfg beside the weights
# Training wrappers and key prefixes open_clip checkpoints come with: open_clip's train loop saves
# {"epoch", "name", "state_dict", "optimizer"}; DDP adds "module.", torch.compile "_orig_mod." (either order).
WRAPPER_KEYS = ("state_dict", "model")
KEY_PREFIXES = ("module.", "_orig_mod.")
PARITY_TOLERANCE = 1e-4  # relative error of features against open_clip's own forward (fp32; measured ~1e-6)


def split_tag(model: str) -> tuple[str, str | None]:
    """"ViT-B-32/openai" or "ViT-B-32:openai" -> ("ViT-B-32", "openai"); a plain name -> (name, None)."""
    for separator in ("/", ":"):
        if separator in model:
            name, tag = model.rsplit(separator, 1)
            return name, tag
    return model, None


def _wheel_model_config(name: str) -> dict[str, Any]:
    path = open_clip_package_dir() / "model_configs" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"open_clip model '{name}' is not in the installed open-clip-torch's model_configs "
                                "(pass a model name such as ViT-B-32-quickgelu, NAME/TAG such as ViT-B-32/openai, or a model config .json)")
    return json.loads(path.read_text())


def _unnest(config: dict[str, Any]) -> dict[str, Any]:
    if "model_cfg" in config:  # the Hub layout (open_clip_config.json) nests the model config
        return {**config["model_cfg"], "preprocess_cfg": config.get("preprocess_cfg", {})}
    return config


def pretrained_tag_config(name: str, tag: str) -> dict[str, Any]:
    """open_clip's pretrained-table entry for NAME/TAG (quick_gelu, mean/std, ...), read from the wheel."""
    table = open_clip_module("pretrained")
    entry = table.get_pretrained_cfg(name, tag)
    if entry:
        return entry
    tags = table.list_pretrained_tags_by_model(name)
    elsewhere = [other for other in table.list_pretrained_models_by_tag(tag) if other.removesuffix("-quickgelu") == name.removesuffix("-quickgelu")]
    hint = f"; open_clip lists '{tag}' under {elsewhere[0]}" if elsewhere else ""
    raise ValueError(f"'{tag}' is not a pretrained tag of open_clip model '{name}' (its tags: {', '.join(tags) or 'none'}){hint}")


def resolve_open_clip_model(model: str | Path) -> tuple[str, dict[str, Any], str]:
    """(name, model config, why this activation) for a model name, NAME/TAG, or a model config / open_clip_config.json.

    A tag's entry in open_clip's pretrained table sets quick_gelu and the preprocessing its weights were trained with.
    """
    path = Path(model)
    if path.suffix == ".json" and path.is_file():
        config = _unnest(json.loads(path.read_text()))
        said = "sets quick_gelu: true" if config.get("quick_gelu") else "has no quick_gelu: true (open_clip's default, exact GELU)"
        return path.stem, config, f"the model config {path} {said}"
    name, tag = split_tag(str(model))
    config = _wheel_model_config(name)
    if tag is None:
        said = "ends in -quickgelu (quick_gelu: true)" if config.get("quick_gelu") else "has no -quickgelu suffix (exact GELU)"
        return name, config, f"the name {name} {said}"
    entry = pretrained_tag_config(name, tag)
    config["quick_gelu"] = bool(entry.get("quick_gelu", False))
    config["preprocess_cfg"] = {**config.get("preprocess_cfg", {}),
                                **{key: entry[key] for key in OPEN_CLIP_PREPROCESS if key in entry}}
    trained = "QuickGELU" if config["quick_gelu"] else "exact GELU"
    return f"{name}/{tag}", config, f"open_clip's pretrained table records {name}/{tag} as trained with {trained}"


def open_clip_model_config(model: str | Path) -> tuple[str, dict[str, Any]]:
    """(name, model config) for an open_clip model name, NAME/TAG, or a model config / open_clip_config.json file."""
    name, config, _ = resolve_open_clip_model(model)
    return name, config


def unmappable_reason(config: dict[str, Any]) -> str | None:
    """Why transformers' CLIP cannot hold this open_clip architecture exactly, or None when it can."""
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if "multimodal_cfg" in config:
        return "CoCa (a multimodal text decoder) has no CLIPModel equivalent"
    if vision.get("timm_model_name"):
        return f"the image tower is the timm model '{vision['timm_model_name']}', not open_clip's ViT"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "the image tower is a ResNet (ModifiedResNet), not a ViT"
    if text.get("hf_model_name"):
        return f"the text tower is the Hugging Face model '{text['hf_model_name']}', not open_clip's CLIP text transformer"
    if config.get("custom_text"):
        return "it is a CustomTextCLIP (custom_text: true), e.g. SigLIP from open_clip"
    if config.get("init_logit_bias") is not None:
        return "it has a logit bias (sigmoid loss, SigLIP-style); CLIPModel has none"
    unknown = sorted(set(config) - _TOP_LEVEL)
    if unknown:
        return f"unknown model config options {unknown}"
    for tower, options, fixed, sizes in (("vision_cfg", vision, _VISION_FIXED, _VISION_SIZES), ("text_cfg", text, _TEXT_FIXED, _TEXT_SIZES)):
        for key, value in options.items():
            if key in fixed and value != fixed[key]:
                return f"{tower}.{key}={value!r} has no CLIPModel equivalent (only {fixed[key]!r} maps)"
            if key not in fixed and key not in sizes and key not in _NEUTRAL:
                return f"unknown option {tower}.{key}={value!r}"
        if set(options.get("norm_kwargs") or {}) - {"eps"}:
            return f"{tower}.norm_kwargs={options['norm_kwargs']!r}: only eps maps"
    if vision.get("width", 768) % vision.get("head_width", 64):
        return f"vision width {vision.get('width', 768)} is not a multiple of head_width {vision.get('head_width', 64)}"
    image_size = vision.get("image_size", 224)
    if isinstance(image_size, (list, tuple)) and len(set(image_size)) != 1:
        return f"non-square image size {image_size}"
    if text.get("vocab_size", CLIP_BPE_VOCAB_SIZE) != CLIP_BPE_VOCAB_SIZE:
        return f"text vocab_size {text['vocab_size']} is not the CLIP BPE's {CLIP_BPE_VOCAB_SIZE}"
    resize_mode = config.get("preprocess_cfg", {}).get("resize_mode", "shortest")
    if resize_mode not in ("shortest", "squash"):
        return f"preprocess resize_mode '{resize_mode}' (letterbox padding) has no CLIPImageProcessor equivalent"
    if config.get("preprocess_cfg", {}).get("interpolation", "bicubic") not in _RESAMPLE:
        return f"preprocess interpolation '{config['preprocess_cfg']['interpolation']}' is not bicubic or bilinear"
    return None


def _square(size: Any) -> int:
    return int(size[0]) if isinstance(size, (list, tuple)) else int(size)


def hf_clip_config(config: dict[str, Any]) -> CLIPConfig:
    """The transformers CLIPConfig of a mappable open_clip model config (open_clip's defaults filled in)."""
    vision, text = config["vision_cfg"], config["text_cfg"]
    act = "quick_gelu" if config.get("quick_gelu", False) else "gelu"
    width, text_width = vision.get("width", 768), text.get("width", 512)
    vision_config = dict(
        hidden_size=width, intermediate_size=int(width * vision.get("mlp_ratio", 4.0)), num_hidden_layers=vision.get("layers", 12),
        num_attention_heads=width // vision.get("head_width", 64), image_size=_square(vision.get("image_size", 224)),
        patch_size=vision.get("patch_size", 16), hidden_act=act, layer_norm_eps=(vision.get("norm_kwargs") or {}).get("eps", 1e-5),
    )
    text_config = dict(
        vocab_size=text.get("vocab_size", CLIP_BPE_VOCAB_SIZE), hidden_size=text_width, intermediate_size=int(text_width * text.get("mlp_ratio", 4.0)),
        num_hidden_layers=text.get("layers", 12), num_attention_heads=text.get("heads", 8), max_position_embeddings=text.get("context_length", 77),
        hidden_act=act, layer_norm_eps=(text.get("norm_kwargs") or {}).get("eps", 1e-5),
        # open_clip pools the highest token id (argmax); with the CLIP BPE that is <|endoftext|>, where CLIPModel pools
        bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=EOS_TOKEN_ID,
    )
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=config["embed_dim"])


def hf_image_processor(config: dict[str, Any]) -> OpenCLIPImageProcessorPil:
    """open_clip's eval transform as an image processor: resize (shortest edge + centre crop, or squash), mean/std,
    with open_clip's crop rounding and mode handling (open_clip_image_processor.py)."""
    preprocess = {**OPEN_CLIP_PREPROCESS, **config.get("preprocess_cfg", {})}
    size = _square(config["vision_cfg"].get("image_size", 224))  # open_clip sets the final size from the tower
    square = {"height": size, "width": size}
    shortest = preprocess["resize_mode"] == "shortest"
    return OpenCLIPImageProcessorPil(
        size={"shortest_edge": size} if shortest else square, crop_size=square, do_center_crop=shortest,
        resample=_RESAMPLE[preprocess["interpolation"]], image_mean=list(preprocess["mean"]), image_std=list(preprocess["std"]),
    )


def load_open_clip_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of an open_clip file (.pt/.bin or safetensors): a plain state dict or a training checkpoint
    (`{"state_dict": ..., "epoch": ..., "optimizer": ...}`, or `{"model": ...}`), keys with `module.` (DDP) and
    `_orig_mod.` (torch.compile) prefixes removed key by key; any other prefix is named in the error."""
    return unwrap_state_dict(_read_checkpoint(Path(checkpoint)), Path(checkpoint))


def _read_checkpoint(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"open_clip checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            check_safetensors(path)
            loaded: Any = load_file(str(path))
        else:
            loaded = torch_load_weights_only(path)  # checked opcode by opcode first: nothing in it runs
    except Exception as error:  # pickles with code objects, TorchScript archives, truncated files
        reason = str(error).removeprefix(f"{path}: ").strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = "; a TorchScript file such as OpenAI's original .pt: save torch.jit.load(file).state_dict() first" if "TorchScript" in str(error) else ""
        raise ValueError(f"{path}: not a readable open_clip state dict ({reason}{hint})") from None
    return loaded


def _strip_prefixes(key: str) -> str:
    while key.startswith(KEY_PREFIXES):
        key = key[len(next(p for p in KEY_PREFIXES if key.startswith(p))):]
    return key


def unwrap_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Tensors of `loaded` under open_clip's names: wrappers opened, known prefixes removed, anything else named."""
    opened = []
    while isinstance(loaded, dict) and not any(isinstance(v, torch.Tensor) for v in loaded.values()):
        wrapper = next((key for key in WRAPPER_KEYS if isinstance(loaded.get(key), dict)), None)
        if wrapper is None:
            break
        loaded, opened = loaded[wrapper], [*opened, wrapper]
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        found = f"top-level keys {sorted(map(str, loaded))[:5]}" if isinstance(loaded, dict) and loaded else type(loaded).__name__
        raise ValueError(f"{path}: holds no tensor state dict ({found}; expected open_clip weights, or a checkpoint with "
                         f"{' or '.join(repr(k) for k in WRAPPER_KEYS)} holding them)")
    state: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        name = _strip_prefixes(key)
        if name in state:
            raise ValueError(f"{path}: weight '{name}' is in the file twice (as '{key}' and without its prefix)")
        state[name] = value
    if "visual.conv1.weight" not in state:
        inner = next((key for key in state if key.endswith("visual.conv1.weight")), None)
        if inner is not None:
            prefix = inner[: -len("visual.conv1.weight")]
            raise ValueError(f"{path}: the weights carry the prefix '{prefix}' (e.g. '{inner}'), which is not one open_clip "
                             f"writes ({', '.join(KEY_PREFIXES)}); save the state dict without it")
    removed = sorted({key[: len(key) - len(_strip_prefixes(key))] for key in loaded} - {""})
    if opened or removed:
        print(f"{path.name}: read {len(state)} weights" + (f" from {' > '.join(opened)}" if opened else "")
              + (f", prefixes removed: {', '.join(removed)}" if removed else ""))
    return state


def _take(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise KeyError(key)
    return state.pop(key).float()


def _convert_tower(state: dict, out: dict, source: str, target: str, layers: int) -> None:
    """open_clip resblocks (fused nn.MultiheadAttention in_proj) -> transformers CLIPEncoderLayer names."""
    for i in range(layers):
        src, dst = f"{source}resblocks.{i}.", f"{target}layers.{i}."
        for name, weight in zip("qkv", _take(state, src + "attn.in_proj_weight").chunk(3)):
            out[f"{dst}self_attn.{name}_proj.weight"] = weight.clone()
        for name, bias in zip("qkv", _take(state, src + "attn.in_proj_bias").chunk(3)):
            out[f"{dst}self_attn.{name}_proj.bias"] = bias.clone()
        for theirs, ours in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            for kind in ("weight", "bias"):
                out[f"{dst}{ours}.{kind}"] = _take(state, f"{src}{theirs}.{kind}")


def convert_state_dict(state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """open_clip CLIP weights -> transformers CLIPModel weights (fp32); every open_clip tensor is used exactly once.

    Shape-only work, so it runs on meta tensors too.
    """
    state = dict(state_dict)
    state.pop("attn_mask", None)  # the causal-mask buffer: no learned values, rebuilt by CLIPModel
    out: dict[str, torch.Tensor] = {}
    try:
        out["vision_model.embeddings.patch_embedding.weight"] = _take(state, "visual.conv1.weight")
        out["vision_model.embeddings.class_embedding"] = _take(state, "visual.class_embedding")
        out["vision_model.embeddings.position_embedding.weight"] = _take(state, "visual.positional_embedding")
        for theirs, ours in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                             ("ln_final", "text_model.final_layer_norm")):
            for kind in ("weight", "bias"):
                out[f"{ours}.{kind}"] = _take(state, f"{theirs}.{kind}")
        _convert_tower(state, out, "visual.transformer.", "vision_model.encoder.", config["vision_cfg"].get("layers", 12))
        _convert_tower(state, out, "transformer.", "text_model.encoder.", config["text_cfg"].get("layers", 12))
        out["visual_projection.weight"] = _take(state, "visual.proj").T.contiguous()  # open_clip: x @ proj
        out["text_projection.weight"] = _take(state, "text_projection").T.contiguous()
        out["text_model.embeddings.token_embedding.weight"] = _take(state, "token_embedding.weight")
        out["text_model.embeddings.position_embedding.weight"] = _take(state, "positional_embedding")
        out["logit_scale"] = _take(state, "logit_scale").reshape(())
    except KeyError as missing:
        raise ValueError(f"the checkpoint has no {missing} weight: not an open_clip CLIP of this model (or its tower depth differs)") from None
    if state:
        raise ValueError(f"the checkpoint has {len(state)} weight(s) this model does not have, e.g. {sorted(state)[:3]} (wrong model name?)")
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def activation_name(config: dict[str, Any]) -> str:
    return "quick_gelu" if config.get("quick_gelu", False) else "gelu"


def check_hub_config(checkpoint: Path, name: str, config: dict[str, Any]) -> bool:
    """An open_clip_config.json beside the checkpoint records how it was trained: refuse a name that disagrees.
    Returns whether there was one."""
    recorded_path = checkpoint.parent / HUB_CONFIG
    if not recorded_path.is_file():
        return False
    try:
        recorded = _unnest(json.loads(recorded_path.read_text()))
    except json.JSONDecodeError as error:
        raise ValueError(f"{recorded_path}: not valid JSON ({error})") from None
    theirs, ours = activation_name(recorded), activation_name(config)
    if theirs != ours:
        raise ValueError(f"{checkpoint} was trained with {theirs} ({recorded_path} says quick_gelu: "
                         f"{str(bool(recorded.get('quick_gelu'))).lower()}), but open_clip model '{name}' runs {ours}: "
                         f"pass --model {recorded_path} (or the matching name)")
    return True


def _open_clip_api() -> Any:
    """open_clip itself when it imports (it needs torchvision), else None."""
    try:
        import open_clip
    except Exception:  # ImportError, or a torchvision build that does not run with this torch
        return None
    return open_clip


@torch.no_grad()
def open_clip_parity(api: Any, state_dict: dict[str, torch.Tensor], config: dict[str, Any], clip: CLIPModel,
                     tokenizer: Any) -> dict[str, float]:
    """One forward of open_clip's own CLIP (built by `api`, i.e. open_clip) on the checkpoint against the converted
    model: token ids of a few captions must be equal, image and text features within PARITY_TOLERANCE."""
    kwargs = {key: value for key, value in config.items() if key not in ("preprocess_cfg", "custom_text")}
    reference = api.CLIP(**kwargs).eval()
    # attn_mask: a buffer older open_clip versions saved, rebuilt by the model
    reference.load_state_dict({key: value.float() for key, value in state_dict.items() if key != "attn_mask"})
    size, context = clip.config.vision_config.image_size, clip.config.text_config.max_position_embeddings
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    texts = ["a photo of a cat", "Tom &amp; Jerry\u2019s \u201ccurly\u201d caf\u00c3\u00a9 <|endoftext|> sign"]
    ours = tokenize(tokenizer, texts, TextRule.for_model(clip.config), return_tensors="pt")
    theirs = api.tokenize(texts, context_length=context)
    mask = ours["attention_mask"].bool()
    if not torch.equal(ours["input_ids"][mask], theirs[:, : mask.shape[1]][mask]):
        raise ValueError("the text rule's token ids differ from open_clip's tokenizer")
    clip = clip.float().eval()
    pairs = {"image": (clip.get_image_features(pixel_values=pixels).pooler_output, reference.encode_image(pixels)),
             "text": (clip.get_text_features(**ours).pooler_output, reference.encode_text(theirs))}
    return {key: float((a - b).norm() / b.norm()) for key, (a, b) in pairs.items()}


def convert_open_clip(checkpoint: str | Path, model: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the HF CLIPModel, open_clip image processor and CLIP tokenizer of an open_clip checkpoint to `out_dir`.

    `model` is the open_clip model name the checkpoint was trained as (e.g. `ViT-B-32-quickgelu`), NAME/TAG of
    open_clip's pretrained table (e.g. `ViT-B-32/openai`), or a model config JSON. Prints the activation and why.
    Written atomically; a non-empty `out_dir` is refused unless `overwrite`.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    name, config, why = resolve_open_clip_model(model)
    reason = unmappable_reason(config)
    if reason:
        raise ValueError(f"open_clip model '{name}' cannot be converted to a CLIPModel: {reason}")
    hf_config = hf_clip_config(config)
    recorded = check_hub_config(checkpoint, name, config) if checkpoint.is_file() else False
    state_dict = load_open_clip_state_dict(checkpoint)
    try:
        weights = convert_state_dict(state_dict, config)
    except ValueError as error:
        raise ValueError(f"{checkpoint} as open_clip '{name}': {error}") from None
    with torch.device("meta"):
        clip = CLIPModel(hf_config)
    try:
        clip.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as error:  # size mismatches: the checkpoint is another width or resolution
        detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error).splitlines()[0])
        raise ValueError(f"{checkpoint} does not fit open_clip model '{name}': {detail}") from None
    for module in clip.modules():  # the non-persistent position_ids buffers are still on meta: rebuild them
        if isinstance(getattr(module, "position_ids", None), torch.Tensor) and module.position_ids.is_meta:
            shape = module.position_ids.shape
            module.register_buffer("position_ids", torch.arange(shape[-1]).expand(shape), persistent=False)
    on_meta = [n for n, t in [*clip.named_parameters(), *clip.named_buffers()] if t.is_meta]
    if on_meta:
        raise RuntimeError(f"conversion left tensors without values: {on_meta[:3]}")
    tokenizer = clip_tokenizer()
    tokenizer.model_max_length = hf_config.text_config.max_position_embeddings
    setattr(clip.config, TEXT_RULE_KEY, OPEN_CLIP)
    api = _open_clip_api()
    if api is not None:
        errors = open_clip_parity(api, state_dict, config, clip, tokenizer)
        if max(errors.values()) > PARITY_TOLERANCE:
            raise ValueError(f"{checkpoint} as open_clip '{name}': the converted model's features differ from open_clip's own "
                             f"forward (relative error image {errors['image']:.2e}, text {errors['text']:.2e}; tolerance "
                             f"{PARITY_TOLERANCE:g}): wrong activation or architecture for these weights")
    activation = activation_name(config)
    if api is not None:
        checked = f"; open_clip's own forward agrees (relative error <= {max(errors.values()):.1e})"
    elif recorded:
        checked = f"; {HUB_CONFIG} beside the checkpoint agrees"
    else:
        other = "gelu" if activation == "quick_gelu" else "quick_gelu"
        checked = (f"; the checkpoint does not record its activation (open_clip not importable for a forward check): "
                   f"weights trained with {other} would convert silently and embed ~1% off")
    print(f"activation: {activation}, because {why}{checked}")
    provenance = {
        "reasonclip_base_model": str(checkpoint.resolve()),
        "reasonclip_version": __version__,
        "reasonclip_source_format": "open_clip",
        "reasonclip_open_clip_model": name,
        "reasonclip_open_clip_activation": f"{activation}: {why}",
        "reasonclip_open_clip_version": importlib.metadata.version("open_clip_torch"),
        "reasonclip_open_clip_sha256": _sha256(checkpoint),
    }
    for key, value in provenance.items():
        setattr(clip.config, key, value)

    with atomic_directory(out_dir, overwrite, sources=(checkpoint,)) as staging:
        clip.save_pretrained(staging, safe_serialization=True)
        hf_image_processor(config).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return out_dir
