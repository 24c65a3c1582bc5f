"""Hard negative captions by swapping spans of the same kind (NegCLIP / READ style).

A caption is tagged into spans of five kinds, as in READ: ``noun``, ``adj``, ``adv``, ``np`` (noun
phrases) and ``vp`` (verb phrases), plus ``rel`` (relation / comparison words such as "left of",
"above", "larger"). Negatives are produced in this order of preference:

1. **swaps** (bag-of-words identical to the caption, only the binding changes): two spans of the same
   kind exchange places, e.g. "the red circle is left of the blue square" ->
   "the blue square is left of the red circle" (np), "the blue circle is left of the red square" (adj),
   "the red square is left of the blue circle" (noun). Words of the same noun phrase are never swapped
   with each other ("small red" -> "red small" says the same thing).
2. **replacements**: a relation by its opposite ("left of" -> "right of", "above" -> "below") and a
   colour / size by another one ("red" -> "green", "small" -> "large").
3. **fallback** (only when 1-2 give fewer than k): two content words exchange places, then a content
   word is replaced by a lexicon word. Any non-empty caption therefore yields k distinct negatives.

Tagging: spaCy (``en_core_web_sm``) when it is installed, otherwise the rule-based ``RuleTagger``:
small lexicons of colours, sizes and common adjectives, a noun-phrase chunker (determiner, modifiers,
head word), adverbs (lexicon + "-ly"), verb phrases (an "-ing" verb + optional particle + its object
noun phrase) and a relation lexicon with opposites. Negatives are a pure function of
(caption, seed): the random generator is seeded from a stable hash, never from Python's salted ``hash``.

Precomputed negatives (a ``neg`` / ``negatives`` data column) are read by the datasets and topped up
with generated ones when there are fewer than k.

Two generators, chosen by the recipe's ``stage.negatives``:

* ``distinct`` (``HardNegativeGenerator``, above): k distinct negatives, swaps first, then replacements,
  then a fallback, so every caption gets k real negatives.
* ``read`` (``ReadNegativeSampler``): READ's own sampler (READ-CLIP ``src/common/mixin.py``,
  ``NegCLIPNegativeTextMining``), rule for rule. Swap kinds are only nouns, adjectives, adverbs (one token
  each), noun chunks of 3+ tokens and verb phrases (every token run matching VERB? ADV* AUX* VERB+, as
  spaCy's Matcher returns them, overlapping ones included); no relation kind, no replacements. One
  negative = up to 5 attempts, each picking a kind with >= 2 spans and two distinct spans of it at
  random, swapping them and joining the tokens with single spaces; a result that repeats an earlier one
  or equals the caption is dropped; the negative is one of the kept results at random, or ``''`` when
  none is kept. The k negatives of a caption are k such independent picks, so they may repeat. Tags come
  from spaCy's ``en_core_web_sm`` as in READ; without spaCy the rule tagger's tags stand in for them (an
  approximation of the tags, the sampling rules stay READ's).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray", "grey")
SIZE_OPPOSITES = {
    "small": "large", "large": "small", "big": "small", "tiny": "huge", "huge": "tiny", "little": "big",
    "tall": "short", "short": "tall", "long": "short", "wide": "narrow", "narrow": "wide",
    "thin": "thick", "thick": "thin",
}
OTHER_ADJECTIVES = (
    "filled", "outlined", "hollow", "solid", "striped", "dotted", "wooden", "metal", "plastic", "glass",
    "old", "new", "young", "empty", "full", "open", "closed", "wet", "dry", "hot", "cold", "dark", "bright",
    "heavy", "soft", "hard", "round", "flat", "shiny", "dirty", "clean", "fresh", "ripe", "happy", "sad",
    "fast", "slow", "broken", "frozen", "sunny", "cloudy", "busy", "calm", "faint",
)
ADJECTIVES = frozenset(COLOURS) | frozenset(SIZE_OPPOSITES) | frozenset(OTHER_ADJECTIVES)
NOUNS = (
    "circle", "square", "triangle", "shape", "ball", "box", "cube", "man", "woman", "person", "child", "dog",
    "cat", "horse", "car", "bus", "table", "chair", "plate", "cup", "tree", "road", "bird", "boat", "bike",
    "phone", "book", "bed", "window", "door", "trail", "edge", "image", "background",
)
# Longest phrases first so "to the left of" wins over "left of" and "left".
RELATION_OPPOSITES = {
    "to the left of": "to the right of", "to the right of": "to the left of",
    "left of": "right of", "right of": "left of", "on top of": "underneath", "underneath": "on top of",
    "in front of": "behind", "behind": "in front of", "next to": "far from", "far from": "next to",
    "away from": "toward", "out of": "into", "into": "out of", "toward": "away from", "towards": "away from",
    "above": "below", "below": "above", "over": "under", "under": "over", "inside": "outside",
    "outside": "inside", "near": "far from", "before": "after", "after": "before", "on": "under",
    "larger": "smaller", "bigger": "smaller", "smaller": "larger", "heavier": "lighter", "lighter": "heavier",
    "closer": "farther", "farther": "closer", "further": "closer", "higher": "lower", "lower": "higher",
    "up": "down", "down": "up", "left": "right", "right": "left", "top": "bottom", "bottom": "top",
}
_RELATIONS = sorted(RELATION_OPPOSITES, key=lambda r: -len(r.split()))
DETERMINERS = frozenset(
    "a an the two three four five some several many its his her their this that these those one another each every no".split()
)
STOPWORDS = frozenset(
    """and or but so as if then than of is are was were be been being it they them he she we you i
    with in at by for from to is has have had would could will can may might should does do did not
    like while when where which who what there here also very just both only same""".split()
) | DETERMINERS
ADVERBS = frozenset(
    "quickly slowly carefully gently quietly loudly happily sadly easily barely nearly almost always never "
    "often soon still already again together away forward backward upward downward".split()
)
_NOT_ADVERBS = frozenset("only family fly belly jelly holy ugly reply supply apply italy july lily rally daily early".split())
_NOT_VERBS = frozenset(
    "thing something nothing anything everything building ceiling king ring string morning evening wing spring "
    "clothing during bring".split()
)
_PARTICLES = frozenset("at on with to into down up over through across along toward towards around off in".split())
SPAN_KINDS = ("np", "noun", "adj", "adv", "vp")
_WORD = re.compile(r"[A-Za-z0-9']+")


@dataclass(frozen=True)
class Span:
    start: int  # character offsets into the caption
    end: int
    group: int = -1  # the noun phrase the span belongs to (-1: none); same-group spans are not swapped


@dataclass
class TaggedCaption:
    text: str
    spans: dict[str, list[Span]] = field(default_factory=dict)  # kind -> spans (SPAN_KINDS + "rel")


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, identical across processes (unlike hash())."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _relation_spans(text: str, words: list[re.Match]) -> list[Span]:
    lowered = [w.group(0).lower() for w in words]
    spans, i = [], 0
    while i < len(words):
        for phrase in _RELATIONS:
            parts = phrase.split()
            if lowered[i : i + len(parts)] == parts:
                spans.append(Span(words[i].start(), words[i + len(parts) - 1].end()))
                i += len(parts)
                break
        else:
            i += 1
    return spans


class RuleTagger:
    """Lexicon + pattern tagger used when spaCy is not installed (see module docstring)."""

    def __call__(self, text: str) -> TaggedCaption:
        words = list(_WORD.finditer(text))
        lowered = [w.group(0).lower() for w in words]
        relations = _relation_spans(text, words)
        relation_words = {i for i, w in enumerate(words) for r in relations if r.start <= w.start() < r.end}
        spans: dict[str, list[Span]] = {kind: [] for kind in SPAN_KINDS}
        spans["rel"] = relations
        np_of_word: dict[int, int] = {}
        nps: list[tuple[int, int]] = []  # word index ranges [first, last]

        def is_head(j: int) -> bool:
            return (
                j < len(words)
                and lowered[j] not in STOPWORDS
                and lowered[j] not in ADJECTIVES
                and j not in relation_words
                and not self._is_adverb(lowered[j])
            )

        i = 0
        while i < len(words):
            j = i + (lowered[i] in DETERMINERS)
            while j < len(words) and lowered[j] in ADJECTIVES and j not in relation_words:
                j += 1
            starts_np = j > i or lowered[i] in NOUNS
            if starts_np and is_head(j) and not self._is_verb(lowered[j]):
                while j + 1 < len(words) and lowered[j + 1] in NOUNS:  # compound: "coffee cup"
                    j += 1
                nps.append((i, j))
                for w in range(i, j + 1):
                    np_of_word[w] = len(nps) - 1
                i = j + 1
            else:
                i += 1

        for group, (first, last) in enumerate(nps):
            spans["np"].append(Span(words[first].start(), words[last].end(), group))
            spans["noun"].append(Span(words[last].start(), words[last].end(), group))
        for i, w in enumerate(lowered):
            if w in ADJECTIVES and i not in relation_words:
                spans["adj"].append(Span(words[i].start(), words[i].end(), np_of_word.get(i, -1 - i)))
            elif self._is_adverb(w):
                spans["adv"].append(Span(words[i].start(), words[i].end()))
            elif self._is_verb(w):
                last = i
                if last + 1 < len(words) and lowered[last + 1] in _PARTICLES:
                    last += 1
                following = np_of_word.get(last + 1)
                if following is not None:
                    last = nps[following][1]
                spans["vp"].append(Span(words[i].start(), words[last].end()))
        return TaggedCaption(text, spans)

    @staticmethod
    def _is_adverb(word: str) -> bool:
        return word in ADVERBS or (word.endswith("ly") and len(word) > 4 and word not in _NOT_ADVERBS)

    @staticmethod
    def _is_verb(word: str) -> bool:
        return word.endswith("ing") and len(word) > 4 and word not in _NOT_VERBS


class SpacyTagger:
    """Spans from a spaCy pipeline's part-of-speech tags and noun chunks (relations from the lexicon)."""

    def __init__(self, nlp: Callable):
        self.nlp = nlp

    def __call__(self, text: str) -> TaggedCaption:
        doc = self.nlp(text)
        spans: dict[str, list[Span]] = {kind: [] for kind in SPAN_KINDS}
        spans["rel"] = _relation_spans(text, list(_WORD.finditer(text)))
        chunk_of_token: dict[int, int] = {}
        for group, chunk in enumerate(doc.noun_chunks):
            spans["np"].append(Span(chunk.start_char, chunk.end_char, group))
            for token in chunk:
                chunk_of_token[token.i] = group
        kinds = {"NOUN": "noun", "PROPN": "noun", "ADJ": "adj", "ADV": "adv"}
        for token in doc:
            end = token.idx + len(token.text)
            if token.pos_ in kinds:
                spans[kinds[token.pos_]].append(Span(token.idx, end, chunk_of_token.get(token.i, -1 - token.i)))
            elif token.pos_ == "VERB":
                right = token.right_edge  # the verb and everything it governs to its right
                spans["vp"].append(Span(token.idx, right.idx + len(right.text)))
        return TaggedCaption(text, spans)


