"""Conversation templates: exact strings (hand-written from LLaVA's conversation.py / the official chat
templates), label masks computed independently from character spans, the mismatch guard, tiny LMs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from reasonclip_llava.mllm_train.data import IGNORE_INDEX, tokenize_segments
from reasonclip_llava.mllm_train.templates import (
    ConversationTemplate,
    get_template,
    template_names,
)
from reasonclip_llava.testing.tiny_lm import TINY_LM_FAMILIES, build_tiny_lm, build_tiny_tokenizer

CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat colour is the cat?"},
    {"from": "gpt", "value": "The cat is red."},
    {"from": "human", "value": "Where is the dog?"},
    {"from": "gpt", "value": "On the left."},
]
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_NEXT_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
QWEN_TEXT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<image>\nWhat colour is the cat?<|im_end|>\n"
    "<|im_start|>assistant\nThe cat is red.<|im_end|>\n"
    "<|im_start|>user\nWhere is the dog?<|im_end|>\n"
    "<|im_start|>assistant\nOn the left.<|im_end|>\n"
)
LLAMA3_TURNS = (
    "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat colour is the cat?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nThe cat is red.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhere is the dog?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nOn the left.<|eot_id|>"
)

# (template, tiny tokenizer family, conversation turns, rendered text, tokenizer BOS prepended, supervised spans)
CASES = [
    ("plain", "qwen2", 2, "<image>The cat is red.\n", "", ["The cat is red.\n"]),
    ("plain", "mistral", 2, "<image>The cat is red.\n", "<s>", ["The cat is red.\n"]),
    (
        "vicuna_v1", "mistral", 4,
        VICUNA_SYSTEM + " USER: <image>\nWhat colour is the cat? ASSISTANT: The cat is red.</s>"
        "USER: Where is the dog? ASSISTANT: On the left.</s>",
        "<s>", [" The cat is red.</s>", " On the left.</s>"],
    ),
    (
        "llama_3", "llama", 4,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + LLAVA_NEXT_SYSTEM + "<|eot_id|>" + LLAMA3_TURNS,
        "", ["The cat is red.<|eot_id|>", "On the left.<|eot_id|>"],
    ),
    ("qwen_1_5", "qwen2", 4, QWEN_TEXT, "", ["The cat is red.<|im_end|>", "On the left.<|im_end|>"]),
    (
        "chatml_direct", "qwen2", 4,
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat colour is the cat?<|im_end|>"
        "<|im_start|>assistant\nThe cat is red.<|im_end|><|im_start|>user\nWhere is the dog?<|im_end|>"
        "<|im_start|>assistant\nOn the left.<|im_end|>",
        "", ["The cat is red.<|im_end|>", "On the left.<|im_end|>"],
    ),
    (
        "mistral_instruct", "mistral", 4,
        "[INST] <image>\nWhat colour is the cat? [/INST] The cat is red. </s>[INST] Where is the dog? [/INST] On the left. </s>",
        "<s>", [" The cat is red. </s>", " On the left. </s>"],
    ),
    # 'auto' = the tokenizer's own (Qwen1.5 / Llama-3 / Mistral-Instruct) jinja template.
    ("auto", "qwen2", 4, QWEN_TEXT, "", ["The cat is red.<|im_end|>", "On the left.<|im_end|>"]),
    ("auto", "llama", 4, "<|begin_of_text|>" + LLAMA3_TURNS, "", ["The cat is red.<|eot_id|>", "On the left.<|eot_id|>"]),
    (
        "auto", "mistral", 4,
        "<s>[INST] <image>\nWhat colour is the cat? [/INST]The cat is red.</s>[INST] Where is the dog? [/INST]On the left.</s>",
        "", ["The cat is red.</s>", "On the left.</s>"],
    ),
]


@pytest.fixture(scope="module")
def tokenizers():
    out = {}
    for family in TINY_LM_FAMILIES:
        tokenizer = build_tiny_tokenizer(family)
        tokenizer.add_tokens(["<image>"], special_tokens=True)
        out[family] = tokenizer
    return out


def labels_from_character_spans(tokenizer, ids: list[int], text: str, spans: list[str]) -> list[int]:
    """Expected labels, independent of the segmenting code: a token is supervised iff the characters it
    decodes to lie inside one of the hand-written supervised substrings of `text`."""
    intervals, cursor = [], 0
    for span in spans:
        start = text.index(span, cursor)
        intervals.append((start, start + len(span)))
        cursor = start + len(span)
    labels, start = [], 0
    for i, token in enumerate(ids):
        end = len(tokenizer.decode(ids[: i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        inside = any(a <= start and end <= b for a, b in intervals)
        labels.append(token if inside else IGNORE_INDEX)
        start = end
    assert start == len(text)
    return labels


@pytest.mark.parametrize("name,family,turns,text,bos,spans", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_rendered_text_and_label_mask(tokenizers, name, family, turns, text, bos, spans):
    tokenizer = tokenizers[family]
    template = get_template(name)
    segments = template.render(CONVERSATION[:turns], tokenizer=tokenizer)
    assert "".join(s.text for s in segments) == text

    prepend_bos = template.prefix_bos and tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    ids, labels = tokenize_segments(segments, tokenizer, "s0", name, prepend_bos=prepend_bos)
    full_text = bos + text
    assert ids == tokenizer(full_text, add_special_tokens=False)["input_ids"]
    assert labels == labels_from_character_spans(tokenizer, ids, full_text, spans)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert ids.count(image_id) == 1 and labels[ids.index(image_id)] == IGNORE_INDEX
    # The supervised tokens decode to exactly the answers and their end-of-turn markers.
    supervised = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(supervised, skip_special_tokens=False) == "".join(spans)


def _llava_conversation_module():
    spec = importlib.util.find_spec("llava")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llava-torch not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "conversation.py"
    module_spec = importlib.util.spec_from_file_location("llava_conversation_reference", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("ours,theirs", [("vicuna_v1", "v1"), ("mistral_instruct", "mistral_instruct"), ("chatml_direct", "chatml_direct")])
def test_matches_llava_get_prompt(ours, theirs):
    """Second reference: the original LLaVA Conversation.get_prompt() (llava-torch's conversation.py)."""
    reference = _llava_conversation_module().conv_templates[theirs].copy()
    for message in CONVERSATION:
        reference.append_message(reference.roles[0 if message["from"] == "human" else 1], message["value"])
    segments = get_template(ours).render(CONVERSATION)
    assert "".join(s.text for s in segments) == reference.get_prompt()


def test_aliases_and_unknown_name():
    assert get_template("qwen") is get_template("qwen_1_5") is get_template("chatml")
    assert get_template("mistral") is get_template("mistral_instruct")
    assert get_template("v1") is get_template("vicuna_v1")
    with pytest.raises(ValueError) as error:
        get_template("vicuna_v2")
    message = str(error.value)
    assert "'vicuna_v2'" in message and "\n" not in message
    assert all(name in message for name in ("plain", "vicuna_v1", "llama_3", "qwen_1_5", "mistral_instruct", "auto"))
    assert set(template_names()) >= {"plain", "vicuna_v1", "llama_3", "qwen_1_5", "chatml", "qwen", "mistral_instruct", "mistral", "auto"}


def test_bad_conversations_are_named():
    template = get_template("qwen_1_5")
    with pytest.raises(ValueError, match="alternate"):
        template.render([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}])
    with pytest.raises(ValueError, match="unknown role 'bot'"):
        template.render([{"from": "bot", "value": "a"}])
    with pytest.raises(ValueError, match="plain"):
        get_template("plain").render(CONVERSATION)  # more than one round
    with pytest.raises(ValueError, match="system"):
        get_template("mistral_instruct").render([{"from": "system", "value": "Be brief."}, *CONVERSATION])
    # A system message replaces the default prompt where the template has a slot.
    text = "".join(s.text for s in template.render([{"from": "system", "value": "Be brief."}, *CONVERSATION[:2]]))
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    # LLaVA drops a leading gpt turn.
    text = "".join(s.text for s in template.render([{"from": "gpt", "value": "Hi."}, *CONVERSATION[:2]]))
    assert "Hi." not in text


