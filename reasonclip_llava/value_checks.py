"""Range checks for numeric config values, shared by the pretraining config, the LLaVA train args and CLI flags.

A type tells `coerce` that `lr` is a float; only a range says that -1 is not a learning rate. Each rule
is (key, bound) with bounds written as text ("> 0", ">= 1", "[0, 1]", "[0, 1)"), so the error message
is the rule itself: `config key 'optim.lr' must be > 0 (got -1.0)`. None values are skipped (None
means "not set" for every optional key).
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Iterable

_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def in_range(value: float, bound: str) -> bool:
    """`bound` is '> 0', '>= 1', '<= 5', '[0, 1]' or '[0, 1)' (closed / half-open intervals)."""
    bound = bound.strip()
    if bound[0] in "[(":
        low, high = (float(part) for part in bound[1:-1].split(","))
        above = value >= low if bound[0] == "[" else value > low
        below = value <= high if bound[-1] == "]" else value < high
        return above and below
    for symbol in (">=", "<=", ">", "<"):  # two-character operators first
        if bound.startswith(symbol):
            return _COMPARISONS[symbol](value, float(bound[len(symbol):]))
    raise ValueError(f"unknown bound {bound!r}")


def check_ranges(values: dict[str, Any], rules: Iterable[tuple[str, str]], prefix: str = "config key") -> None:
    """Raise ValueError for the first key whose (non-None) value breaks its bound, naming the key."""
    for key, bound in rules:
        value = values.get(key)
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        if not all(in_range(float(item), bound) for item in items):
            raise ValueError(f"{prefix} '{key}' must be {bound} (got {value!r})")


def check_select_layer(layer: int, num_hidden_layers: int, key: str) -> None:
    """A hidden-state index of a tower with `num_hidden_layers` layers (hidden_states has layers + 1 entries)."""
    if not -(num_hidden_layers + 1) <= int(layer) <= num_hidden_layers:
        raise ValueError(
            f"{key} {layer} is outside the tower's hidden states: it has {num_hidden_layers} layers, "
            f"so the layer must be in [-{num_hidden_layers + 1}, {num_hidden_layers}]"
        )


def check_max_length(max_length: int, positions: int | None, key: str, model: str) -> None:
    """A sequence length the model can embed (its max_position_embeddings)."""
    if positions is not None and max_length > positions:
        raise ValueError(f"config key '{key}' must be <= {positions}, the positions of {model} (got {max_length})")