@lru_cache(maxsize=1)
def _spacy_pipeline() -> Callable | None:
    """spaCy's en_core_web_sm (tagger + parser: POS tags and noun chunks), or None when either is missing."""
    try:
        import spacy  # optional: the `nlp` extra

        return spacy.load("en_core_web_sm", disable=["ner", "lemmatizer"])  # neither changes POS or chunks
    except (ImportError, OSError):
        return None


def default_tagger() -> Callable[[str], TaggedCaption]:
    """spaCy's en_core_web_sm when both are installed, otherwise the rule-based tagger."""
    nlp = _spacy_pipeline()
    return SpacyTagger(nlp) if nlp is not None else RuleTagger()


def _swap(text: str, a: Span, b: Span) -> str:
    if a.start > b.start:
        a, b = b, a
    return text[: a.start] + text[b.start : b.end] + text[a.end : b.start] + text[a.start : a.end] + text[b.end :]


def _replace(text: str, span: Span, new: str) -> str:
    old = text[span.start : span.end]
    if old[:1].isupper():
        new = new[:1].upper() + new[1:]
    return text[: span.start] + new + text[span.end :]


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def swap_candidates(tagged: TaggedCaption, kind: str) -> list[str]:
    """Every caption obtained by exchanging two distinct, non-overlapping spans of one kind."""
    text, out = tagged.text, []
    spans = tagged.spans.get(kind, [])
    for i, a in enumerate(spans):
        for b in spans[i + 1 :]:
            overlap = a.start < b.end and b.start < a.end
            same_phrase = a.group >= 0 and a.group == b.group
            if overlap or same_phrase or _normal(text[a.start : a.end]) == _normal(text[b.start : b.end]):
                continue
            out.append(_swap(text, a, b))
    return out