def test_mismatch_guard_names_sample_and_template(tokenizers):
    # Classic mistake: the answer boundary after "ASSISTANT: " while byte-level BPE merges " The" into one token.
    bad = ConversationTemplate(
        name="vicuna_trailing_space", user_format="USER: {content} ", assistant_prefix="ASSISTANT: ",
        assistant_format="{content}</s>",
    )
    segments = bad.render(CONVERSATION[:2])
    with pytest.raises(ValueError, match="tokenization mismatch in sample 'row-7' with template 'vicuna_trailing_space'"):
        tokenize_segments(segments, tokenizers["mistral"], "row-7", bad.name)
    # The same conversation through the real template is consistent.
    tokenize_segments(get_template("vicuna_v1").render(CONVERSATION[:2]), tokenizers["mistral"], "row-7", "vicuna_v1")


@pytest.mark.parametrize("family", TINY_LM_FAMILIES)
def test_tiny_lm_reloads(tmp_path, family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_lm(tmp_path / family, family)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    fresh = build_tiny_tokenizer(family)
    text = "Is the red cube left of 12 blue spheres? Yes.\n\nNo!"
    assert tokenizer(text)["input_ids"] == fresh(text)["input_ids"]
    assert model.config.vocab_size == len(tokenizer) == len(fresh)
    assert tokenizer.pad_token is not None and tokenizer.chat_template == fresh.chat_template
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.num_attention_heads == 4 and model.config.num_key_value_heads == 2
    # The small corpus gives a useful vocabulary: common words are single tokens.
    assert len(tokenizer(" colour", add_special_tokens=False)["input_ids"]) == 1
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(float(len(tokenizer)))).item()) < 1.0
    with pytest.raises(ValueError, match="unknown tiny LM family 'gpt2'"):
        build_tiny_tokenizer("gpt2")


