"""Hugging Face model cards (README.md) for exported encoders and LLaVA-NeXT checkpoints.

The card carries YAML front matter with a `model-index` (the Hub's machine-readable results), the
provenance that the export wrote into config.json (reasonclip_base_model / _stage / _recipe), and the
sections of a template. Templates use string.Template placeholders ($name; write $$ for a literal $).

Template lookup order (the first that exists wins):
  1. the `template` argument (a path);
  2. <repository>/model_cards/<name> when running from a source checkout (edit these);
  3. reasonclip_llava/evaluation/templates/<name>, shipped inside the package (a copy of 2, kept
     identical by the tests, so installed wheels find a template too).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from string import Template
from typing import Sequence

import yaml

from .report import ResultRow, _latest, load_result_rows

ENCODER_TEMPLATE = "reasonclip_encoder.md"
LLAVA_TEMPLATE = "llava_next.md"
MARKER = "<!-- reasonclip-card"
REPO_TEMPLATES = Path(__file__).resolve().parents[2] / "model_cards"

MODEL_CLASSES = {"clip": "CLIPModel", "siglip": "SiglipModel", "siglip2": "Siglip2Model"}

# benchmark key -> (dataset name, dataset type, task type, task name)
_MATCHING = ("zero-shot-image-classification", "Image-text matching")
_RETRIEVAL = ("image-text-retrieval", "Zero-shot image-text retrieval")
BENCHMARK_INFO = {
    "sugarcrepe": ("SugarCrepe", "sugarcrepe", *_MATCHING),
    "sugarcrepe_pp": ("SugarCrepe++", "sugarcrepe_pp", *_MATCHING),
    "whatsup": ("WhatsUp", "whatsup", *_MATCHING),
    "valse": ("VALSE", "valse", *_MATCHING),
    "crepe": ("CREPE", "crepe", *_MATCHING),
    "winoground": ("Winoground", "facebook/winoground", *_MATCHING),
    "aro": ("ARO", "aro", *_MATCHING),
    "rclip_bench": ("RCLIP-Bench", "RISys-Lab/RCLIP-Bench", *_MATCHING),
    "rclip_bench_retrieval": ("RCLIP-Bench retrieval", "RISys-Lab/RCLIP-Bench", *_RETRIEVAL),
    "retrieval": ("Karpathy test split", "karpathy", *_RETRIEVAL),
    "coco_retrieval": ("COCO (Karpathy 5k test)", "coco_karpathy", *_RETRIEVAL),
    "flickr30k_retrieval": ("Flickr30k (Karpathy 1k test)", "flickr30k_karpathy", *_RETRIEVAL),
    "zeroshot": ("Zero-shot classification", "imagefolder", "zero-shot-image-classification", "Zero-shot image classification"),
}

STAGE_RECIPES = {
    "stage0": "Stage 0 baseline: plain contrastive continual pretraining on descriptive captions only, or on "
              "reasoning captions only.",
    "stage1": "ReasonCLIP stage 1, dual stream: loss = w(t) CLIP(image, descriptive) + (1 - w(t)) CLIP(image, "
              "reasoning) + beta ||theta - theta0||^2, with w(t) = 0.70 for the first 20% of steps, then linear to "
              "0.50 at 80%, then 0.60; the L2 anchor (beta = 1e-5) keeps the vision and text transformers near the "
              "starting checkpoint. Contrastive loss over the global batch; logit scale clamped to at most ln 50.",
    "stage2": "ReasonCLIP stage 2, category-structured reasoning supervision from the stage 1 checkpoint: loss = "
              "CLIP(image, reasoning) + gamma [CE(text head, text category) + BCE(image head, 3-hot image categories)] "
              "over the five categories S/A/H/T/P, gamma = 0.05; the linear heads are training-only and not part of "
              "this checkpoint.",
    "read": "READ: NegCLIP-style contrastive loss with 3 hard negatives per caption + 0.1 x reconstruction of another "
            "caption of the same image by a frozen T5 decoder from the text embedding + 0.5 x paraphrase alignment "
            "(InfoNCE). The decoder is training-only and not part of this checkpoint.",
}

LLAVA_RECIPE = ("LLaVA-NeXT recipe: the projector (mlp2x_gelu, vision select layer -2) is pretrained on LCS-558K "
                "with the plain template (lr 1e-3), then the model is instruction-tuned with the vision tower unfrozen "
                "(vision lr 2e-6, LLM lr 1e-5).")


def find_template(name: str, template: str | Path | None = None) -> Path:
    """The template file, following the lookup order in the module docstring."""
    if template is not None:
        path = Path(template)
        if not path.is_file():
            raise FileNotFoundError(f"model card template not found: {path}")
        return path
    repo_copy = REPO_TEMPLATES / name
    if repo_copy.is_file():
        return repo_copy
    packaged = Path(str(resources.files("reasonclip_llava.evaluation") / "templates" / name))
    if packaged.is_file():
        return packaged
    raise FileNotFoundError(f"model card template {name!r} not found in {REPO_TEMPLATES} or the package templates")


def _metric_type(label: str, benchmark: str) -> str:
    if "R@" in label:
        return "recall"
    return "score" if benchmark == "mme" else "accuracy"


def model_index(model_name: str, rows: Sequence[ResultRow]) -> list[dict]:
    """The Hub's model-index: one result per benchmark, one metric per headline number."""
    results: dict[str, dict] = {}
    for row in rows:
        if row.value is None:
            continue
        if row.kind == "encoder" and row.benchmark in BENCHMARK_INFO:
            name, kind, task_type, task_name = BENCHMARK_INFO[row.benchmark]
            if row.benchmark == "zeroshot":
                name = row.metric.removesuffix(" top-1")
        else:
            name, kind, task_type, task_name = row.metric, row.benchmark, "visual-question-answering", "Visual question answering"
        split = str(row.record.get("split") or "test")
        entry = results.setdefault(row.benchmark, {"task": {"type": task_type, "name": task_name},
                                                   "dataset": {"name": name, "type": kind, "split": split}, "metrics": []})
        entry["metrics"].append({"type": _metric_type(row.metric, row.benchmark), "value": round(row.value, 2), "name": row.metric})
    return [{"name": model_name, "results": list(results.values())}] if results else []


