"""Swap the vision tower(s) of an existing VLM checkpoint for an encoder of the same shape.

Any family of `vlm.families` (LLaVA-1.5 / NeXT / NeXT-Video / OneVision, ViP-LLaVA, Video-LLaVA, PaliGemma,
Gemma 3, Aya Vision, Command A Vision, DeepSeek-VL, Idefics2 / 3, SmolVLM). Typical use: a released LLaVA
built on CLIP ViT-L/14-336 gets the ReasonCLIP ViT-L/14-336 weights. Only the tower's tensors change (both
of Video-LLaVA's towers): every shape, the projector and the config's architecture fields stay the
original's, so the result loads with the same plain transformers class. The projector was aligned to the
old tower: re-align it (projector pretraining) before use unless the encoder was fine-tuned from that tower.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoProcessor, PreTrainedModel, ProcessorMixin
from transformers.image_processing_base import ImageProcessingMixin

from ..io_utils import check_model_files, load_pretrained_strict, refuse_existing
from .families import VLMFamily, family_of, map_encoder_to_tower
from .hub_layout import save_vlm  # the one writer of VLM checkpoints (Hub layout)

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def parameter_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def load_vlm(path: str | Path, what: str = "model", dtype: torch.dtype | None = None,
             ) -> tuple[VLMFamily, PreTrainedModel, ProcessorMixin | None]:
    """(family, model, processor or None when the checkpoint has none), strictly, with its own classes."""
    check_model_files(path, what)
    family = family_of(path)
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = load_pretrained_strict(family.model_class, path, what, **kwargs)
    processor = AutoProcessor.from_pretrained(str(path)) if any((Path(path) / name).is_file() for name in PROCESSOR_FILES) else None
    return family, model, processor


def load_encoder_into(model: PreTrainedModel, family: VLMFamily, encoder: str | Path,
                      what: str = "encoder") -> list[str]:
    """Every tower of `model` <- the encoder's weights (strict, in the tower's dtype); the names dropped."""
    tower_map = map_encoder_to_tower(encoder, family, model.config, what)
    for tower in family.towers(model).values():
        dtype = next(tower.parameters()).dtype
        tower.load_state_dict({name: t.to(dtype) for name, t in tower_map.state.items()}, strict=True)
    return tower_map.dropped


def swap_vision_tower(
    llava_dir: str | Path,
    encoder_dir: str | Path,
    out_dir: str | Path,
    reinit_projector: bool = False,
    seed: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the VLM at llava_dir with its vision tower(s) replaced by encoder_dir's; return out_dir.

    Raises ValueError in one line: not a registered family (naming the model and tower types), a tower the
    encoder does not fit (e.g. 'image_size 384 vs 896': no interpolation), a depth it cannot take.
    `reinit_projector` (the llava-build architectures) starts the projector and image_newline afresh (from `seed`, else
    torch's RNG). A non-empty out_dir is refused unless `overwrite`. The encoder's image mean/std replace
    the processor's (the tower was trained with them).
    """
    llava_dir, encoder_dir, out_dir = Path(llava_dir), Path(encoder_dir), Path(out_dir)
    if out_dir.resolve() == llava_dir.resolve():
        raise ValueError(f"out_dir {out_dir} is the source checkpoint; write the swapped model elsewhere")
    refuse_existing(out_dir, overwrite, sources=(encoder_dir,))
    check_model_files(llava_dir, "--llava")
    family = family_of(llava_dir)
    from ..encoder.tower import load_vision_config

    load_vision_config(encoder_dir)  # a bad encoder is named before the (slow) VLM load
    family, model, processor = load_vlm(llava_dir, "--llava")
    shapes_before = parameter_shapes(model)
    dropped = load_encoder_into(model, family, encoder_dir)
    if reinit_projector:
        from .architectures import model_types
        from .build import reset_projector

        if family.name not in model_types():
            raise ValueError(f"--reinit-projector: takes the architectures llava-build builds ({', '.join(model_types())}), "
                             f"not {family.class_name}")

        reset_projector(model, seed=seed)
    if parameter_shapes(model) != shapes_before:  # load_state_dict(strict) already guarantees it; keep the promise explicit
        raise RuntimeError(f"swapping {encoder_dir} into {llava_dir} changed parameter shapes")

    model.config.reasonclip_encoder = str(encoder_dir)
    model.config.reasonclip_swapped_from = str(llava_dir)
    model.config.reasonclip_projector_reinitialised = bool(reinit_projector)
    model.config.reasonclip_tower_dropped = sorted({name.split(".")[0] if name.startswith("head.") else
                                                    ".".join(name.split(".")[:3]) for name in dropped})
    if processor is not None:
        set_encoder_normalisation(processor, family, encoder_dir)
    return save_vlm(model, processor, out_dir, overwrite)


def set_encoder_normalisation(processor: ProcessorMixin, family: VLMFamily, encoder_dir: str | Path) -> None:
    """The encoder's normalisation fields (image_mean / image_std) into the processor's image processor."""
    settings = encoder_normalisation(encoder_dir)
    image_processor = getattr(processor, "image_processor", None)
    if not settings or image_processor is None:
        return
    for name in family.normalisation_fields:
        if name in settings and hasattr(image_processor, name):
            setattr(image_processor, name, settings[name])
    video_processor = getattr(processor, "video_processor", None)  # OneVision / NeXT-Video preprocess frames too
    for name in family.normalisation_fields:
        if video_processor is not None and name in settings and hasattr(video_processor, name):
            setattr(video_processor, name, settings[name])


def encoder_normalisation(encoder_dir: str | Path) -> dict | None:
    """image_mean / image_std from the encoder's preprocessor config, if it has one."""
    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(str(encoder_dir))
    except OSError:
        return None
    if "image_mean" in settings and "image_std" in settings:
        return {"image_mean": settings["image_mean"], "image_std": settings["image_std"]}
    return None
