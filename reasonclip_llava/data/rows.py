"""Row sources (parquet via pyarrow, JSONL) and the per-schema turning of a row into training texts.

A schema validates one row and picks its texts for a given (seed, epoch, key), or for one of the row's
numbered caption pairs (``pair=``, the published `all_pairs` samples); the same schemas serve the
map-style datasets (``datasets.py``) and the webdataset stream (``wds.py``). Rows are numbered from 0
in file order; every error names the file and that row number (and the JSONL line).

The published schemas (METHOD.md) and the schema that reads each:

    ReasonLite-42M   id, image_path, tb [3], trl [3]                 LiteSchema (stage 1); ReadSchema(("trl",)) (stage 0)
    ReasonPro-16M    image_path, trp, trp_cls (letter), trp_cls_ls [3] ProSchema (stage 2); ReadSchema(("trp",)) (stage 0)
    CC12M-Refined    image_path, tb [3]                              ReadSchema(("tb",)) (stage 0 descriptive)
    COCO (READ)      image_path, captions [5]                        ReadSchema(("captions",))

Columns a schema does not name (``id``) are not read.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..io_utils import read_utf8
from .categories import CATEGORIES, decode_reasonpro_labels, decode_trp_cls
from .hard_negatives import negative_generator, stable_seed

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".json")


class RowTable:
    """Rows of one parquet or JSONL file, checked for required fields, read by index.

    Parquet stays an Arrow table (memory-mapped, reopened lazily after pickling, so DataLoader
    workers do not copy it); JSONL is parsed whole (meant for small runs).
    """

    def __init__(self, path: str | Path, required: Sequence[str], optional: Sequence[str] = ()):
        self.path = Path(path)
        self.required = tuple(required)
        self.optional = tuple(optional)
        if not self.path.is_file():
            raise FileNotFoundError(f"data file not found: {self.path}")
        if self.path.suffix not in PARQUET_SUFFIXES + JSONL_SUFFIXES:
            raise ValueError(f"{self.path}: unknown data format (expected {PARQUET_SUFFIXES + JSONL_SUFFIXES})")
        self._table = None
        self._rows: list[dict] | None = None
        self._load(validate=True)

    @property
    def is_parquet(self) -> bool:
        return self.path.suffix in PARQUET_SUFFIXES

    def _load(self, validate: bool) -> None:
        if self.is_parquet:
            names = pq.read_schema(self.path).names
            missing = [c for c in self.required if c not in names]
            if missing:
                raise ValueError(f"{self.path}: missing column(s) {missing}; found {names}")
            columns = list(dict.fromkeys([*self.required, *(c for c in self.optional if c in names)]))
            self._table = pq.read_table(self.path, columns=columns, memory_map=True)
            if validate:
                for column in self.required:
                    if self._table.column(column).null_count:
                        first = self._table.column(column).is_null().to_pylist().index(True)
                        raise ValueError(f"{self.where(first)}: field {column!r} is null")
        else:
            self._rows = []
            for line_number, line in enumerate(read_utf8(self.path).splitlines(), start=1):
                if not line.strip():
                    continue
                where = f"{self.path} row {len(self._rows)} (line {line_number})"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
                for column in self.required:
                    if row.get(column) is None:
                        raise ValueError(f"{where}: missing field {column!r}")
                self._rows.append(row)

    def __len__(self) -> int:
        if self.is_parquet:
            self._ensure_open()
            return self._table.num_rows
        return len(self._rows)

    def _ensure_open(self) -> None:
        if self._table is None and self._rows is None:
            self._load(validate=False)

    def row(self, index: int) -> dict[str, Any]:
        self._ensure_open()
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: row {index} out of range (0..{len(self) - 1})")
        if self.is_parquet:
            return {name: self._table.column(name)[index].as_py() for name in self._table.column_names}
        return self._rows[index]

    def where(self, index: int) -> str:
        return f"{self.path} row {index}"

    def list_lengths(self, column: str) -> np.ndarray:
        """Entries per row of a caption column (a lone string counts as one), without building Python rows."""
        self._ensure_open()
        if not self.is_parquet:
            return np.array([1 if isinstance(row[column], str) else len(row[column]) for row in self._rows], dtype=np.int64)
        values = self._table.column(column)
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            return np.ones(len(values), dtype=np.int64)
        return pc.list_value_length(values).to_numpy(zero_copy_only=False).astype(np.int64)

    def column_values(self, column: str) -> pa.ChunkedArray:
        """One whole column as Arrow (JSONL: built from the parsed rows)."""
        self._ensure_open()
        if self.is_parquet:
            return self._table.column(column)
        return pa.chunked_array([pa.array([row[column] for row in self._rows])])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.is_parquet:
            state["_table"] = None  # reopened (memory-mapped) in the worker
        return state


def caption_list(row: dict, column: str, where: str) -> list[str]:
    """A non-empty list of non-empty strings from `row[column]` (a lone string counts as a list of one)."""
    value = row.get(column)
    if isinstance(value, str):
        value = [value]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: field {column!r} must be a non-empty list of non-empty strings, got {value!r:.120}")
    return list(value)


def _cycle_choice(n: int, seed: int, key: object, epoch: int) -> int:
    """Item epoch % n of a per-key permutation of range(n): all n choices appear over n epochs."""
    order = random.Random(stable_seed(seed, key)).sample(range(n), n)
    return order[epoch % n]


class LiteSchema:
    """ReasonLite: image_path, tb (descriptive captions), trl (reasoning captions) -> desc, reason.

    A row has len(tb) * len(trl) pairs (9 for the published 3 + 3); pair p is (tb[p // len(trl)],
    trl[p % len(trl)]), the authors' numbering. With ``pair=None`` (one sample per image and epoch) the
    pairs are visited in a per-image random order, one per epoch, so every pair is used once every 9 epochs.
    """

    name = "reasonlite"
    fields = ("tb", "trl")
    optional: tuple[str, ...] = ()

    def pair_counts(self, rows: RowTable) -> np.ndarray:
        return rows.list_lengths("tb") * rows.list_lengths("trl")

    def texts(self, row: dict, where: str, key: object, epoch: int, seed: int, pair: int | None = None) -> dict[str, Any]:
        tb, trl = caption_list(row, "tb", where), caption_list(row, "trl", where)
        if pair is None:
            pair = _cycle_choice(len(tb) * len(trl), seed, key, epoch)
        return {"desc": tb[pair // len(trl)], "reason": trl[pair % len(trl)]}


class ProSchema:
    """ReasonPro: image_path, trp, trp_cls [, trp_cls_ls] -> reason, text_category (int), image_categories (multi-hot [5]).

    With a `trp_cls_ls` column (the published files) `trp_cls` is the caption's letter and `trp_cls_ls`
    the image's 3 letters; without it `trp_cls` holds both labels in one of the older encodings
    (``categories.decode_trp_cls``). One sample per row.
    """

    name = "reasonpro"
    fields = ("trp", "trp_cls")
    optional: tuple[str, ...] = ("trp_cls_ls",)

    def pair_counts(self, rows: RowTable) -> np.ndarray:
        return np.ones(len(rows), dtype=np.int64)

    def texts(self, row: dict, where: str, key: object, epoch: int, seed: int, pair: int | None = None) -> dict[str, Any]:
        reason = caption_list(row, "trp", where)[0]
        if row.get("trp_cls_ls") is not None:
            labels = decode_reasonpro_labels(row["trp_cls"], row["trp_cls_ls"], where)
        elif isinstance(row["trp_cls"], str) and row["trp_cls"].strip() in CATEGORIES:
            raise ValueError(f"{where}: trp_cls is the single letter {row['trp_cls']!r} but the row has no trp_cls_ls (the image's 3 categories)")
        else:
            labels = decode_trp_cls(row["trp_cls"], where)
        return {"reason": reason, "text_category": labels.text, "image_categories": labels.image_multi_hot()}


class ReadSchema:
    """READ: captions of one image -> caption, paraphrase, recon_target, negatives (k).

    Captions are pooled from `caption_columns` (each a string or a list of strings). Per epoch one
    caption is the anchor (cycling like LiteSchema), or caption ``pair`` of the pool when given (each
    caption its own sample: stage 0's published samples); the paraphrase is another caption of the image
    (the caption itself when it has only one). The reconstruction target is, with `recon_target="any"`
    (READ's collator, the default), a caption drawn from all of the image's, the anchor included; with
    "other", a caption other than the anchor and the paraphrase when there are >= 3. Negatives come from a `neg` / `negatives` column when present
    (a list per caption aligned with the pooled captions, or one flat list when there is one caption),
    topped up to k by the `negatives` generator (salted with the epoch): "distinct" (`HardNegativeGenerator`,
    k distinct negatives) or "read" (`ReadNegativeSampler`: READ's independent picks, repeats and '' kept).

    `paraphrases` (READ's `data/zero.json`, see `read_paraphrases`): LLM paraphrases per image, keyed as
    `paraphrase_key` finds the row's image; READ's rule then draws the paraphrase from the image's other
    captions plus its paraphrases (an image without an entry: from its other captions only).
    """

    name = "read"

    def __init__(
        self,
        caption_columns: Sequence[str] = ("captions",),
        k: int = 3,
        negative_generator: Callable[[str, object], list[str]] | None = None,
        seed: int = 0,
        recon_target: str = "any",
        negatives: str = "distinct",
        paraphrases: dict[str, list[str]] | None = None,
    ):
        if recon_target not in ("any", "other"):
            raise ValueError(f"recon_target must be 'any' or 'other', got {recon_target!r}")
        self.fields = tuple(caption_columns)
        self.k = k
        self.recon_target = recon_target
        self.negatives = negatives
        self.paraphrases = paraphrases
        self.optional = ("neg", "negatives", *(PARAPHRASE_KEY_FIELDS if paraphrases is not None else ()))
        # distinct: 2k candidates so that precomputed negatives overlapping with generated ones still leave k.
        self.negative_generator = negative_generator or (negative_generator_for(negatives, k, seed) if k else None)

    def pair_counts(self, rows: RowTable) -> np.ndarray:
        return sum(rows.list_lengths(column) for column in self.fields)

    def texts(self, row: dict, where: str, key: object, epoch: int, seed: int, pair: int | None = None) -> dict[str, Any]:
        captions = [c for column in self.fields for c in caption_list(row, column, where)]
        anchor = _cycle_choice(len(captions), seed, key, epoch) if pair is None else pair
        others = [i for i in range(len(captions)) if i != anchor] or [anchor]
        rng = random.Random(stable_seed(seed, key, epoch, "read"))
        paraphrase, recon = (rng.sample(others, 2) if len(others) >= 2 else others * 2)
        paraphrase_text = captions[paraphrase]
        extra = self.paraphrases.get(paraphrase_key(row, where)) if self.paraphrases is not None else None
        if extra:  # READ: one of the other captions and the image's paraphrases, uniformly
            pool = [captions[i] for i in range(len(captions)) if i != anchor] + extra
            paraphrase_text = pool[rng.randrange(len(pool))]
        if self.recon_target == "any":
            recon = rng.randrange(len(captions))
        caption = captions[anchor]
        return {
            "caption": caption,
            "paraphrase": paraphrase_text,
            "recon_target": captions[recon],
            "negatives": self._negatives(row, where, captions, anchor, epoch),
        }

    def _negatives(self, row: dict, where: str, captions: list[str], anchor: int, epoch: int) -> list[str]:
        if self.k == 0:
            return []  # a plain caption pool (stage 0 without hard negatives)
        column = next((c for c in ("neg", "negatives") if row.get(c) is not None), None)
        given: list[str] = []
        if column is not None:
            value = row[column]
            value = value.tolist() if hasattr(value, "tolist") else value
            if value and all(isinstance(v, (list, tuple)) for v in value):
                if len(value) != len(captions):
                    raise ValueError(f"{where}: {column!r} has {len(value)} lists for {len(captions)} captions")
                value = value[anchor]
            elif len(captions) != 1:
                raise ValueError(f"{where}: flat {column!r} list needs exactly one caption, the row has {len(captions)}")
            given = caption_list({column: list(value)}, column, where) if value else []
        caption = captions[anchor]
        if self.negatives == "read":  # READ's picks: repeats and '' stay, nothing is topped up or refused
            given = given[: self.k]
            return given + self.negative_generator(caption, epoch)[: self.k - len(given)]
        negatives = [n for n in dict.fromkeys(given) if n != caption][: self.k]
        if len(negatives) < self.k:
            for candidate in self.negative_generator(caption, epoch):
                if candidate not in negatives:
                    negatives.append(candidate)
                if len(negatives) == self.k:
                    break
        if len(negatives) < self.k:
            raise ValueError(f"{where}: only {len(negatives)} distinct negatives for {caption!r}, need {self.k}")
        return negatives


def negative_generator_for(kind: str, k: int, seed: int) -> Callable[[str, object], list[str]]:
    """`stage.negatives`' generator for k negatives per caption (distinct draws 2k candidates, see ReadSchema)."""
    return negative_generator(kind, 2 * k if kind == "distinct" else k, seed)


# --------------------------------------------------------------------------- READ's paraphrases (data/zero.json)
PARAPHRASE_KEY_FIELDS = ("cocoid", "id")
_TRAILING_DIGITS = re.compile(r"(\d+)$")


def paraphrase_key(row: dict, where: str) -> str:
    """The key of a row's image in a paraphrase file: its `cocoid` (READ's key), else its `id`, else the number
    that ends its image file name (COCO names end in the zero-padded image id: COCO_train2014_000000123456.jpg
    -> "123456"), as a string without leading zeros, as READ looks it up (str(cocoid))."""
    for field in PARAPHRASE_KEY_FIELDS:
        if row.get(field) is not None:
            value = row[field]
            return str(int(value)) if isinstance(value, (int, np.integer)) or str(value).isdigit() else str(value)
    match = _TRAILING_DIGITS.search(Path(str(row.get("image_path", ""))).stem)
    if match is None:
        raise ValueError(f"{where}: data.paraphrases needs the row's image id: a 'cocoid' or 'id' field, or an image "
                         f"file name ending in its number (got image_path {row.get('image_path')!r})")
    return str(int(match.group(1)))


def read_paraphrases(path: str | Path) -> dict[str, list[str]]:
    """READ's paraphrase file (`data/zero.json` of READ-CLIP): one JSON object mapping an image id (a string,
    COCO's cocoid) to a list of paraphrase strings. Every problem is one line naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config key 'data.paraphrases': no file at {path}")
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping image ids to lists of paraphrases, got {type(data).__name__}")
    for key, value in data.items():
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ValueError(f"{path}: entry {key!r} must be a list of non-empty strings, got {value!r:.120}")
    return {str(int(k)) if k.isdigit() else k: v for k, v in data.items()}