def _results_table(rows: Sequence[ResultRow]) -> str:
    if not rows:
        return "No evaluation results were recorded for this checkpoint."
    lines = ["| Benchmark | Metric | Value | Items |", "|---|---|---:|---:|"]
    for row in rows:
        name = BENCHMARK_INFO.get(row.benchmark, (row.metric,))[0] if row.kind == "encoder" else row.metric
        value = "–" if row.value is None else f"{row.value:.1f}"
        lines.append(f"| {name} | {row.metric} | {value} | {row.record.get('n_items', row.record.get('n', ''))} |")
    lines.append("")
    lines.append("Values in percent (MME: score). Encoder numbers from `reasonclip eval clip`: image-text similarity "
                 "decisions as in each benchmark's official scorer; VQA numbers from the official scoring rules.")
    return "\n".join(lines)


def _hub_id(value: str) -> str | None:
    # A Hub id ("org/name" or "name"), not a local path the Hub could not resolve.
    value = (value or "").strip()
    if not value or value.startswith((".", "/", "~")) or Path(value).exists():
        return None
    return value if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", value) else None


def _stage_key(stage: str) -> str:
    stage = (stage or "").strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    return {"1": "stage1", "2": "stage2", "0": "stage0"}.get(stage, stage)


def _encoder_fields(config: dict, model_name: str) -> dict:
    model_type = config.get("model_type", "")
    model_class = MODEL_CLASSES.get(model_type, "AutoModel")
    stage, recipe = config.get("reasonclip_stage") or "", config.get("reasonclip_recipe") or ""
    base = config.get("reasonclip_base_model") or ""
    training = [STAGE_RECIPES.get(_stage_key(stage), f"Stage: {stage}." if stage else
                                  "No training stage recorded in config.json (reasonclip_stage is absent).")]
    if base:
        training.append(f"Starting checkpoint: `{base}`.")
    if recipe:
        training.append(f"Recipe: `{recipe}`.")
    if config.get("reasonclip_version"):
        training.append(f"Exported with reasonclip-llava {config['reasonclip_version']}.")
    processor = "AutoProcessor"
    padding = 'padding="max_length"' if model_type.startswith("siglip") else "padding=True"
    activation = "torch.sigmoid(logits)" if model_type.startswith("siglip") else "logits.softmax(dim=-1)"
    load_code = "\n".join([
        "import torch",
        "from PIL import Image",
        f"from transformers import {model_class}, {processor}",
        "",
        f'model = {model_class}.from_pretrained("{model_name}")',
        f'processor = {processor}.from_pretrained("{model_name}")',
        f'inputs = processor(text=["a photo of a dog", "a photo of a cat"], images=Image.open("image.jpg"), {padding}, return_tensors="pt")',
        "with torch.no_grad():",
        "    logits = model(**inputs).logits_per_image",
        f"probs = {activation}",
    ])
    stage_words = f" ({stage})" if stage else ""
    summary = (f"A plain `{model_class}`{stage_words} continually pretrained with reasoning supervision (ReasonCLIP / READ "
               f"recipes, reasonclip-llava){f' from `{base}`' if base else ''}. It loads with `{model_class}.from_pretrained` "
               "like any checkpoint of its family; the training-only heads are not included.")
    text_config, vision_config = config.get("text_config", {}), config.get("vision_config", {})
    family = {"clip": "clip", "siglip": "siglip", "siglip2": "siglip2"}.get(model_type, model_type or "dual-encoder")
    tags = ["reasonclip", family, "vision", "zero-shot-image-classification", "compositional-reasoning"]
    if stage:
        tags.append(_stage_key(stage))
    return {
        "template": ENCODER_TEMPLATE, "pipeline_tag": "zero-shot-image-classification", "tags": tags, "base_model": _hub_id(base),
        "title": f"{model_name}: ReasonCLIP{stage_words} {model_class}", "summary": summary, "model_class": model_class,
        "load_code": load_code, "training": "\n\n".join(training),
        "max_text_tokens": text_config.get("max_position_embeddings", "the base model's"),
        "image_size": vision_config.get("image_size", "the base model's"),
    }


