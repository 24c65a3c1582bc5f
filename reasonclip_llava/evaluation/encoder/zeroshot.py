"""Zero-shot classification over an ImageFolder-style directory (root/class_name/*.jpg).

Class embeddings are the re-normalised mean of the prompt-template embeddings, as in CLIP. The class
list is the sorted folder names; an optional JSON ({"name", "classnames", "templates"}) gives readable
names (a list aligned with the sorted folders, or {folder: name}) and templates ("a photo of a {}.").
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .embed import EncoderEmbedder, ImageRef
from .scoring import summarize
from .sources import percent, read_json

DEFAULT_TEMPLATES = ("a photo of a {}.",)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TOP_K = (1, 5)


def _class_names(folders: list[str], config: dict, source: Path | None) -> list[str]:
    names = config.get("classnames")
    if names is None:
        return [folder.replace("_", " ") for folder in folders]
    if isinstance(names, dict):
        missing = [folder for folder in folders if folder not in names]
        if missing:
            raise ValueError(f"{source}: classnames has no entry for folder {missing[0]!r}")
        return [str(names[folder]) for folder in folders]
    if not isinstance(names, list) or len(names) != len(folders):
        raise ValueError(f"{source}: classnames should list {len(folders)} names (one per class folder)")
    return [str(name) for name in names]


def _templates(config: dict, source: Path | None) -> list[str]:
    templates = config.get("templates", list(DEFAULT_TEMPLATES))
    if not isinstance(templates, list) or not templates:
        raise ValueError(f"{source}: templates should be a non-empty list")
    for template in templates:
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(f"{source}: template {template!r} has no '{{}}' placeholder for the class name")
    return templates


def zeroshot(embedder: EncoderEmbedder, data: Path | None, images: Path) -> dict:
    if not images.is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    config_path = data if data is not None and data.is_file() else None
    config = read_json(config_path) if config_path else {}
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected an object with classnames / templates")
    folders = sorted(entry.name for entry in images.iterdir() if entry.is_dir())
    if not folders:
        raise FileNotFoundError(f"no class folders in {images}")
    names, templates = _class_names(folders, config, config_path), _templates(config, config_path)

    refs, labels = [], []
    for label, folder in enumerate(folders):
        files = sorted(p for p in (images / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"class folder has no images: {images / folder}")
        refs += [ImageRef(path.resolve()) for path in files]
        labels += [label] * len(files)

    prompts = [template.format(name) for name in names for template in templates]
    prompt_emb = embedder.embed_texts(prompts).view(len(names), len(templates), -1)
    class_emb = F.normalize(prompt_emb.mean(dim=1), dim=-1)
    logits = embedder.embed_images(refs) @ class_emb.T
    labels_t = torch.tensor(labels)
    rank = (logits > logits.gather(1, labels_t[:, None])).sum(dim=1)  # classes scoring strictly higher

    subsets = {}
    for label, (folder, name) in enumerate(zip(folders, names)):
        mask = labels_t == label
        subsets[folder] = {"n": int(mask.sum()), **{f"top{k}": percent((rank[mask] < k).sum(), int(mask.sum())) for k in TOP_K}}
    title = str(config.get("name") or images.name)
    rows = [{"subset": folders[label], "id": str(ref.path.relative_to(images.resolve())), "rank": int(r),
             "predicted": folders[int(logits[i].argmax())]} for i, (ref, label, r) in enumerate(zip(refs, labels, rank))]
    return summarize(subsets, {f"{title} top-1": ("micro", "top1")}, rows, classnames=names, templates=templates)
