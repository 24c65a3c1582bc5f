"""RCLIP-Bench as released (Hub `RISys-Lab/RCLIP-Bench`), scored as the authors' `eval/eval_RCLIP.py`.

Layout: one HF `datasets` parquet per version, `data/v1-00000-of-00001.parquet`, `v2-…`, `v3-…` (a
folder holding them, the `data/` folder itself, or single files). One row per image: `id`,
`image_name`, `text`, `version`, `sets`: list<struct<tag, gt, neg: list<string> (4)>>, and `image`:
the HF `Image()` struct<bytes, path> with the image bytes embedded (no image folder needed; a row
whose bytes are null is looked up by `path` under --images).

Scoring (METHOD.md): for every set, texts [gt, neg1..neg4], score = exp(logit_scale) * cos(image,
text), prediction = argmax, which takes the FIRST of tied maxima, so a tie goes to gt; accuracy per
version, per tag and overall. The retrieval variant (`eval_RCLIP_retrieval.py`) ranks the gt captions
only: image -> text over every gt of the version (a hit when any of the image's own gts is in the
top k), text -> image with each gt as a query; R@1/5/10, cosine similarity.

Deliberate difference: the authors' loader silently drops a malformed set or an undecodable image; here
either stops the run with one line naming the file, row and set, so a score never covers fewer items
than the file holds without saying so.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from .embed import EncoderEmbedder, ImageRef
from .retrieval import RECALL_AT, _ranks
from .scoring import MatchItem, option_scores, summarize
from .sources import find_image, percent

RCLIP_COLUMNS = ("id", "image_name", "text", "version", "sets", "image")
NUM_NEGATIVES = 4
_SHARD = re.compile(r"^(?P<version>.+?)-\d{5}-of-\d{5}$")  # datasets' shard name: v1-00000-of-00001


@dataclass(frozen=True)
class RclipSet:
    version: str
    tag: str
    item: MatchItem  # texts = (gt, neg1, ..., neg4)


def _parquet_files(data: Path) -> list[Path]:
    files = sorted(data.rglob("*.parquet")) if data.is_dir() else [data]
    if not files:
        raise FileNotFoundError(f"no RCLIP-Bench parquet files at {data} (expected data/v1-00000-of-00001.parquet, ...)")
    return files


def _version(path: Path, row: dict) -> str:
    # The split name in the shard's file name is what the authors evaluate by; a single file
    # without one (our synthetic writer's, a user's copy) carries it in the `version` column.
    match = _SHARD.match(path.stem)
    if match:
        return match.group("version")
    version = row.get("version")
    return str(version) if version not in (None, "") else path.stem


def _image_ref(row: dict, where: str, images: Path | None) -> ImageRef:
    image = row.get("image")
    if not isinstance(image, dict):
        raise ValueError(f"{where}: field 'image' should be the HF Image struct {{bytes, path}}")
    if image.get("bytes"):
        return ImageRef(Path(where), data=bytes(image["bytes"]))
    name = image.get("path") or row.get("image_name")
    if not name:
        raise ValueError(f"{where}: image has neither bytes nor a path")
    if images is None:
        raise ValueError(f"{where}: image bytes are not embedded; pass --images, the folder holding {name}")
    return find_image(images, [name, Path(name).name], where)


def _set(value, where: str) -> tuple[str, str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a struct {{tag, gt, neg}}")
    tag, gt, neg = value.get("tag"), value.get("gt"), value.get("neg")
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"{where}: missing tag")
    if not isinstance(gt, str) or not gt.strip():
        raise ValueError(f"{where}: missing gt caption")
    if not isinstance(neg, list) or len(neg) != NUM_NEGATIVES or not all(isinstance(n, str) and n.strip() for n in neg):
        count = len(neg) if isinstance(neg, list) else type(neg).__name__
        raise ValueError(f"{where}: neg should hold {NUM_NEGATIVES} non-empty captions, got {count}")
    return tag, gt.strip(), tuple(n.strip() for n in neg)  # stripped, as the authors' validate_set_item


def read_rclip_bench(data: Path, images: Path | None = None) -> list[RclipSet]:
    """Every set of every row of the released parquet file(s), in file and row order."""
    import pyarrow.parquet as pq

    sets: list[RclipSet] = []
    for path in _parquet_files(data):
        if not path.is_file():
            raise FileNotFoundError(f"benchmark file not found: {path}")
        columns = pq.read_schema(path).names
        missing = [c for c in ("sets", "image") if c not in columns]
        if missing:
            raise ValueError(f"{path}: not an RCLIP-Bench parquet (expected columns {', '.join(RCLIP_COLUMNS)}; "
                             f"found {', '.join(columns)})")
        rows = pq.read_table(path).to_pylist()
        if not rows:
            raise ValueError(f"{path}: no rows")
        for index, row in enumerate(rows):
            row_id = str(row.get("id") if row.get("id") not in (None, "") else index)
            where = f"{path.name} row {index} (id {row_id})"
            image = _image_ref(row, where, images)
            row_sets = row.get("sets")
            if not isinstance(row_sets, list) or not row_sets:
                raise ValueError(f"{where}: no sets")
            version = _version(path, row)
            for number, value in enumerate(row_sets):
                tag, gt, negatives = _set(value, f"{where} set {number}")
                sets.append(RclipSet(version, tag, MatchItem(f"{row_id}/{number}", image, (gt, *negatives))))
    return sets


def _accuracy(flags: list[bool]) -> dict:
    return {"n": len(flags), "accuracy": percent(sum(flags), len(flags))}


def rclip_bench(embedder: EncoderEmbedder, data: Path, images: Path | None) -> dict:
    """5-way accuracy per version, per tag and overall (eval_RCLIP.py's decision rule)."""
    sets = read_rclip_bench(data, images)
    items = [s.item for s in sets]
    scores = embedder.logit_scale() * option_scores(embedder, items)  # (N, 5), gt in column 0
    predicted = scores.argmax(dim=1)  # first maximum: a tie goes to gt
    correct = (predicted == 0).tolist()

    by_version: dict[str, list[bool]] = defaultdict(list)
    by_version_tag: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    by_tag: dict[str, list[bool]] = defaultdict(list)
    for rclip_set, flag in zip(sets, correct):
        by_version[rclip_set.version].append(flag)
        by_version_tag[rclip_set.version][rclip_set.tag].append(flag)
        by_tag[rclip_set.tag].append(flag)
    subsets = {version: _accuracy(flags) for version, flags in sorted(by_version.items())}
    tags = {version: {tag: _accuracy(f) for tag, f in sorted(per_tag.items())} for version, per_tag in sorted(by_version_tag.items())}
    rows = [{"subset": s.version, "id": s.item.id, "tag": s.tag, "predicted": int(p), "correct": c,
             "scores": [round(float(v), 6) for v in row]} for s, p, c, row in zip(sets, predicted, correct, scores)]
    result = summarize(subsets, {"RCLIP-Bench": ("micro", "accuracy")}, rows,
                       tags=tags, tags_overall={tag: _accuracy(f) for tag, f in sorted(by_tag.items())})
    result["aggregation"]["RCLIP-Bench"] = (f"micro over all {len(sets)} sets of {', '.join(subsets)} "
                                            "(argmax of logit_scale*cosine, a tie goes to gt, as eval_RCLIP.py)")
    if len(subsets) > 1:  # the paper reports each version on its own
        for version, subset in subsets.items():
            result["headline"][f"RCLIP-Bench {version}"] = subset["accuracy"]
            result["aggregation"][f"RCLIP-Bench {version}"] = f"the {subset['n']} sets of {version}"
    return result


def rclip_bench_retrieval(embedder: EncoderEmbedder, data: Path, images: Path | None) -> dict:
    """eval_RCLIP_retrieval.py: gt-only text pool per version; I2T and T2I recall@1/5/10."""
    sets = read_rclip_bench(data, images)
    subsets, rows = {}, []
    for version in sorted({s.version for s in sets}):
        members = [s for s in sets if s.version == version]
        refs = list(dict.fromkeys(s.item.image for s in members))  # images in row order
        owner = torch.tensor([refs.index(s.item.image) for s in members])
        image_emb = embedder.embed_images(refs)
        text_emb = embedder.embed_texts([s.item.texts[0] for s in members])
        counts = torch.bincount(owner, minlength=len(refs))
        positives = torch.full((len(refs), int(counts.max())), -1, dtype=torch.long)
        slot = torch.arange(len(owner)) - (torch.cumsum(counts, 0) - counts)[owner]
        positives[owner, slot] = torch.arange(len(owner))
        i2t, t2i = _ranks(image_emb, text_emb, positives), _ranks(text_emb, image_emb, owner[:, None])
        metrics = {f"i2t_recall@{k}": percent((i2t < k).sum(), len(refs)) for k in RECALL_AT}
        metrics |= {f"t2i_recall@{k}": percent((t2i < k).sum(), len(members)) for k in RECALL_AT}
        subsets[version] = {"n": len(refs), "n_texts": len(members), **metrics}
        rows += [{"subset": f"{version}/image_to_text", "id": str(ref.path), "rank": int(r)} for ref, r in zip(refs, i2t)]
        rows += [{"subset": f"{version}/text_to_image", "id": s.item.id, "rank": int(r)} for s, r in zip(members, t2i)]
    result = summarize(subsets, {}, rows)
    for version, subset in subsets.items():
        for direction in ("I2T", "T2I"):
            label = f"RCLIP-Bench {version} {direction} R@1"
            result["headline"][label] = subset[f"{direction.lower()}_recall@1"]
            result["aggregation"][label] = f"{direction} queries of {version}; gt captions only, cosine, hit = a positive in the top k"
    return result
