"""Row sources (parquet via pyarrow, JSONL) and the per-schema turning of a row into training texts.

A schema validates one row and picks its texts for a given (seed, epoch, key); the same schemas serve
the map-style datasets (``datasets.py``) and the webdataset stream (``wds.py``). Rows are numbered from
0 in file order; every error names the file and that row number (and the JSONL line).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..io_utils import read_utf8
from .categories import decode_trp_cls
from .hard_negatives import HardNegativeGenerator, stable_seed

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

    The len(tb) * len(trl) pairs (9 for the published 3 + 3) are visited in a per-image random order,
    one pair per epoch, so every pair is used once every 9 epochs.
    """

    name = "reasonlite"
    fields = ("tb", "trl")
    optional: tuple[str, ...] = ()

    def texts(self, row: dict, where: str, key: object, epoch: int, seed: int) -> dict[str, Any]:
        tb, trl = caption_list(row, "tb", where), caption_list(row, "trl", where)
        pair = _cycle_choice(len(tb) * len(trl), seed, key, epoch)
        return {"desc": tb[pair // len(trl)], "reason": trl[pair % len(trl)]}


class ProSchema:
    """ReasonPro: image_path, trp, trp_cls -> reason, text_category (int), image_categories (multi-hot [5])."""

    name = "reasonpro"
    fields = ("trp", "trp_cls")
    optional: tuple[str, ...] = ()

    def texts(self, row: dict, where: str, key: object, epoch: int, seed: int) -> dict[str, Any]:
        reason = caption_list(row, "trp", where)[0]
        labels = decode_trp_cls(row["trp_cls"], where)
        return {"reason": reason, "text_category": labels.text, "image_categories": labels.image_multi_hot()}


class ReadSchema:
    """READ: captions of one image -> caption, paraphrase, recon_target, negatives (k).

    Captions are pooled from `caption_columns` (each a string or a list of strings). Per epoch one
    caption is the anchor (cycling like LiteSchema); the paraphrase and the reconstruction target are
    two other captions of the image (different from each other when there are >= 3; with a single
    caption both are the caption itself). Negatives come from a `neg` / `negatives` column when present
    (a list per caption aligned with the pooled captions, or one flat list when there is one caption),
    topped up to k by `HardNegativeGenerator` (salted with the epoch).
    """

    name = "read"
    optional = ("neg", "negatives")

    def __init__(
        self,
        caption_columns: Sequence[str] = ("captions",),
        k: int = 3,
        negative_generator: Callable[[str, object], list[str]] | None = None,
        seed: int = 0,
    ):
        self.fields = tuple(caption_columns)
        self.k = k
        # 2k candidates so that precomputed negatives overlapping with generated ones still leave k.
        self.negative_generator = negative_generator or HardNegativeGenerator(k=2 * k, seed=seed)

    def texts(self, row: dict, where: str, key: object, epoch: int, seed: int) -> dict[str, Any]:
        captions = [c for column in self.fields for c in caption_list(row, column, where)]
        anchor = _cycle_choice(len(captions), seed, key, epoch)
        others = [i for i in range(len(captions)) if i != anchor] or [anchor]
        rng = random.Random(stable_seed(seed, key, epoch, "read"))
        paraphrase, recon = (rng.sample(others, 2) if len(others) >= 2 else others * 2)
        caption = captions[anchor]
        return {
            "caption": caption,
            "paraphrase": captions[paraphrase],
            "recon_target": captions[recon],
            "negatives": self._negatives(row, where, captions, anchor, epoch),
        }

    def _negatives(self, row: dict, where: str, captions: list[str], anchor: int, epoch: int) -> list[str]:
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
