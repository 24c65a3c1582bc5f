"""Compositional image-text matching benchmarks, each read in its released format.

Decision rules follow the official scorers (EVAL.md), including how ties fall:
SugarCrepe / SugarCrepe++ / VALSE / ARO / Winoground use strict ">" (a tie is wrong: SugarCrepe's
main_eval.py `1 if pos_score > neg_score else 0`, VALSE's pairwise accuracy `caption > foil`); WhatsUp takes
np.argmax over the options with the correct one first (a tie goes to the correct option); CREPE and
RCLIP-Bench (rclip_bench.py) take argmax over the options with the correct one first.

Headlines name their aggregation (the result's "aggregation"). Beside our macro averages, VALSE and
WhatsUp also get READ's numbers (READ-CLIP `src/runners/evaluator.py`): VALSE micro over all items and
WhatsUp as the mean of 3 groups (Controlled-A+B, COCO-QA, VG-QA, each micro over its items), both with
READ's decision argmax == 0 (a tie counts for the caption).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import torch

from .embed import EncoderEmbedder
from .scoring import MatchItem, item_rows, option_scores, prefetch, summarize
from .sources import (
    field,
    find_image,
    mean,
    percent,
    read_csv,
    read_json,
    read_jsonl,
    subset_files,
    text_field,
)


def _trailing_paths(path: str) -> list[str]:
    # "data/controlled_images/a.jpeg" -> itself, "controlled_images/a.jpeg", "a.jpeg": released JSONs
    # carry the authors' relative paths, users unpack images under their own root.
    parts = Path(path).parts
    return [str(Path(*parts[i:])) for i in range(len(parts))]


def _require_items(items: list, path: Path) -> list:
    if not items:
        raise ValueError(f"{path}: no items")
    return items


# ---- SugarCrepe -------------------------------------------------------------------------------------

SUGARCREPE_SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
SUGARCREPE_GROUPS = {"add": ("add_att", "add_obj"), "replace": ("replace_att", "replace_obj", "replace_rel"),
                     "swap": ("swap_att", "swap_obj")}


def sugarcrepe(embedder: EncoderEmbedder, data: Path, images: Path) -> dict:
    """{id: {filename, caption, negative_caption}} per subset; right when sim(I, caption) > sim(I, negative)."""
    parsed = {}
    for name, path in subset_files(data, SUGARCREPE_SUBSETS).items():
        entries = read_json(path)
        if not isinstance(entries, dict):
            raise ValueError(f"{path}: expected an object {{id: item}}, got {type(entries).__name__}")
        items = []
        for key, row in entries.items():
            where = f"{path} item {key}"
            image = find_image(images, [text_field(row, "filename", where)], where)
            items.append(MatchItem(str(key), image, (text_field(row, "caption", where), text_field(row, "negative_caption", where))))
        parsed[name] = _require_items(items, path)
    prefetch(embedder, parsed)
    subsets, item_records = {}, []
    for name, items in parsed.items():
        scores = option_scores(embedder, items)
        correct = scores[:, 0] > scores[:, 1]
        subsets[name] = {"n": len(items), "accuracy": percent(correct.sum(), len(items))}
        item_records += item_rows(name, items, scores, correct=correct)
    groups = {group: mean([subsets[s]["accuracy"] for s in members])
              for group, members in SUGARCREPE_GROUPS.items() if all(s in subsets for s in members)}
    return summarize(subsets, {"SugarCrepe": ("macro", "accuracy")}, item_records, groups=groups)


# ---- SugarCrepe++ -----------------------------------------------------------------------------------

SUGARCREPE_PP_SUBSETS = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def sugarcrepe_pp(embedder: EncoderEmbedder, data: Path, images: Path) -> dict:
    """[{id, filename, caption, caption2, negative_caption}] per subset; ITT and TOT as in EVAL.md."""
    parsed = {}
    for name, path in subset_files(data, SUGARCREPE_PP_SUBSETS).items():
        entries = read_json(path)
        entries = list(entries.values()) if isinstance(entries, dict) else entries
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a list of items, got {type(entries).__name__}")
        items = []
        for index, row in enumerate(entries):
            where = f"{path} item {row.get('id', index) if isinstance(row, dict) else index}"
            image = find_image(images, [text_field(row, "filename", where)], where)
            texts = tuple(text_field(row, key, where) for key in ("caption", "caption2", "negative_caption"))
            items.append(MatchItem(str(row.get("id", index)), image, texts))
        parsed[name] = _require_items(items, path)
    prefetch(embedder, parsed)
    subsets, item_records = {}, []
    for name, items in parsed.items():
        image_text = option_scores(embedder, items)  # columns: P1, P2, N
        p1, p2, neg = (embedder.embed_texts([item.texts[k] for item in items]) for k in range(3))
        p1_p2, p1_n, p2_n = (p1 * p2).sum(-1), (p1 * neg).sum(-1), (p2 * neg).sum(-1)
        itt = (image_text[:, 0] > image_text[:, 2]) & (image_text[:, 1] > image_text[:, 2])
        tot = (p1_p2 > p1_n) & (p1_p2 > p2_n)
        subsets[name] = {"n": len(items), "itt": percent(itt.sum(), len(items)), "tot": percent(tot.sum(), len(items))}
        text_text = torch.stack([p1_p2, p1_n, p2_n], dim=1).tolist()
        item_records += item_rows(name, items, image_text, itt=itt, tot=tot, text_scores=[[round(v, 6) for v in r] for r in text_text])
    return summarize(subsets, {"SugarCrepe++ ITT": ("macro", "itt"), "SugarCrepe++ TOT": ("macro", "tot")}, item_records)


# ---- WhatsUp ----------------------------------------------------------------------------------------

WHATSUP_FILES = {
    "controlled_a": "controlled_images_dataset.json",
    "controlled_b": "controlled_clevr_dataset.json",
    "coco_qa_one": "coco_qa_one_obj.json",
    "coco_qa_two": "coco_qa_two_obj.json",
    "vg_qa_one": "vg_qa_one_obj.json",
    "vg_qa_two": "vg_qa_two_obj.json",
}
# READ's grouping (by file-name prefix: coco*, vg*, everything else)
WHATSUP_READ_GROUPS = {"controlled": ("controlled_a", "controlled_b"), "coco": ("coco_qa_one", "coco_qa_two"),
                       "vg": ("vg_qa_one", "vg_qa_two")}


def _whatsup_item(name: str, row, index: int, path: Path, images: Path) -> MatchItem:
    where = f"{path} item {index}"
    if name.startswith("controlled"):
        image_path = text_field(row, "image_path", where)
        options = field(row, "caption_options", where, list)
        image = find_image(images, _trailing_paths(image_path), where)
    else:  # [image_id, correct caption, wrong caption]
        if not isinstance(row, list) or len(row) < 3:
            raise ValueError(f"{where}: expected [image_id, caption, caption, ...]")
        image_id, options = row[0], row[1:]
        if name.startswith("coco"):
            stem = f"{int(image_id):012d}.jpg"
            image = find_image(images, [f"val2017/{stem}", stem], where)
        else:
            image = find_image(images, [f"vg_images/{image_id}.jpg", f"{image_id}.jpg"], where)
    if len(options) < 2 or not all(isinstance(option, str) and option.strip() for option in options):
        raise ValueError(f"{where}: caption options must be at least two non-empty strings")
    return MatchItem(str(index), image, tuple(options))


def whatsup(embedder: EncoderEmbedder, data: Path, images: Path) -> dict:
    """Controlled-A/B, COCO-QA and VG-QA one/two objects; the first option is correct; macro over subsets."""
    parsed = {}
    for name, path in subset_files(data, tuple(WHATSUP_FILES), file_names=WHATSUP_FILES).items():
        entries = read_json(path)
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a list of items, got {type(entries).__name__}")
        parsed[name] = _require_items([_whatsup_item(name, row, i, path, images) for i, row in enumerate(entries)], path)
    prefetch(embedder, parsed)
    subsets, item_records = {}, []
    for name, items in parsed.items():
        scores = option_scores(embedder, items)
        correct = scores.argmax(dim=1) == 0  # argmax takes the first of tied maxima
        subsets[name] = {"n": len(items), "accuracy": percent(correct.sum(), len(items)), "n_correct": int(correct.sum())}
        item_records += item_rows(name, items, scores, correct=correct)
    groups = {}
    for group, members in WHATSUP_READ_GROUPS.items():
        present = [subsets[m] for m in members if m in subsets]
        if present:
            groups[group] = percent(sum(s["n_correct"] for s in present), sum(s["n"] for s in present))
    result = summarize(subsets, {"WhatsUp": ("macro", "accuracy")}, item_records, groups=groups)
    if groups:
        result["headline"]["WhatsUp (READ, 3 groups)"] = mean(list(groups.values()))
        result["aggregation"]["WhatsUp (READ, 3 groups)"] = (
            f"READ's: mean over the groups {', '.join(groups)} (controlled = Controlled-A+B, coco = COCO-QA one+two, "
            "vg = VG-QA one+two), each micro over its items; argmax == 0")
    return result


# ---- VALSE ------------------------------------------------------------------------------------------

VALSE_MIN_VOTES = 2  # a foil is valid when >= 2 of 3 annotators chose the caption and not the foil


def _data_files(data: Path, pattern: str, what: str, recursive: bool = False) -> list[Path]:
    """`data` itself, or the files matching `pattern` in the folder `data` (sorted)."""
    files = sorted(data.rglob(pattern) if recursive else data.glob(pattern)) if data.is_dir() else [data]
    if not files or not all(path.is_file() for path in files):
        raise FileNotFoundError(f"no {what} files ({pattern}) at {data}")
    return files


def _first_text(value, key: str, where: str) -> str:
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field {key!r} should be a non-empty string (or list of strings)")
    return value


def valse(embedder: EncoderEmbedder, data: Path, images: Path) -> dict:
    """One JSON per piece {id: {dataset, image_file, caption, foil, mturk}}; caption vs foil on valid items."""
    files = _data_files(data, "*.json", "VALSE piece")
    parsed, dropped = {}, {}
    for path in files:
        entries = read_json(path)
        if not isinstance(entries, dict):
            raise ValueError(f"{path}: expected an object {{id: item}}, got {type(entries).__name__}")
        items, dropped[path.stem] = [], 0
        for key, row in entries.items():
            where = f"{path} item {key}"
            votes = field(field(row, "mturk", where, dict), "caption", f"{where} mturk", (int, float))
            if votes < VALSE_MIN_VOTES:
                dropped[path.stem] += 1
                continue
            caption = _first_text(field(row, "caption", where), "caption", where)
            foil = _first_text(row["foil"] if row.get("foil") is not None else field(row, "foils", where), "foil", where)
            image_file = text_field(row, "image_file", where)
            candidates = [f"{row['dataset']}/{image_file}"] if isinstance(row.get("dataset"), str) else []
            items.append(MatchItem(str(key), find_image(images, candidates + [image_file], where), (caption, foil)))
        parsed[path.stem] = _require_items(items, path)
    prefetch(embedder, parsed)
    subsets, item_records, read_hits = {}, [], []
    for name, items in parsed.items():
        scores = option_scores(embedder, items)
        correct = scores[:, 0] > scores[:, 1]  # the official rule: a tie is wrong
        read_correct = scores.argmax(dim=1) == 0  # READ's rule: a tie counts for the caption
        subsets[name] = {"n": len(items), "n_dropped": dropped[name], "accuracy": percent(correct.sum(), len(items))}
        read_hits.append(int(read_correct.sum()))
        item_records += item_rows(name, items, scores, correct=correct, read_correct=read_correct)
    result = summarize(subsets, {"VALSE": ("macro", "accuracy")}, item_records, n_dropped=sum(dropped.values()))
    total = sum(subset["n"] for subset in subsets.values())
    result["headline"]["VALSE (READ, micro)"] = percent(sum(read_hits), total)
    result["aggregation"]["VALSE (READ, micro)"] = (f"READ's: micro over all {total} valid items of the "
                                                    f"{len(subsets)} pieces; argmax == 0 (a tie counts for the caption)")
    return result


# ---- CREPE ------------------------------------------------------------------------------------------

CREPE_RECALL_AT = (1, 3, 5, 10)
CREPE_COLUMNS = ("image_id", "x", "y", "width", "height", "caption", "hard_negs")


def _crepe_item(row: dict, index: int, path: Path, images: Path) -> MatchItem:
    where = f"{path} row {index + 2}"  # + header line, 1-based
    for column in CREPE_COLUMNS:
        if not str(row.get(column) or "").strip():
            raise ValueError(f"{where}: missing column {column!r}")
    try:
        box = tuple(float(row[key]) for key in ("x", "y", "width", "height"))
        negatives = ast.literal_eval(row["hard_negs"])
    except (ValueError, SyntaxError):
        raise ValueError(f"{where}: malformed box or hard_negs") from None
    if not isinstance(negatives, (list, tuple)) or not negatives or not all(isinstance(n, str) for n in negatives):
        raise ValueError(f"{where}: hard_negs should be a non-empty list of strings")
    image_id = row["image_id"].strip()
    image_id = image_id[:-2] if image_id.endswith(".0") else image_id  # pandas writes int ids as floats
    candidates = [f"{image_id}.jpg", f"VG_100K/{image_id}.jpg", f"VG_100K_2/{image_id}.jpg"]
    return MatchItem(str(index), find_image(images, candidates, where, box=box), (row["caption"], *negatives))


def crepe(embedder: EncoderEmbedder, data: Path, images: Path) -> dict:
    """CSV per (negative type, complexity); one image vs its caption + hard negatives; recall@k."""
    files = _data_files(data, "*.csv", "CREPE", recursive=True)
    parsed = {}
    for path in files:
        name = path.relative_to(data).with_suffix("").as_posix() if data.is_dir() else path.stem
        parsed[name] = _require_items([_crepe_item(row, i, path, images) for i, row in enumerate(read_csv(path))], path)
    prefetch(embedder, parsed)
    subsets, item_records = {}, []
    for name, items in parsed.items():
        scores = option_scores(embedder, items)
        rank = (scores[:, 1:] > scores[:, :1]).sum(dim=1)  # -inf padding never outranks
        subsets[name] = {"n": len(items), **{f"recall@{k}": percent((rank < k).sum(), len(items)) for k in CREPE_RECALL_AT}}
        item_records += item_rows(name, items, scores, rank=rank)
    return summarize(subsets, {"CREPE R@1": ("macro", "recall@1")}, item_records)


# ---- Winoground -------------------------------------------------------------------------------------


def _winoground_image(images: Path, name: str, where: str):
    return find_image(images, [f"{name}.png", f"{name}.jpg", name, f"images/{name}.png"], where)


def winoground(embedder: EncoderEmbedder, data: Path, images: Path) -> dict:
    """examples.jsonl {id, image_0, image_1, caption_0, caption_1}; text / image / group scores."""
    path = data / "examples.jsonl" if data.is_dir() else data
    examples = read_jsonl(path)
    items, ids, tags = [], [], []  # two items per example: (caption_0, caption_1) against image_0, image_1
    for index, example in enumerate(examples):
        ids.append(str(example.get("id", index)) if isinstance(example, dict) else str(index))
        where = f"{path} id {ids[-1]}"
        captions = (text_field(example, "caption_0", where), text_field(example, "caption_1", where))
        for key in ("image_0", "image_1"):
            image = _winoground_image(images, text_field(example, key, where), where)
            items.append(MatchItem(f"{ids[-1]}/{key}", image, captions))
        tags.append(example.get("collapsed_tag"))
    _require_items(items, path)
    prefetch(embedder, {"all": items})
    scores = option_scores(embedder, items).view(-1, 2, 2)  # [example, image, caption]
    c0_i0, c1_i0, c0_i1, c1_i1 = scores[:, 0, 0], scores[:, 0, 1], scores[:, 1, 0], scores[:, 1, 1]
    flags = {"text": (c0_i0 > c1_i0) & (c1_i1 > c0_i1), "image": (c0_i0 > c0_i1) & (c1_i1 > c1_i0)}
    flags["group"] = flags["text"] & flags["image"]
    # Subsets by collapsed_tag (Object / Relation / Both) when every row has one; the headline is over all.
    if not all(isinstance(tag, str) and tag for tag in tags):
        tags = ["all"] * len(tags)
    by_tag: dict[str, list[int]] = defaultdict(list)
    for index, tag in enumerate(tags):
        by_tag[tag].append(index)
    subsets = {tag: {"n": len(indices), **{name: percent(flag[torch.tensor(indices)].sum(), len(indices)) for name, flag in flags.items()}}
               for tag, indices in sorted(by_tag.items())}
    item_records = [{"subset": tag, "id": example_id, **{name: bool(flag[i]) for name, flag in flags.items()},
                     "scores": [[round(v, 6) for v in pair] for pair in scores[i].tolist()]}  # [image][caption]
                    for i, (example_id, tag) in enumerate(zip(ids, tags))]
    headline = {f"Winoground {name}": ("micro", name) for name in flags}
    return summarize(subsets, headline, item_records)


# ---- ARO (VG-Relation, VG-Attribution) ---------------------------------------------------------------

ARO_FILES = {"vg_relation": "visual_genome_relation.json", "vg_attribution": "visual_genome_attribution.json"}
ARO_MIN_ATTRIBUTE_COUNT = 25  # the official VG-Attribution scorer averages attribute pairs seen >= 25 times


def aro(embedder: EncoderEmbedder, data: Path, images: Path) -> dict:
    """[{image_path, bbox_x/y/w/h, true_caption, false_caption, relation_name | attributes}] per subset."""
    parsed, groups = {}, {}
    for name, path in subset_files(data, tuple(ARO_FILES), file_names=ARO_FILES).items():
        entries = read_json(path)
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a list of items, got {type(entries).__name__}")
        items, groups[name] = [], []
        for index, row in enumerate(entries):
            where = f"{path} item {index}"
            box = tuple(float(field(row, key, where, (int, float))) for key in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
            image_path = text_field(row, "image_path", where)
            image = find_image(images, [image_path, f"images/{image_path}"], where, box=box)
            items.append(MatchItem(str(index), image, (text_field(row, "true_caption", where), text_field(row, "false_caption", where))))
            if name == "vg_relation":
                groups[name].append(str(row.get("relation_name", "")))
            else:
                attributes = row.get("attributes") or []
                groups[name].append("_".join(map(str, attributes)))
        parsed[name] = _require_items(items, path)
    prefetch(embedder, parsed)
    subsets, item_records = {}, []
    for name, items in parsed.items():
        scores = option_scores(embedder, items)
        correct = (scores[:, 0] > scores[:, 1]).tolist()
        item_records += item_rows(name, items, scores, correct=correct, group=groups[name])
        by_group: dict[str, list[bool]] = defaultdict(list)
        for group, flag in zip(groups[name], correct):
            by_group[group].append(flag)
        min_count = ARO_MIN_ATTRIBUTE_COUNT if name == "vg_attribution" else 1
        kept = [percent(sum(flags), len(flags)) for flags in by_group.values() if len(flags) >= min_count]
        subsets[name] = {"n": len(items), "accuracy": percent(sum(correct), len(items)),
                         "macro_accuracy": mean(kept) if kept else None, "n_groups": len(kept)}
    headline = {}
    for name, label in (("vg_relation", "ARO VG-Relation"), ("vg_attribution", "ARO VG-Attribution")):
        if name in subsets:
            subset = subsets[name]
            headline[label] = subset["macro_accuracy"] if subset["macro_accuracy"] is not None else subset["accuracy"]
    result = summarize(subsets, {}, item_records)
    result["headline"] = headline
    result["aggregation"] = {label: (f"macro over attribute pairs seen >= {ARO_MIN_ATTRIBUTE_COUNT} times (official), "
                                     "else item accuracy") if "Attribution" in label else "macro over relations (official)"
                             for label in headline}
    return result