def replacement_candidates(tagged: TaggedCaption) -> list[str]:
    """Relations replaced by their opposite, colours by another colour, sizes by their opposite."""
    text, out = tagged.text, []
    for span in tagged.spans.get("rel", []):
        out.append(_replace(text, span, RELATION_OPPOSITES[_normal(text[span.start : span.end])]))
    for span in tagged.spans.get("adj", []):
        word = _normal(text[span.start : span.end])
        if word in COLOURS:
            out.extend(_replace(text, span, c) for c in COLOURS[:8] if c != word)
        elif word in SIZE_OPPOSITES:
            out.append(_replace(text, span, SIZE_OPPOSITES[word]))
    return out


def _fallback_candidates(text: str, rng: random.Random) -> Iterable[str]:
    words = [w for w in _WORD.finditer(text) if w.group(0).lower() not in STOPWORDS] or list(_WORD.finditer(text))
    spans = [Span(w.start(), w.end()) for w in words]
    pairs = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :]]
    rng.shuffle(pairs)
    for a, b in pairs:
        yield _swap(text, a, b)
    pool = list(NOUNS) + list(COLOURS)
    for _ in range(1000):
        span = rng.choice(spans)
        yield _replace(text, span, rng.choice(pool))


class HardNegativeGenerator:
    """k distinct hard negatives per caption, deterministic in (caption, seed, salt)."""

    def __init__(self, k: int = 3, seed: int = 0, tagger: Callable[[str], TaggedCaption] | None = None):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.seed = seed
        self.tagger = tagger or default_tagger()

    def __call__(self, caption: str, salt: object = 0) -> list[str]:
        """`salt` varies the draw (e.g. the epoch) while staying reproducible."""
        if not caption or not _WORD.search(caption):
            raise ValueError(f"cannot build hard negatives for an empty caption: {caption!r}")
        rng = random.Random(stable_seed(self.seed, salt, caption))
        tagged = self.tagger(caption)
        chosen: list[str] = []
        seen = {_normal(caption)}

        def take(candidate: str) -> bool:
            if _normal(candidate) not in seen:
                seen.add(_normal(candidate))
                chosen.append(candidate)
            return len(chosen) >= self.k

        # Swaps first, one kind at a time in a random order so the k negatives cover different kinds.
        pools = [swap_candidates(tagged, kind) for kind in SPAN_KINDS]
        for pool in pools:
            rng.shuffle(pool)
        rng.shuffle(pools)
        while any(pools):
            for pool in pools:
                if pool and take(pool.pop()):
                    return chosen
        replacements = replacement_candidates(tagged)
        rng.shuffle(replacements)
        for candidate in replacements:
            if take(candidate):
                return chosen
        for candidate in _fallback_candidates(caption, rng):
            if take(candidate):
                return chosen
        raise ValueError(f"could not build {self.k} distinct negatives for {caption!r}")


