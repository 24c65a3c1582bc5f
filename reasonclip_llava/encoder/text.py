"""How a caption becomes text-tower input, the one rule for training and every encoder benchmark.

The published code (METHOD.md; ReasonCLIP's ``ft_clip_r_*.py`` and ``eval/eval_RCLIP.py``):

- CLIP: truncate to the tower's positions (77), pad to the batch's longest, attention mask passed
  (the mask makes the padding length irrelevant: CLIP pools the EOS position).
- SigLIP / SigLIP 2: at most 64 tokens, attention mask passed, padded to 64. SigLIP pools the LAST
  position, so its output depends on how far a text is padded; padding every text to the same 64
  positions keeps a caption's embedding independent of the batch it happens to be in.
- SigLIP 2 (Gemma tokenizer) captions are lowercased, as the authors' scripts do.

``TextRule.for_model(model_or_config, tokenizer)`` picks the rule; ``tokenize(tokenizer, texts, rule)``
applies it. A fixed-resolution SigLIP 2 checkpoint has model_type 'siglip'; it is told apart by its
Gemma tokenizer (or 'siglip2' in its name, the authors' test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

SIGLIP_FAMILIES = ("siglip", "siglip2")
SIGLIP_MAX_LENGTH = 64
CLIP_MAX_LENGTH = 77

__all__ = ["CLIP_MAX_LENGTH", "SIGLIP_FAMILIES", "SIGLIP_MAX_LENGTH", "TextRule", "is_siglip2", "tokenize"]


def is_siglip2(model_type: str, tokenizer: Any = None, name: str | None = None) -> bool:
    """SigLIP 2: NaFlex model_type 'siglip2', or a 'siglip' checkpoint with SigLIP 2's Gemma tokenizer."""
    if model_type == "siglip2":
        return True
    if model_type != "siglip":
        return False
    return "gemma" in type(tokenizer).__name__.lower() or "siglip2" in str(name or "").lower()


@dataclass(frozen=True)
class TextRule:
    """padding: "longest" or "max_length"; max_length: truncation length; lowercase: SigLIP 2 captions."""

    max_length: int
    padding: str = "longest"
    lowercase: bool = False

    @classmethod
    def for_model(cls, model_or_config: Any, tokenizer: Any = None) -> TextRule:
        """The published rule for a CLIPModel / SiglipModel (or its config) and its tokenizer."""
        config = getattr(model_or_config, "config", model_or_config)
        text_config = getattr(config, "text_config", config)
        positions = int(getattr(text_config, "max_position_embeddings", CLIP_MAX_LENGTH))
        model_type = str(getattr(config, "model_type", "clip"))
        name = getattr(config, "_name_or_path", None) or getattr(tokenizer, "name_or_path", None)
        if model_type in SIGLIP_FAMILIES:
            return cls(min(positions, SIGLIP_MAX_LENGTH), "max_length", is_siglip2(model_type, tokenizer, name))
        return cls(min(positions, CLIP_MAX_LENGTH), "longest", False)

    def prepare(self, texts: Sequence[str]) -> list[str]:
        return [text.lower() for text in texts] if self.lowercase else list(texts)


def tokenize(tokenizer: Any, texts: Sequence[str], rule: TextRule, return_tensors: str = "pt") -> dict:
    """input_ids and attention_mask for `texts` under `rule` (the mask always comes back)."""
    encoded = tokenizer(rule.prepare(texts), padding=rule.padding, truncation=True, max_length=rule.max_length,
                        return_attention_mask=True, return_tensors=return_tensors)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
