"""Range checks for numeric config values, shared by the pretraining config, the LLaVA train args and CLI flags.

A type tells `coerce` that `lr` is a float; only a range says that -1 is not a learning rate. Each rule
is (key, bound) with bounds written as text ("> 0", ">= 1", "[0, 1]", "[0, 1)"), so the error message
is the rule itself: `config key 'optim.lr' must be > 0 (got -1.0)`. None values are skipped (None
means "not set" for every optional key); NaN and inf are in no range.

`check_model_config` applies the same idea to a checkpoint's config.json: sizes and counts a model
cannot be built with (hidden_size 0, a negative image_size) are one line naming the field, before
transformers divides by them.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, Iterable

_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def in_range(value: float, bound: str) -> bool:
    """`bound` is '> 0', '>= 1', '<= 5', '[0, 1]' or '[0, 1)' (closed / half-open intervals); NaN / inf never are."""
    if not math.isfinite(value):
        return False
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


# Sizes and counts of a vision / text transformer config that must be positive integers.
MODEL_SIZE_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "image_size", "patch_size", "num_channels", "projection_dim", "projection_size", "vocab_size",
    "max_position_embeddings", "head_dim",
)
SUB_CONFIGS = ("vision_config", "text_config")


def check_model_config(config: Any, what: str) -> None:
    """ValueError naming the first config field a model cannot be built with (config and its sub-configs)."""
    for prefix, section in [("", config)] + [(f"{name}.", getattr(config, name, None)) for name in SUB_CONFIGS]:
        if section is None or isinstance(section, dict):
            continue
        for field in MODEL_SIZE_FIELDS:
            value = getattr(section, field, None)
            if value is None or isinstance(value, (list, tuple, dict)):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what}: config.json field '{prefix}{field}' must be an integer >= 1 (got {value!r})")
        hidden, heads = getattr(section, "hidden_size", None), getattr(section, "num_attention_heads", None)
        if isinstance(hidden, int) and isinstance(heads, int) and hidden % heads and getattr(section, "head_dim", None) is None:
            raise ValueError(f"{what}: config.json field '{prefix}hidden_size' {hidden} is not divisible by "
                             f"'{prefix}num_attention_heads' {heads}")
        image, patch = getattr(section, "image_size", None), getattr(section, "patch_size", None)
        if isinstance(image, int) and isinstance(patch, int) and patch > image:
            raise ValueError(f"{what}: config.json field '{prefix}patch_size' {patch} is larger than '{prefix}image_size' {image}")
        epsilon = getattr(section, "layer_norm_eps", None)
        if isinstance(epsilon, float) and not (math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"{what}: config.json field '{prefix}layer_norm_eps' must be > 0 (got {epsilon!r})")
