"""Hard negatives: same-kind span swaps (bag-of-words identical), opposites, k distinct, deterministic."""

import importlib.util
from collections import Counter
from types import SimpleNamespace

import pytest

from reasonclip_llava.data.hard_negatives import (
    HardNegativeGenerator,
    RuleTagger,
    SpacyTagger,
    default_tagger,
    replacement_candidates,
    swap_candidates,
)

CAPTIONS = [
    "the red circle is left of the blue square, so it is nearer the left edge of the image",
    "a man riding a horse and a woman walking a dog",
    "A small dog quickly chases a large cat slowly",
    "two red apples on a wooden table",
    "a photo of a cat",
    "dog",
    "the the the",
]


def _words(text):
    return Counter(text.lower().replace(",", " ").split())


def _spans(tagged, kind):
    return [tagged.text[s.start : s.end] for s in tagged.spans[kind]]


def test_rule_tagger_finds_each_kind():
    tagger = RuleTagger()
    tagged = tagger("the red circle is left of the blue square")
    assert _spans(tagged, "np") == ["the red circle", "the blue square"]
    assert _spans(tagged, "noun") == ["circle", "square"]
    assert _spans(tagged, "adj") == ["red", "blue"]
    assert _spans(tagged, "rel") == ["left of"]
    tagged = tagger("a man riding a horse and a woman walking a dog")
    assert _spans(tagged, "vp") == ["riding a horse", "walking a dog"]
    assert _spans(tagger("she slowly opens it quickly"), "adv") == ["slowly", "quickly"]


@pytest.mark.parametrize("kind", ["np", "noun", "adj", "adv", "vp"])
def test_swaps_are_bag_of_words_identical_but_different(kind):
    caption = {
        "vp": "a man riding a horse and a woman walking a dog",
        "adv": "A small dog quickly chases a large cat slowly",
    }.get(kind, "the red circle is left of the blue square")
    swaps = swap_candidates(RuleTagger()(caption), kind)
    assert swaps
    for swapped in swaps:
        assert swapped != caption
        assert _words(swapped) == _words(caption)


def test_expected_swaps_of_a_relation_caption():
    swaps = set(swap_candidates(RuleTagger()("the red circle is left of the blue square"), "np"))
    swaps |= set(swap_candidates(RuleTagger()("the red circle is left of the blue square"), "adj"))
    swaps |= set(swap_candidates(RuleTagger()("the red circle is left of the blue square"), "noun"))
    assert swaps == {
        "the blue square is left of the red circle",
        "the blue circle is left of the red square",
        "the red square is left of the blue circle",
    }


def test_words_of_one_noun_phrase_are_not_swapped():
    assert swap_candidates(RuleTagger()("a small red ball"), "adj") == []


def test_replacements_use_opposites():
    replaced = replacement_candidates(RuleTagger()("The cup is above the small plate"))
    assert "The cup is below the small plate" in replaced
    assert "The cup is above the large plate" in replaced
    assert replacement_candidates(RuleTagger()("Left of it"))[0] == "Right of it"  # capital kept


@pytest.mark.parametrize("caption", CAPTIONS)
def test_k_distinct_negatives_never_the_caption(caption):
    for k in (1, 3, 6):
        negatives = HardNegativeGenerator(k=k, seed=0)(caption)
        assert len(negatives) == k
        assert len({n.lower() for n in negatives}) == k
        assert caption.lower() not in {n.lower() for n in negatives}


def test_swaps_come_first():
    negatives = HardNegativeGenerator(k=3, seed=0)("the red circle is left of the blue square")
    assert all(_words(n) == _words("the red circle is left of the blue square") for n in negatives)


def test_deterministic_in_seed_and_salt():
    caption = CAPTIONS[0]
    assert HardNegativeGenerator(k=3, seed=1)(caption) == HardNegativeGenerator(k=3, seed=1)(caption)
    draws = {tuple(HardNegativeGenerator(k=3, seed=s)(caption, salt=e)) for s in range(4) for e in range(3)}
    assert len(draws) > 1


def test_empty_caption_is_an_error():
    with pytest.raises(ValueError, match="empty caption"):
        HardNegativeGenerator()(" , ")
    with pytest.raises(ValueError, match="k must be"):
        HardNegativeGenerator(k=0)


@pytest.mark.skipif(importlib.util.find_spec("spacy") is not None, reason="spaCy installed")
def test_default_tagger_falls_back_to_rules_without_spacy():
    assert isinstance(default_tagger(), RuleTagger)


class _FakeChunk(list):
    """A noun chunk: iterates over its tokens, knows its character span."""

    def __init__(self, tokens):
        super().__init__(tokens)
        self.start_char = tokens[0].idx
        self.end_char = tokens[-1].idx + len(tokens[-1].text)


class _FakeDoc(list):
    """Stand-in for a spaCy Doc: tokens with .i/.idx/.text/.pos_/.right_edge, plus noun_chunks."""

    def __init__(self, text, pos, chunks):
        offset = 0
        for i, (word, tag) in enumerate(zip(text.split(), pos)):
            offset = text.index(word, offset)
            self.append(SimpleNamespace(i=i, idx=offset, text=word, pos_=tag))
            offset += len(word)
        for token in self:
            token.right_edge = self[-1] if token.pos_ == "VERB" else token
        self.noun_chunks = [_FakeChunk(self[first : last + 1]) for first, last in chunks]


def test_spacy_tagger_swaps_same_kind_spans():
    text = "the red circle is left of the blue square"
    pos = ["DET", "ADJ", "NOUN", "AUX", "ADV", "ADP", "DET", "ADJ", "NOUN"]
    tagger = SpacyTagger(lambda t: _FakeDoc(t, pos, [(0, 2), (6, 8)]))
    tagged = tagger(text)
    assert _spans(tagged, "np") == ["the red circle", "the blue square"]
    assert _spans(tagged, "adj") == ["red", "blue"]
    negatives = HardNegativeGenerator(k=3, tagger=tagger)(text)
    assert set(negatives) == {
        "the blue square is left of the red circle",
        "the blue circle is left of the red square",
        "the red square is left of the blue circle",
    }
