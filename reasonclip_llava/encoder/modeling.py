"""The training-time ReasonCLIP model: a transformers dual encoder plus training-only heads.

On disk a training checkpoint is a plain CLIP/SigLIP checkpoint (config.json + model.safetensors,
loadable by `AutoModel.from_pretrained`) with two extra files beside it:

    heads.safetensors          the training-only heads (stage-2 category heads, READ projector)
    reasonclip_training.json   provenance (base model, stage, recipe) and the heads' shapes

`export_encoder` (export.py) drops the heads and writes the deployable checkpoint.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from ..io_utils import check_model_files, load_pretrained_strict, require_finite

HEADS_FILE = "heads.safetensors"
TRAINING_FILE = "reasonclip_training.json"
NUM_CATEGORIES = 5
CATEGORIES = ("S", "A", "H", "T", "P")  # spatial, attribute, human/action, temporal, physical

# model_type of the dual-encoder config -> (family, vision sub-config model_type). Fixed-resolution
# SigLIP 2 checkpoints of model_type 'siglip' load here; NaFlex 'siglip2' ones need variable-resolution
# inputs (pixel_attention_mask, spatial_shapes) that neither the trainer nor LLaVA towers produce.
SUPPORTED_MODEL_TYPES = {
    "clip": ("clip", "clip_vision_model"),
    "siglip": ("siglip", "siglip_vision_model"),
}
UNSUPPORTED_MODEL_TYPES = {
    "siglip2": "NaFlex SigLIP 2 ('siglip2') needs variable-resolution inputs (pixel_attention_mask, spatial_shapes); "
    "use a fixed-resolution SigLIP / SigLIP 2 checkpoint of model_type 'siglip'",
}
# The authors' stage-2 code attaches its heads to the CLIPModel / SiglipModel itself, so a checkpoint
# they release may carry them inside model.safetensors (often in bf16): ReasonCLIPForPretraining takes
# them as its category heads, export strips them, verify names them.
PUBLISHED_HEADS = {"text_classifier.fc.": "category_heads.text_head.", "image_classifier.fc.": "category_heads.image_head."}


def training_only_keys(names: Iterable[str]) -> list[str]:
    """The names among `names` that are the authors' training heads (text_classifier.*, image_classifier.*)."""
    return sorted(n for n in names if n.split(".", 1)[0] in {p.split(".", 1)[0] for p in PUBLISHED_HEADS})


# Files that travel with a checkpoint so that it stays usable on its own.
SIDECAR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "added_tokens.json",
    "chat_template.jinja",
)


def load_dual_encoder_config(name_or_path: str | Path) -> PretrainedConfig:
    """Load a CLIP/SigLIP/SigLIP2 config, or fail with one line naming the checkpoint (or its unreadable file)."""
    check_model_files(name_or_path, "model")
    try:
        config = AutoConfig.from_pretrained(str(name_or_path))
    except OSError as error:
        raise FileNotFoundError(f"cannot read a model config from '{name_or_path}': {error}") from None
    if config.model_type in UNSUPPORTED_MODEL_TYPES:
        raise ValueError(f"'{name_or_path}': {UNSUPPORTED_MODEL_TYPES[config.model_type]}")
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"'{name_or_path}' is a '{config.model_type}' checkpoint; ReasonCLIP needs a CLIP/SigLIP dual encoder "
            f"(model_type {sorted(SUPPORTED_MODEL_TYPES)})"
        )
    return config


@dataclass
class HeadsConfig:
    """Shapes of the training-only heads; none of them is part of an exported encoder."""

    category_heads: bool = False  # stage 2: text head (CE) and image head (BCE), embed_dim -> 5
    recon_dim: int | None = None  # READ: bias-free projector text width -> T5 decoder width
    num_categories: int = NUM_CATEGORIES