def _llava_fields(config: dict, model_name: str) -> dict:
    vision = config.get("vision_config", {})
    tower = config.get("reasonclip_vision_tower") or config.get("mm_vision_tower") or vision.get("_name_or_path") or "its vision encoder"
    text = config.get("text_config", {})
    llm = text.get("_name_or_path") or text.get("model_type") or "its language model"
    base = config.get("reasonclip_base_model") or ""
    training = [LLAVA_RECIPE, f"Vision tower: `{tower}`; language model: `{llm}`."]
    if config.get("reasonclip_recipe"):
        training.append(f"Recipe: `{config['reasonclip_recipe']}`.")
    load_code = "\n".join([
        "import torch",
        "from PIL import Image",
        "from transformers import AutoProcessor, LlavaNextForConditionalGeneration",
        "",
        f'model = LlavaNextForConditionalGeneration.from_pretrained("{model_name}", torch_dtype=torch.bfloat16)',
        f'processor = AutoProcessor.from_pretrained("{model_name}")',
        'conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown here?"}]}]',
        "prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)",
        'inputs = processor(images=Image.open("image.jpg"), text=prompt, return_tensors="pt")',
        "output = model.generate(**inputs, max_new_tokens=64)",
        "print(processor.decode(output[0], skip_special_tokens=True))",
    ])
    return {
        "template": LLAVA_TEMPLATE, "pipeline_tag": "image-text-to-text", "base_model": _hub_id(base),
        "tags": ["llava-next", "reasonclip", "vision-language", "image-text-to-text"],
        "title": f"{model_name}: LLaVA-NeXT with a ReasonCLIP vision tower",
        "summary": f"A LLaVA-NeXT model whose vision tower is `{tower}` and whose language model is `{llm}`.",
        "vision_tower": f"`{tower}`", "load_code": load_code, "training": "\n\n".join(training),
    }


def render_model_card(model_dir: str | Path, results: Sequence[str | Path] = (), template: str | Path | None = None,
                      *, model_name: str | None = None) -> str:
    """The README.md text for a checkpoint (see write_model_card)."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"not a model checkpoint (no config.json): {model_dir}")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    model_name = model_name or model_dir.resolve().name
    is_llava = str(config.get("model_type", "")).startswith("llava")
    fields = (_llava_fields if is_llava else _encoder_fields)(config, model_name)
    rows = list(_latest(load_result_rows(results)).values()) if results else []

    front = {"library_name": "transformers", "pipeline_tag": fields.pop("pipeline_tag")}
    base_model = fields.pop("base_model")
    if base_model:
        front["base_model"] = base_model
    front["tags"] = fields.pop("tags")
    index = model_index(model_name, rows)
    if index:
        front["model-index"] = index
    fields["front_matter"] = yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip("\n")
    fields["results_table"] = _results_table(rows)

    template_path = find_template(fields.pop("template"), template)
    try:
        return Template(template_path.read_text(encoding="utf-8")).substitute(fields)
    except KeyError as error:
        raise ValueError(f"{template_path}: unknown placeholder ${error.args[0]} (known: {', '.join(sorted(fields))})") from None
    except ValueError as error:
        raise ValueError(f"{template_path}: {error} (write $$ for a literal $)") from None


def front_matter(text: str) -> dict:
    """The YAML front matter of a card, parsed."""
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    if not match:
        raise ValueError("model card has no YAML front matter")
    return yaml.safe_load(match.group(1))


def write_model_card(model_dir: str | Path, results: Sequence[str | Path] = (), template: str | Path | None = None,
                     *, model_name: str | None = None, overwrite: bool = False) -> Path:
    """Write README.md into the checkpoint: front matter with model-index, recipe, results, limitations.

    results: result JSONs (or folders) of this model: `reasonclip eval clip` runs and/or VQA summaries.
    A README.md that `reasonclip card` did not write (e.g. the export's short card, or a hand-written
    one) is kept as README.previous.md; an existing README.previous.md is never overwritten. With
    `overwrite` such a README.md is replaced instead. The card is written to a temp file and renamed.
    """
    from ..io_utils import atomic_write_text

    model_dir = Path(model_dir)
    text = render_model_card(model_dir, results, template, model_name=model_name)
    front_matter(text)  # fails loudly if a template broke the YAML
    path = model_dir / "README.md"
    if path.is_file() and not overwrite and MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        previous = model_dir / "README.previous.md"
        if previous.exists():
            raise FileExistsError(
                f"{path} was not written by `reasonclip card` and {previous} already exists; move one of them or pass --overwrite"
            )
        path.rename(previous)
    return atomic_write_text(path, text)
