"""How a caption becomes text-tower input, the one rule for training and every encoder benchmark.

The published code (METHOD.md; ReasonCLIP's ``ft_clip_r_*.py`` and ``eval/eval_RCLIP.py``):

- CLIP: truncate to the tower's positions (77), pad to the batch's longest, attention mask passed
  (the mask makes the padding length irrelevant: CLIP pools the EOS position).
- SigLIP / SigLIP 2: at most 64 tokens, attention mask passed, padded to 64. SigLIP pools the LAST
  position, so its output depends on how far a text is padded; padding every text to the same 64
  positions keeps a caption's embedding independent of the batch it happens to be in.
- SigLIP 2 (Gemma tokenizer) captions are lowercased, as the authors' scripts do.
- A CLIP converted from open_clip (config field ``reasonclip_text_rule: open_clip``, written by the
  converter) is tokenized as open_clip's own tokenizer does (``cleaning="open_clip"``): ftfy +
  ``html.unescape`` (twice) + whitespace collapsed + lowercased; Hugging Face's special-token strings
  (``<|endoftext|>``) inside a caption are text; open_clip's own spellings (``<start_of_text>``,
  ``<end_of_text>``) are its special ids where its word pattern finds them; at most ``max_length`` ids,
  the last one EOT.

``TextRule.for_model(model_or_config, tokenizer)`` picks the rule; ``tokenize(tokenizer, texts, rule)``
applies it. A fixed-resolution SigLIP 2 checkpoint has model_type 'siglip'; it is told apart by its
Gemma tokenizer (or 'siglip2' in its name, the authors' test).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

SIGLIP_FAMILIES = ("siglip", "siglip2")
SIGLIP_MAX_LENGTH = 64
CLIP_MAX_LENGTH = 77
TEXT_RULE_KEY = "reasonclip_text_rule"  # config.json field; "open_clip" for checkpoints converted from open_clip
OPEN_CLIP = "open_clip"
CLEANINGS = ("none", OPEN_CLIP)
# open_clip's SimpleTokenizer (open-clip-torch 3.x) names its special tokens so, and matches them ahead of words
OPEN_CLIP_SPECIAL_TEXTS = ("<start_of_text>", "<end_of_text>")

__all__ = ["CLIP_MAX_LENGTH", "OPEN_CLIP", "SIGLIP_FAMILIES", "SIGLIP_MAX_LENGTH", "TEXT_RULE_KEY", "TextRule", "is_siglip2",
           "open_clip_clean", "open_clip_token_ids", "tokenize"]


def is_siglip2(model_type: str, tokenizer: Any = None, name: str | None = None) -> bool:
    """SigLIP 2: NaFlex model_type 'siglip2', or a 'siglip' checkpoint with SigLIP 2's Gemma tokenizer."""
    if model_type == "siglip2":
        return True
    if model_type != "siglip":
        return False
    return "gemma" in type(tokenizer).__name__.lower() or "siglip2" in str(name or "").lower()


@dataclass(frozen=True)
class TextRule:
    """padding: "longest" or "max_length"; max_length: truncation length; lowercase: SigLIP 2 captions;
    cleaning: "none", or "open_clip" for a CLIP converted from open_clip (its tokenizer's text preparation)."""

    max_length: int
    padding: str = "longest"
    lowercase: bool = False
    cleaning: str = "none"

    def __post_init__(self) -> None:
        if self.padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {self.padding!r}")
        if self.cleaning not in CLEANINGS:
            raise ValueError(f"text cleaning must be one of {CLEANINGS}, got {self.cleaning!r}")

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
        cleaning = OPEN_CLIP if getattr(config, TEXT_RULE_KEY, None) == OPEN_CLIP else "none"
        return cls(min(positions, CLIP_MAX_LENGTH), "longest", False, cleaning)

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """The texts as the tokenizer gets them (the open_clip rule cleans inside `open_clip_token_ids`)."""
        return [text.lower() for text in texts] if self.lowercase else list(texts)


def tokenize(tokenizer: Any, texts: Sequence[str], rule: TextRule, return_tensors: str = "pt") -> dict:
    """input_ids and attention_mask for `texts` under `rule` (the mask always comes back)."""
    if rule.cleaning == OPEN_CLIP:
        rows = {"input_ids": open_clip_token_ids(tokenizer, texts, rule.max_length)}
        encoded = tokenizer.pad(rows, padding=rule.padding, max_length=rule.max_length, return_attention_mask=True,
                                return_tensors=return_tensors)
    else:
        encoded = tokenizer(rule.prepare(texts), padding=rule.padding, truncation=True, max_length=rule.max_length,
                            return_attention_mask=True, return_tensors=return_tensors)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


# --------------------------------------------------------------------------- open_clip's text preparation
def open_clip_clean(text: str) -> str:
    """What open_clip's tokenizer does to a text before BPE: ftfy repairs (mojibake, curly quotes), HTML entities
    unescaped twice ("&amp;amp;" -> "&"), whitespace runs collapsed to one space, ends stripped, lowercased."""
    try:
        import ftfy
    except ImportError:  # a dependency of the package; a bare environment may lack it
        raise ImportError("open_clip's text rule needs ftfy (pip install ftfy)") from None
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


@lru_cache(maxsize=1)
def _open_clip_word_pattern() -> Any:
    import regex  # \p{L} / \p{N} classes; transformers depends on it

    # open_clip's word pattern with its special-token spellings first: where the scan meets one, it is one token
    specials = "|".join(OPEN_CLIP_SPECIAL_TEXTS)
    return regex.compile(specials + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


def _body_ids(tokenizer: Any, cleaned: str) -> list[int]:
    """BPE ids of a cleaned text without BOS/EOS, open_clip's special spellings as their ids."""
    special_ids = (tokenizer.bos_token_id, tokenizer.eos_token_id)
    pieces: list[str | int] = []
    start = 0
    for match in _open_clip_word_pattern().finditer(cleaned):
        if match.group() in OPEN_CLIP_SPECIAL_TEXTS:  # `cleaned` is lowercase
            pieces += [cleaned[start:match.start()], special_ids[OPEN_CLIP_SPECIAL_TEXTS.index(match.group())]]
            start = match.end()
    pieces.append(cleaned[start:])
    ids: list[int] = []
    for piece in pieces:  # a cut at a word boundary splits no word, so the pieces' BPE is the whole text's
        ids += [piece] if isinstance(piece, int) else _bpe(tokenizer, [piece])[0]
    return ids


def _bpe(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    # split_special_tokens: "<|endoftext|>" in a caption is text, as open_clip reads it; long texts are cut afterwards
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]


def open_clip_token_ids(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """open_clip's token ids for `texts` (a CLIP BPE tokenizer): [BOS, ..., EOS], cut to `max_length` with EOS last."""
    cleaned = [open_clip_clean(text) for text in texts]
    bodies = _bpe(tokenizer, cleaned)
    for i, text in enumerate(cleaned):
        if any(special in text for special in OPEN_CLIP_SPECIAL_TEXTS):
            bodies[i] = _body_ids(tokenizer, text)
    rows = [[tokenizer.bos_token_id, *body, tokenizer.eos_token_id] for body in bodies]
    return [row if len(row) <= max_length else [*row[: max_length - 1], tokenizer.eos_token_id] for row in rows]