# --------------------------------------------------------------------------- READ's sampler
READ_SWAP_KINDS = ("NOUN", "ADJ", "ADV", "NP", "VP")  # READ's group order
READ_ATTEMPTS = 5  # READ's max_num_texts: swaps tried per negative
READ_MIN_NP_TOKENS = 3  # noun chunks shorter than this are not swapped
_AUX_WORDS = frozenset("is are was were be been being am has have had does do did".split())
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?|[^\sA-Za-z0-9]")
_VP_TAGS = {"VERB": "V", "ADV": "D", "AUX": "A"}
_VP_PATTERN = re.compile(r"V?D*A*V+")  # READ's Matcher pattern: VERB? ADV* AUX* VERB+


@dataclass(frozen=True)
class TokenDoc:
    """A caption as READ's sampler sees it: tokens, their coarse (universal) POS tags, noun chunks."""

    tokens: tuple[str, ...]
    pos: tuple[str, ...]
    noun_chunks: tuple[tuple[int, int], ...] = ()  # [start, end) token ranges


def spacy_token_doc(nlp: Callable) -> Callable[[str], TokenDoc]:
    """A tagger reading tokens, `pos_` and noun chunks from a spaCy pipeline (READ: en_core_web_sm)."""

    def tag(text: str) -> TokenDoc:
        doc = nlp(text)
        return TokenDoc(tuple(t.text for t in doc), tuple(t.pos_ for t in doc),
                        tuple((chunk.start, chunk.end) for chunk in doc.noun_chunks))

    return tag