@dataclass
class TrainingInfo:
    """Provenance recorded in training checkpoints and, as `reasonclip_*` config fields, in exports."""

    base_model: str = ""
    stage: str = ""
    recipe: str = ""
    heads: HeadsConfig = field(default_factory=HeadsConfig)

    def save(self, directory: Path) -> None:
        (directory / TRAINING_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> "TrainingInfo | None":
        path = directory / TRAINING_FILE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        return cls(**{**raw, "heads": HeadsConfig(**raw.get("heads", {}))})


class CategoryHeads(nn.Module):
    """Stage-2 heads: single linear layers from the joint embedding to the 5 reasoning categories."""

    def __init__(self, embed_dim: int, num_categories: int = NUM_CATEGORIES):
        super().__init__()
        self.text_head = nn.Linear(embed_dim, num_categories)
        self.image_head = nn.Linear(embed_dim, num_categories)


class ReasonCLIPForPretraining(nn.Module):
    """A transformers CLIPModel / SiglipModel (SigLIP and fixed-resolution SigLIP 2) with training-only heads."""

    def __init__(self, backbone: PreTrainedModel, heads: HeadsConfig | None = None, info: TrainingInfo | None = None):
        super().__init__()
        model_type = backbone.config.model_type
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported backbone model_type '{model_type}'")
        self.backbone = backbone
        self.family = SUPPORTED_MODEL_TYPES[model_type][0]
        self.heads_config = heads or HeadsConfig()
        self.info = info or TrainingInfo()
        self.info.heads = self.heads_config
        self.category_heads = CategoryHeads(self.embed_dim, self.heads_config.num_categories) if self.heads_config.category_heads else None
        self.recon_projector = nn.Linear(self.text_width, self.heads_config.recon_dim, bias=False) if self.heads_config.recon_dim else None

    # ----------------------------------------------------------------- shapes
    @property
    def config(self) -> PretrainedConfig:
        return self.backbone.config

    @property
    def embed_dim(self) -> int:
        if self.family == "clip":
            return self.config.projection_dim
        return self.config.text_config.projection_size if hasattr(self.config.text_config, "projection_size") else self.config.text_config.hidden_size

    @property
    def text_width(self) -> int:
        return self.config.text_config.hidden_size

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.backbone.logit_scale

    @property
    def logit_bias(self) -> nn.Parameter | None:
        return getattr(self.backbone, "logit_bias", None)

    # ----------------------------------------------------------------- encoders
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected (unnormalised) image embeddings [B, embed_dim]."""
        outputs = self.backbone.vision_model(pixel_values=pixel_values)
        pooled = outputs.pooler_output
        return self.backbone.visual_projection(pooled) if self.family == "clip" else pooled

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(projected text embeddings [B, embed_dim], pooled text state before the projection [B, width]).

        The pre-projection state is what READ's reconstruction projector reads (the EOS state for CLIP,
        the last token for SigLIP).
        """
        if self.family == "clip":
            outputs = self.backbone.text_model(input_ids=input_ids, attention_mask=attention_mask)
            pooled = outputs.pooler_output
            return self.backbone.text_projection(pooled), pooled
        # SigLIP's text transformer pools the last token and applies its own head (the projection).
        text_model = self.backbone.text_model
        outputs = text_model(input_ids=input_ids, attention_mask=attention_mask)
        pooled = outputs.last_hidden_state[:, -1, :]
        return outputs.pooler_output, pooled

    def category_logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image-head logits, text-head logits), each [B, 5]; the heads read L2-normalised embeddings."""
        if self.category_heads is None:
            raise ValueError("this model has no category heads (set heads.category_heads=true for stage 2)")
        image = nn.functional.normalize(image_embeds, dim=-1)
        text = nn.functional.normalize(text_embeds, dim=-1)
        return self.category_heads.image_head(image), self.category_heads.text_head(text)

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        state = {}
        if self.category_heads is not None:
            state.update({f"category_heads.{k}": v for k, v in self.category_heads.state_dict().items()})
        if self.recon_projector is not None:
            state.update({f"recon_projector.{k}": v for k, v in self.recon_projector.state_dict().items()})
        return state

    # ----------------------------------------------------------------- I/O
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        heads: HeadsConfig | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> "ReasonCLIPForPretraining":
        """Load a plain CLIP/SigLIP checkpoint (Hub id or path) or a ReasonCLIP training checkpoint.

        Heads saved in a training checkpoint are restored when the requested heads include them (also the
        authors' `text_classifier.*` / `image_classifier.*` inside a released stage-2 checkpoint); a
        requested head that the checkpoint lacks starts freshly initialised. Weights load as float32
        (a bf16 release included) unless `torch_dtype` says otherwise.
        """
        load_dual_encoder_config(name_or_path)
        # Missing weights would start random and pass as trained; of the extra ones only the published heads
        # (read below) are expected, any other is a tensor the config has no place for.
        backbone = load_pretrained_strict(AutoModel, name_or_path, "model", tolerated=training_only_keys, dtype=torch_dtype or torch.float32)
        directory = Path(name_or_path)
        saved_info = TrainingInfo.load(directory) if directory.is_dir() else None
        info = saved_info or TrainingInfo(base_model=str(name_or_path))
        model = cls(backbone, heads if heads is not None else info.heads, info)
        heads_path = directory / HEADS_FILE
        saved = load_file(str(heads_path)) if heads_path.is_file() else published_heads(directory)
        if saved:
            require_finite(saved.items(), f"heads of {name_or_path}")
            wanted = model.head_state_dict()
            saved = {k: v.to(wanted[k].dtype) for k, v in saved.items() if k in wanted}
            for key, tensor in saved.items():
                if tensor.shape != wanted[key].shape:
                    raise ValueError(f"{heads_path}: head '{key}' has shape {tuple(tensor.shape)}, expected {tuple(wanted[key].shape)}")
            model.load_state_dict(saved, strict=False)
        return model

    def save_pretrained(self, out_dir: str | Path, source: str | Path | None = None) -> Path:
        """Write a training checkpoint; tokenizer/processor files are copied from `source` when given."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(out_dir)
        heads = self.head_state_dict()
        if heads:
            save_file({k: v.detach().contiguous().cpu() for k, v in heads.items()}, str(out_dir / HEADS_FILE))
        self.info.save(out_dir)
        if source is not None:
            copy_sidecar_files(source, out_dir)
        return out_dir


def published_heads(directory: Path) -> dict[str, torch.Tensor]:
    """The authors' stage-2 heads stored inside model.safetensors, renamed to ours ({} when there are none)."""
    from safetensors import safe_open

    out = {}
    for path in sorted(directory.glob("*.safetensors")) if directory.is_dir() else ():
        with safe_open(str(path), framework="pt") as handle:
            for key in training_only_keys(handle.keys()):
                prefix = next(p for p in PUBLISHED_HEADS if key.startswith(p))
                out[PUBLISHED_HEADS[prefix] + key[len(prefix):]] = handle.get_tensor(key)
    return out


def copy_sidecar_files(source: str | Path, out_dir: str | Path) -> list[str]:
    """Copy tokenizer and preprocessor files from a local checkpoint dir (Hub ids: saved via transformers)."""
    source, out_dir = Path(source), Path(out_dir)
    copied = []
    if source.is_dir():
        for name in SIDECAR_FILES:
            if (source / name).is_file() and source.resolve() != out_dir.resolve():
                shutil.copy2(source / name, out_dir / name)
                copied.append(name)
        return copied
    from transformers import AutoTokenizer

    from .open_clip_image_processor import load_image_processor

    load_image_processor(str(source)).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(out_dir)
    return ["preprocessor", "tokenizer"]
