"""Reading benchmark files in their released formats, with one-line errors that name the problem.

Benchmarks never skip silently: a missing file, a row without a required field, or an image that is
not on disk stops the run with the file, row id and key in the message.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..benchmarks import read_json, read_jsonl  # noqa: F401  (re-exported: one reader for every released JSON/JSONL)
from .embed import ImageRef


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def field(row: Mapping, key: str, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """row[key], or a ValueError naming the file/row and the key (and the expected type)."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
    if key not in row or row[key] is None:
        raise ValueError(f"{where}: missing field {key!r}")
    value = row[key]
    if kind is not None and not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ValueError(f"{where}: field {key!r} should be {expected}, got {type(value).__name__}")
    return value


def text_field(row: Mapping, key: str, where: str) -> str:
    value = field(row, key, where, str)
    if not value.strip():
        raise ValueError(f"{where}: field {key!r} is empty")
    return value


def find_image(root: Path, candidates: Iterable[str | Path], where: str,
               box: tuple[float, float, float, float] | None = None) -> ImageRef:
    """The first candidate (relative to root) that exists; else a FileNotFoundError naming the first one."""
    candidates = list(candidates)
    for candidate in candidates:
        path = root / candidate
        if path.is_file():
            return ImageRef(path.resolve(), box)
    raise FileNotFoundError(f"{where}: image not found: {root / candidates[0]}")


def subset_files(data: Path, names: Sequence[str], suffix: str = ".json",
                 file_names: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Subset name -> file. A directory must hold every subset; a single file is one subset.

    file_names maps subset names to released file names where they differ from f"{name}{suffix}".
    """
    file_names = dict(file_names or {})
    if data.is_file():
        by_file = {file_names.get(name, f"{name}{suffix}"): name for name in names}
        return {by_file.get(data.name, data.stem): data}
    if not data.is_dir():
        raise FileNotFoundError(f"benchmark data not found: {data}")
    files = {name: data / file_names.get(name, f"{name}{suffix}") for name in names}
    for name, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"benchmark file for subset {name!r} not found: {path}")
    return files


def percent(correct: int | float, total: int) -> float:
    if total == 0:
        raise ValueError("no items to score")
    return 100.0 * float(correct) / total


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