def rule_token_doc(text: str) -> TokenDoc:
    """The rule tagger's spans as tokens and POS tags (NOUN, ADJ, ADV, VERB for -ing verbs, AUX, else X)."""
    tagged = RuleTagger()(text)
    matches = list(_TOKEN.finditer(text))
    kinds = {"noun": "NOUN", "adj": "ADJ", "adv": "ADV"}
    pos = []
    for m in matches:
        word = m.group(0).lower()
        tag = next((kinds[k] for k in kinds for s in tagged.spans[k] if s.start <= m.start() < s.end), None)
        pos.append(tag or ("VERB" if RuleTagger._is_verb(word) else "AUX" if word in _AUX_WORDS else "X"))
    chunks = []
    for span in tagged.spans["np"]:
        inside = [i for i, m in enumerate(matches) if span.start <= m.start() < span.end]
        chunks.append((inside[0], inside[-1] + 1))
    return TokenDoc(tuple(m.group(0) for m in matches), tuple(pos), tuple(chunks))


@lru_cache(maxsize=1)
def default_read_tagger() -> Callable[[str], TokenDoc]:
    """READ's tagger (spaCy en_core_web_sm) when installed, otherwise `rule_token_doc` (with one warning)."""
    nlp = _spacy_pipeline()
    if nlp is not None:
        return spacy_token_doc(nlp)
    import logging

    logging.getLogger(__name__).warning(
        "stage.negatives=read: spaCy's en_core_web_sm is not installed, so READ's swap rules run on the rule "
        "tagger's tags (pip install 'reasonclip-llava[nlp]' && python -m spacy download en_core_web_sm for READ's tags)")
    return rule_token_doc


def read_swap_spans(doc: TokenDoc) -> dict[str, list[tuple[int, int]]]:
    """READ's swappable spans per kind, as [start, end) token ranges, in READ's kind order."""
    single = {kind: [(i, i + 1) for i, tag in enumerate(doc.pos) if tag == kind] for kind in ("NOUN", "ADJ", "ADV")}
    letters = "".join(_VP_TAGS.get(tag, "x") for tag in doc.pos)
    verb_phrases = [(s, e) for s in range(len(letters)) for e in range(s + 1, len(letters) + 1)
                    if _VP_PATTERN.fullmatch(letters, s, e)]
    return {**single, "NP": [c for c in doc.noun_chunks if c[1] - c[0] >= READ_MIN_NP_TOKENS], "VP": verb_phrases}


def read_swap(tokens: Sequence[str], a: tuple[int, int], b: tuple[int, int]) -> str:
    """READ's swap: the two token ranges exchange places (overlapping ranges duplicate tokens, as in READ),
    joined with single spaces."""
    if b[0] < a[0]:
        a, b = b, a
    swapped = [*tokens[: a[0]], *tokens[b[0] : b[1]], *tokens[a[1] : b[0]], *tokens[a[0] : a[1]], *tokens[b[1] :]]
    return " ".join(swapped)


