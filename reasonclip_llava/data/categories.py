"""The 5 ReasonPro reasoning categories and the `trp_cls` label encodings.

Category order (index = position): ``CATEGORIES = ("S", "A", "H", "T", "P")``
    S spatial/geometric, A attribute/state, H human/action, T temporal/phase, P physical intuition.

A ReasonPro row carries two things: the category of the caption itself (one) and the categories an
annotator picked for the image (3). The published files (RISys-Lab/CLIPReasonPro-16M) hold them in two
columns, read by ``decode_reasonpro_labels``::

    trp_cls    = "P"               one letter: the caption's category
    trp_cls_ls = ["S", "P", "P"]   exactly 3 letters: the image's categories (repeats allowed; the
                                   image head's target is their multi-hot, as the authors build it)

Letters are exactly S, A, H, T, P there, as the authors' lookup table has them. Older single-column
encodings of `trp_cls` (both labels in one value) are read by ``decode_trp_cls``:

1. struct / dict (what `generate_synthetic` writes; a parquet ``struct<text: string, image: list<string>>``)::

       {"text": "S", "image": ["S", "A", "P"]}

2. flat list of 4, text category first: ``["S", "S", "A", "P"]``  (= text, image1, image2, image3)
3. integers 0..4 in the order S, A, H, T, P, in either layout: ``{"text": 0, "image": [0, 1, 4]}``
   or ``[0, 0, 1, 4]``
4. any of the above serialised as a JSON string (e.g. a JSONL file or a string column).

In these, letters are case-insensitive; full names ("spatial", "attribute", "human", "temporal", "physical") are
accepted too. Image categories must be distinct and non-empty (the published data uses 3). Anything
else raises ``ValueError`` naming the row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

CATEGORIES: tuple[str, ...] = ("S", "A", "H", "T", "P")
CATEGORY_NAMES: dict[str, str] = {
    "S": "spatial",
    "A": "attribute",
    "H": "human",
    "T": "temporal",
    "P": "physical",
}
_LOOKUP: dict[str, int] = {letter.lower(): i for i, letter in enumerate(CATEGORIES)}
_LOOKUP.update({name: CATEGORIES.index(letter) for letter, name in CATEGORY_NAMES.items()})


@dataclass(frozen=True)
class TrpLabels:
    """Decoded `trp_cls`: the caption's own category and the image's categories (indices into CATEGORIES)."""

    text: int
    image: tuple[int, ...]

    def image_multi_hot(self) -> list[float]:
        hot = [0.0] * len(CATEGORIES)
        for i in self.image:
            hot[i] = 1.0
        return hot


def category_index(value: object, where: str = "") -> int:
    """Index in CATEGORIES of a letter, a full name or an integer 0..4."""
    if isinstance(value, bool):  # bool is an int subclass; never a category
        raise ValueError(f"{where}: category {value!r} is not one of {CATEGORIES} or 0..4")
    if hasattr(value, "item") and not isinstance(value, str):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, int):
        if 0 <= value < len(CATEGORIES):
            return value
    elif isinstance(value, str) and value.strip().lower() in _LOOKUP:
        return _LOOKUP[value.strip().lower()]
    raise ValueError(f"{where}: category {value!r} is not one of {CATEGORIES} or 0..4")


def decode_trp_cls(value: object, where: str = "trp_cls") -> TrpLabels:
    """Decode any accepted `trp_cls` encoding (see module docstring); `where` names the row in errors."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: trp_cls string is not JSON ({err.msg}): {value!r}") from None
    if isinstance(value, Mapping):
        if "text" not in value or "image" not in value:
            raise ValueError(f"{where}: trp_cls dict needs keys 'text' and 'image', got {sorted(value)}")
        text, image = value["text"], value["image"]
        if isinstance(image, (str, bytes)) or not isinstance(image, Sequence) and not hasattr(image, "tolist"):
            raise ValueError(f"{where}: trp_cls['image'] must be a list of categories, got {image!r}")
        image = list(image.tolist() if hasattr(image, "tolist") else image)
    elif isinstance(value, Sequence) or hasattr(value, "tolist"):
        flat = list(value.tolist() if hasattr(value, "tolist") else value)
        if len(flat) != 1 + 3:
            raise ValueError(f"{where}: flat trp_cls must be [text, img1, img2, img3] (4 entries), got {flat!r}")
        text, image = flat[0], flat[1:]
    else:
        raise ValueError(f"{where}: trp_cls must be a dict, a list of 4 or a JSON string, got {value!r}")
    if not image:
        raise ValueError(f"{where}: trp_cls has no image categories")
    image_idx = tuple(category_index(c, where) for c in image)
    if len(set(image_idx)) != len(image_idx):
        raise ValueError(f"{where}: trp_cls image categories repeat: {image!r}")
    return TrpLabels(text=category_index(text, where), image=image_idx)


def encode_trp_cls(text: str, image: Sequence[str]) -> dict:
    """The struct encoding written by this package: {"text": "S", "image": ["S", "A", "P"]}."""
    labels = decode_trp_cls({"text": text, "image": list(image)}, "encode_trp_cls")
    return {"text": CATEGORIES[labels.text], "image": [CATEGORIES[i] for i in labels.image]}


PUBLISHED_IMAGE_CATEGORIES = 3  # trp_cls_ls length in the published ReasonPro files


def decode_reasonpro_labels(trp_cls: object, trp_cls_ls: object, where: str = "trp_cls") -> TrpLabels:
    """The published pair of columns: `trp_cls` one letter, `trp_cls_ls` a list of exactly 3 letters of SAHTP."""

    def letter(value: object, column: str) -> int:
        if not isinstance(value, str) or value not in CATEGORIES:
            raise ValueError(f"{where}: {column} {value!r} is not one of the letters {'/'.join(CATEGORIES)}")
        return CATEGORIES.index(value)

    if hasattr(trp_cls_ls, "tolist"):
        trp_cls_ls = trp_cls_ls.tolist()
    if not isinstance(trp_cls_ls, (list, tuple)) or len(trp_cls_ls) != PUBLISHED_IMAGE_CATEGORIES:
        raise ValueError(f"{where}: trp_cls_ls must be a list of exactly {PUBLISHED_IMAGE_CATEGORIES} letters, got {trp_cls_ls!r}")
    return TrpLabels(text=letter(trp_cls, "trp_cls"), image=tuple(letter(c, "trp_cls_ls") for c in trp_cls_ls))
