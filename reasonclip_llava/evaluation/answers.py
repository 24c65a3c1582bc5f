"""The answers file of `eval vqa`: one run's identity in a header line, then one answer per line.

    {"header": {"format": 1, "identity": {model, benchmark, data, prompts, generation, ...}}}
    {"question_id": ..., "prompt": ..., "text": ..., "model_id": ...}     (LLaVA's answer-file rows)

The identity says what produced the answers: the model (folder, name and a fingerprint of its files), the
benchmark, the data (path and a fingerprint of its annotation files), the images folder, the prompt style,
the chat template and the generation settings and dtype. A rerun into the same file resumes only a run of
the same identity (another one is refused unless --overwrite); `eval score` refuses a file that mixes
identities. LLaVA's own scripts read rows only: give them the file without its first line (tail -n +2).
Pure python: no torch import.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

FORMAT = 1
HEADER_KEY = "header"
# Files whose name and size fingerprint a data folder (annotations, never the images beside them).
_DATA_SUFFIXES = {".parquet", ".json", ".jsonl", ".csv", ".tsv", ".txt"}
_MODEL_FILES = ("*.json", "*.safetensors", "*.jinja", "*.model", "*.txt")


def _stat_fingerprint(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        stat = path.stat()
        name = path.relative_to(root).as_posix() if path != root else path.name
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def model_fingerprint(model_dir: str | Path) -> str:
    """Names, sizes and modification times of a checkpoint's files: a retrained or replaced model differs."""
    root = Path(model_dir).resolve()
    files = {path for pattern in _MODEL_FILES for path in root.glob(pattern) if path.is_file()}
    return _stat_fingerprint(list(files), root)


def data_fingerprint(data: str | Path) -> str:
    """The same for a benchmark's data: the file, or the annotation files under a folder."""
    root = Path(data).resolve()
    if root.is_file():
        return _stat_fingerprint([root], root)
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in _DATA_SUFFIXES] if root.is_dir() else []
    return _stat_fingerprint(files, root)


def header_line(identity: dict[str, Any]) -> str:
    return json.dumps({HEADER_KEY: {"format": FORMAT, "identity": identity}}, ensure_ascii=False, sort_keys=True) + "\n"


def parse_header(line: bytes | str) -> dict[str, Any] | None:
    """The identity of a header line, or None when the line is not one (an answer row, or not JSON)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if isinstance(row, dict) and isinstance(row.get(HEADER_KEY), dict) and "question_id" not in row:
        return row[HEADER_KEY].get("identity", {})
    return None


def identity_difference(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The identity fields (dotted for generation settings) in which two runs differ."""
    differ = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differ += [f"{key}.{sub}" for sub in sorted(set(a) | set(b)) if a.get(sub) != b.get(sub)]
        elif a != b:
            differ.append(key)
    return differ


def describe_difference(ours: dict[str, Any], theirs: dict[str, Any], fields: list[str]) -> str:
    def value(identity: dict, field: str) -> Any:
        key, _, sub = field.partition(".")
        return identity.get(key, {}).get(sub) if sub else identity.get(key)

    shown = [f"{f} {value(theirs, f)!r} vs {value(ours, f)!r}" for f in fields[:3]]
    return "; ".join(shown) + (f" (+{len(fields) - 3} more)" if len(fields) > 3 else "")


def check_single_identity(path: Path, headers: list[dict[str, Any]], model_ids: set[str]) -> dict[str, Any] | None:
    """The one identity of an answers file; a file with two headers that differ, or rows of two models, is an error."""
    for other in headers[1:]:
        fields = identity_difference(headers[0], other)
        if fields:
            raise ValueError(f"{path}: mixes the answers of two runs ({describe_difference(other, headers[0], fields)}); "
                             f"score each run's own file")
    if len(model_ids) > 1:
        raise ValueError(f"{path}: mixes the answers of {len(model_ids)} models ({', '.join(sorted(model_ids)[:3])}); "
                         f"score each run's own file")
    identity = headers[0] if headers else None
    if identity and model_ids and identity.get("model_id") not in model_ids:
        raise ValueError(f"{path}: its rows are by model {next(iter(model_ids))!r}, its header says {identity.get('model_id')!r}")
    return identity