class ReadNegativeSampler:
    """k negatives per caption drawn as READ draws them (see the module docstring): independent picks that
    may repeat, '' when no swap exists. Deterministic in (caption, seed, salt)."""

    def __init__(self, k: int = 3, seed: int = 0, tagger: Callable[[str], TokenDoc] | None = None):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k, self.seed = k, seed
        self.tagger = tagger or default_read_tagger()

    @staticmethod
    def swap_results(caption: str, doc: TokenDoc, rng: random.Random) -> list[str]:
        """One round of READ's generator: up to READ_ATTEMPTS swaps, repeats and the caption itself dropped."""
        groups = [spans for spans in read_swap_spans(doc).values() if len(spans) >= 2]
        results: list[str] = []
        if not groups:
            return results
        for _ in range(READ_ATTEMPTS):
            spans = rng.choice(groups)
            a, b = rng.sample(spans, 2)
            candidate = read_swap(doc.tokens, a, b)
            if candidate not in results and candidate != caption:
                results.append(candidate)
        return results

    def __call__(self, caption: str, salt: object = 0) -> list[str]:
        rng = random.Random(stable_seed(self.seed, salt, caption, "read"))
        doc = self.tagger(caption)
        picks = []
        for _ in range(self.k):
            results = self.swap_results(caption, doc, rng)
            picks.append(rng.choice(results) if results else "")
        return picks


NEGATIVE_GENERATORS = ("distinct", "read")


def negative_generator(kind: str, k: int, seed: int = 0) -> Callable[[str, object], list[str]]:
    """The generator `stage.negatives` names: distinct (`HardNegativeGenerator`) or read (`ReadNegativeSampler`)."""
    if kind == "distinct":
        return HardNegativeGenerator(k=k, seed=seed)
    if kind == "read":
        return ReadNegativeSampler(k=k, seed=seed)
    raise ValueError(f"config key 'stage.negatives' must be one of {NEGATIVE_GENERATORS} (got {kind!r})")


def hard_negatives(caption: str, k: int = 3, seed: int = 0) -> list[str]:
    """k hard negatives of `caption` with the default tagger (spaCy if installed, else rules)."""
    return HardNegativeGenerator(k=k, seed=seed)(caption)


def swap_negative(tagged_or_text: TaggedCaption | str, kind: str) -> str | None:
    """The first swap of `kind` ("np", "noun", "adj", "adv", "vp"), or None when the caption has none."""
    tagged = tagged_or_text if isinstance(tagged_or_text, TaggedCaption) else default_tagger()(tagged_or_text)
    candidates = swap_candidates(tagged, kind)
    return candidates[0] if candidates else None


def write_negatives(
    source: str | Path,
    out_path: str | Path,
    caption_columns: Sequence[str] = ("captions",),
    k: int = 3,
    seed: int = 0,
    column: str = "neg",
) -> Path:
    """Copy a parquet file adding `column`: per row, k negatives for each pooled caption (list<list<string>>).

    Precomputing lets a large run tag once (e.g. with spaCy on a CPU box) instead of in every epoch;
    ``ReadDataset`` uses these negatives first (the epoch then no longer changes them).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .rows import caption_list

    source, out_path = Path(source), Path(out_path)
    if not source.is_file():
        raise FileNotFoundError(f"data file not found: {source}")
    table = pq.read_table(source)
    missing = [c for c in caption_columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; found {table.column_names}")
    generator = HardNegativeGenerator(k=k, seed=seed)
    pooled = zip(*(table.column(c).to_pylist() for c in caption_columns))
    negatives = []
    for index, values in enumerate(pooled):
        row = dict(zip(caption_columns, values))
        captions = [c for name in caption_columns for c in caption_list(row, name, f"{source} row {index}")]
        negatives.append([generator(caption) for caption in captions])
    if column in table.column_names:
        table = table.drop_columns([column])
    table = table.append_column(column, pa.array(negatives, type=pa.list_(pa.list_(pa.string()))))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_path)
    return out_path