def test_sentencepiece_style_tokenizer_is_not_a_false_mismatch():
    """Llama-2 / Vicuna / Mistral-v0.1 tokenizers prepend '▁' to the start of a string: tokenizing the
    segment 'USER: ...' alone would add a '▁' that the full text does not have after '</s>'. Segments are
    tokenized in context, so the vicuna_v1 template works and each answer keeps its own tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from reasonclip_llava.testing.tiny_lm import CORPUS

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    backend.train_from_iterator([*CORPUS, "USER: ASSISTANT: On the left. Where is the dog?\n"], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")

    segments = get_template("vicuna_v1").render(CONVERSATION[2:])
    alone = [tokenizer(s.text, add_special_tokens=False)["input_ids"] for s in segments]
    ids, labels = tokenize_segments(segments, tokenizer, "sp", "vicuna_v1")
    assert ids == tokenizer("".join(s.text for s in segments), add_special_tokens=False)["input_ids"]
    supervised = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    # The answer's own tokens ("▁On", "▁the", ...) followed by </s>.
    assert supervised == tokenizer("On the left.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert labels[: ids.index(supervised[0])] == [IGNORE_INDEX] * ids.index(supervised[0])
    assert sum(alone, []) == ids  # one round: no segment starts mid-text after a special token

    two_rounds = get_template("vicuna_v1").render(CONVERSATION)
    ids, labels = tokenize_segments(two_rounds, tokenizer, "sp", "vicuna_v1")  # no false mismatch
    naive = sum((tokenizer(s.text, add_special_tokens=False)["input_ids"] for s in two_rounds), [])
    assert naive != ids  # tokenizing segments alone would have misaligned the second round


LONG_CONVERSATION = [{"from": "human", "value": "<image>\nWhat colour is the cat?"}] + [
    {"from": role, "value": text} for i in range(12)
    for role, text in (("gpt", f"The cat number {i} is red, and café au lait."), ("human", f"And the dog {i}?"))
] + [{"from": "gpt", "value": "On the left."}]


@pytest.mark.parametrize("family", TINY_LM_FAMILIES)
@pytest.mark.parametrize("name", [n for n in template_names() if n != "plain"])
def test_offsets_give_the_prefix_rule_and_truncation_keeps_a_prefix(tokenizers, name, family):
    """One tokenization with offsets labels every token as the prefix rule does (each prefix tokenized
    again, the quadratic reference), and stopping at max_length keeps exactly the first max_length."""
    from reasonclip_llava.mllm_train.data import _tokenize_by_prefixes

    tokenizer = tokenizers[family]
    template = get_template(name)
    segments = template.render(LONG_CONVERSATION, tokenizer=tokenizer)
    expected = _tokenize_by_prefixes(segments, tokenizer, "s0", name, prepend_bos=False)
    assert tokenize_segments(segments, tokenizer, "s0", name) == expected
    assert expected[0] == tokenizer("".join(s.text for s in segments), add_special_tokens=False)["input_ids"]
    for max_length in (1, 7, 40, 120, len(expected[0]) + 5):
        ids, labels = tokenize_segments(segments, tokenizer, "s0", name, max_length=max_length)
        assert (ids, labels) == (expected[0][:max_length], expected[1][:max_length]), max_length
        ids, labels = tokenize_segments(segments, tokenizer, "s0", name, prepend_bos=True, max_length=max_length)
        assert ids == ([tokenizer.bos_token_id] + expected[0])[:max_length] or max_length < 1
