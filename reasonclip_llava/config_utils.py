"""What both training configs share: command-line overrides and typed coercion of YAML / CLI values.

`reasonclip pretrain` (nested sections, `--optim.lr=1e-4`) and `reasonclip llava-train` (LLaVA's flat
option names, `--learning_rate 2e-5`) read their overrides and convert values here, so the two accept
the same forms and fail with the same one-line errors naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

# Added by the `deepspeed` launcher in front of the script's own arguments; never a config key.
LAUNCHER_KEYS = frozenset({"local_rank"})


def parse_overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
    """`--a.b=1 --c 2 --flag` -> [("a.b", "1"), ("c", "2"), ("flag", "true")]; dashes in keys become '_'."""
    pairs, index = [], 0
    while index < len(argv):
        token = argv[index]
        if not token.startswith("--"):
            raise ValueError(f"override '{token}' must look like --key=value")
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            if index + 1 < len(argv) and not argv[index + 1].startswith("--"):
                value, index = argv[index + 1], index + 1
            else:
                value = "true"  # a bare --flag
        key = key.replace("-", "_")
        if key not in LAUNCHER_KEYS:
            pairs.append((key, value))
        index += 1
    return pairs


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file reads as {}); one-line errors naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    loaded = safe_yaml(path.read_text(), str(path)) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: {what} must be a mapping, got {type(loaded).__name__}")
    return loaded


def changed_keys(before: dict[str, Any], after: dict[str, Any], harmless: frozenset[str] | set[str],
                 defaults: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every key outside `harmless` whose value differs between two flat configs.

    A key one side lacks (added in a later version) counts with its default, so it differs only when set.
    """
    differences = []
    for key in sorted(set(before) | set(after)):
        if key in harmless:
            continue
        old, new = before.get(key, defaults.get(key)), after.get(key, defaults.get(key))
        if json.dumps(old, default=str) != json.dumps(new, default=str):
            differences.append(f"{key}: {old!r} -> {new!r}")
    return differences


def safe_yaml(text: str, where: str) -> Any:
    """yaml.safe_load; a syntax error or a tag that would build a Python object is one line naming where."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        if "!!python/" in str(error) or "tag:yaml.org,2002:python/" in str(error):
            found = re.search(r"(tag:yaml\.org,2002:python/[\w/:.]*|!!python/[\w/:.]*)", str(error))
            problem = f"the tag {found.group(1) if found else 'python/...'} would build a Python object; recipes are plain data"
        raise ValueError(f"{where}{at}: not valid YAML ({problem})") from None


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field type `hint`; fail with one line naming `key`.

    PyYAML reads '1e-3' as a string and the command line gives strings only, hence the conversions.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~", "")):
            if type(None) in args:
                return None
            if value is None:
                raise ValueError(f"config key '{key}' cannot be null")
            # not optional (`str | bool`): a string such as "none" is a value, read below
        candidates = [a for a in args if a is not type(None)]
        for candidate in candidates[:-1]:  # `str | bool`: the first type that reads the value wins
            try:
                return coerce(value, candidate, key)
            except ValueError:
                pass
        return coerce(value, candidates[-1], key)
    if hint is list or origin is list:
        if value is None:
            return []
        if isinstance(value, str):
            text = value.strip()
            value = safe_yaml(text, f"config key '{key}'") if text.startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key '{key}' expects a list, got {value!r}")
        return [coerce(v, args[0], key) for v in value] if args else list(value)
    if dataclasses.is_dataclass(hint):  # a nested mapping, e.g. one entry of optim.groups
        if isinstance(value, str):
            value = safe_yaml(value, f"config key '{key}'")
        if not isinstance(value, dict):
            raise ValueError(f"config key '{key}' expects a mapping, got {value!r}")
        fields = typing.get_type_hints(hint)
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ValueError(f"unknown config key '{key}.{unknown[0]}'")
        return hint(**{name: coerce(item, fields[name], f"{key}.{name}") for name, item in value.items()})
    if hint is str and isinstance(value, bool):  # YAML 1.1 reads an unquoted no / off / yes as a boolean
        raise ValueError(f"config key '{key}' expects a string, got the YAML boolean {value}: quote the value")
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "on", "1"):
                return True
            if text in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if hint in (int, float):
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise OverflowError  # NaN / inf pass no range check: refused as a number
            if hint is int and not number.is_integer():
                raise ValueError
            return int(number) if hint is int else number
        if hint is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except OverflowError:
        raise ValueError(f"config key '{key}' expects a finite {getattr(hint, '__name__', hint)}, got {value!r}") from None
    except (TypeError, ValueError):
        raise ValueError(f"config key '{key}' expects {getattr(hint, '__name__', hint)}, got {value!r}") from None
    raise TypeError(f"config key '{key}': unsupported field type {hint}")
