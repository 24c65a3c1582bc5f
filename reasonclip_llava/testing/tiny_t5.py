"""A tiny T5 tokenizer (SentencePiece unigram, ~64 pieces) trained offline on synthetic captions.

Stands in for the t5-v1_1 tokenizer of READ's reconstruction target in tests and the offline demo. It
has T5's special-token layout (pad 0, eos 1, unk 2; ``</s>`` appended to every text) and reloads with
``AutoTokenizer.from_pretrained(out_dir)``.
"""

from __future__ import annotations

import io
import string
from collections.abc import Iterable
from pathlib import Path

from transformers import T5Tokenizer


def _default_corpus() -> list[str]:
    from ..data.synthetic import make_item

    texts = []
    for index in range(40):
        item = make_item(seed=0, index=index, image_size=32)
        texts += item.tb + item.trl + [item.trp]
    return texts


def build_tiny_t5_tokenizer(
    out_dir: str | Path,
    texts: Iterable[str] | None = None,
    vocab_size: int = 64,
) -> T5Tokenizer:
    """Train a SentencePiece model on `texts` (default: synthetic captions), save as a T5 tokenizer, return it.

    Every lowercase letter, digit and common punctuation mark is kept as a piece, so any English
    caption encodes without unknown tokens. No sentinel (<extra_id_*>) tokens are added.
    """
    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = list(texts) if texts is not None else _default_corpus()
    if not corpus:
        raise ValueError("build_tiny_t5_tokenizer needs at least one training text")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus + [string.ascii_lowercase + string.digits + ",.:;!?'-"]),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,  # a small corpus may support fewer pieces than asked for
        minloglevel=2,
    )
    (out / "spiece.model").write_bytes(model.getvalue())
    tokenizer = T5Tokenizer.from_pretrained(str(out), extra_ids=0, model_max_length=77)
    tokenizer.save_pretrained(str(out))
    return tokenizer
