"""LLaVA conversation templates as data.

A template turns a LLaVA conversation (`[{"from": "human"|"gpt", "value": ...}, ...]`) into text segments,
each marked supervised or not. Supervised = what the model must generate after the assistant header:
the answer plus the end-of-turn token (`</s>`, `<|im_end|>`, `<|eot_id|>`), as in LLaVA's `preprocess_v1`
/ `preprocess_llama_2` / `preprocess_mpt` / LLaVA-NeXT's `preprocess_qwen` / `preprocess_llama3`. LLaVA-NeXT's
preprocess_qwen / preprocess_llama3 additionally supervise the assistant header and the structural tokens of
every turn; here they stay masked unless `published_masking` asks for that rule (the training option
`label_masking: llava_next`).

Each template also carries the rule of the code base it comes from (docs/LLAVA_RECIPES.md):

* ``image_placement``: how the one ``<image>`` placeholder of a row is moved, LLaVA-1.5's
  `preprocess_multimodal` ("llava": always ``<image>\n`` + the stripped rest) or LLaVA-NeXT's ("llava_next":
  a message that already starts with ``<image>`` is left as written).
* ``refuse_empty_answer``: LLaVA's `Conversation.get_prompt` renders an empty message as a generation
  prompt (no separator), which merges two rounds; such templates refuse an empty gpt turn.

The strings reproduce LLaVA's `conversation.py` (haotian-liu/LLaVA, LLaVA-VL/LLaVA-NeXT):

* ``plain``             projector pretraining: ``<image>`` + caption + ``\\n``; the human text is dropped.
* ``vicuna_v1`` (``v1``) ``{system} USER: {q} ASSISTANT: {a}</s>USER: ...``; ``llava_v1`` the same with
  LLaVA's "curious human" system prompt.
* ``llama_3`` (``llava_llama_3``) Llama-3-Instruct headers with LLaVA-NeXT's system prompt.
* ``qwen_1_5`` (``qwen``, ``qwen_2``, ``chatml``) ChatML with newlines, system "You are a helpful assistant."
* ``chatml_direct``     LLaVA-1.6-34B ChatML without newlines between turns, system "Answer the questions."
* ``mistral_instruct`` (``mistral``) ``[INST] {q} [/INST] {a} </s>[INST] ...``
* ``auto``              the tokenizer's own chat template (`tokenizer.apply_chat_template`).

Templates never write the tokenizer's BOS unless the official template writes it as text (Llama-3);
`prefix_bos=True` tells the dataset to prepend BOS the way LLaVA gets it from `tokenizer(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from jinja2 import TemplateError

IMAGE_PLACEHOLDER = "<image>"
ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}


@dataclass(frozen=True)
class Segment:
    text: str
    supervised: bool


def normalize_conversation(conversations: list[dict[str, Any]]) -> tuple[str | None, list[tuple[str, str]]]:
    """(system override or None, [(role 'human'|'gpt', text), ...]) with strict human/gpt alternation.

    A leading gpt turn is dropped, as LLaVA does ("skip the first one if it is not from human").
    """
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("conversation is empty or not a list")
    system = None
    turns: list[tuple[str, str]] = []
    for position, message in enumerate(conversations):
        if not isinstance(message, dict) or "from" not in message or "value" not in message:
            raise ValueError(f"message {position} needs 'from' and 'value' keys, got {message!r:.80}")
        role = ROLE_ALIASES.get(message["from"])
        if role is None:
            raise ValueError(f"message {position} has unknown role {message['from']!r} (expected human/gpt/system)")
        if role == "system":
            if position != 0:
                raise ValueError(f"system message at position {position}; only the first message may be system")
            system = str(message["value"])
            continue
        turns.append((role, str(message["value"])))
    if turns and turns[0][0] == "gpt":
        turns = turns[1:]
    for position, (role, _) in enumerate(turns):
        expected = "human" if position % 2 == 0 else "gpt"
        if role != expected:
            raise ValueError(f"roles must alternate human/gpt; turn {position} is {role!r}")
    if not turns:
        raise ValueError("conversation has no human turn")
    return system, turns


def merge_segments(segments: list[Segment]) -> list[Segment]:
    merged: list[Segment] = []
    for segment in segments:
        if not segment.text:
            continue
        if merged and merged[-1].supervised == segment.supervised:
            merged[-1] = Segment(merged[-1].text + segment.text, segment.supervised)
        else:
            merged.append(segment)
    return merged


@dataclass(frozen=True)
class ConversationTemplate:
    """One chat format. Every `*_format` is a str.format pattern with `{content}` (or `{system}`).

    Rendering: system_format, then per round user_format (unsupervised), assistant_prefix (unsupervised),
    assistant_format (supervised), assistant_suffix (unsupervised). `plain` is LLaVA's pretraining format.
    """

    name: str
    system: str = ""
    system_format: str = ""
    user_format: str = "{content}"
    assistant_prefix: str = ""
    assistant_format: str = "{content}"
    assistant_suffix: str = ""
    strip_content: bool = False  # Llama-3's chat template trims every message
    prefix_bos: bool = True  # prepend the tokenizer's BOS if its tokenizer(...) adds one
    plain: bool = False
    supervise_assistant_header: bool = False  # assistant_prefix / assistant_suffix supervised too
    supervised_tokens: tuple[str, ...] = ()  # tokens supervised wherever they occur (system and user turns too)
    image_placement: str = "llava"  # "llava" (LLaVA-1.5 preprocess_multimodal) | "llava_next"
    refuse_empty_answer: bool = False  # LLaVA's get_prompt drops the separator after an empty message
    published_unmasked: tuple[str, ...] = ()  # LLaVA-NeXT's unmask_tokens for label_masking 'llava_next'

    def render(self, conversations: list[dict[str, Any]], tokenizer: Any = None, max_length: int | None = None) -> list[Segment]:
        """Segments of the conversation (linear in its length; `max_length` is not needed here)."""
        system, turns = normalize_conversation(conversations)
        if self.plain:
            # LLaVA's preprocess_plain takes exactly (human with the image, gpt): no leading gpt turn dropped.
            if sum(1 for message in conversations if ROLE_ALIASES.get(message["from"]) != "system") != 2:
                turns = []
            return self._render_plain(turns)
        if system is not None and "{system}" not in self.system_format:
            raise ValueError(f"template {self.name!r} has no system prompt slot; drop the system message")
        segments = [Segment(self.system_format.format(system=self.system if system is None else system), False)]
        for position, (role, text) in enumerate(turns):
            if self.refuse_empty_answer and role == "gpt" and not text:
                raise ValueError(
                    f"turn {position} is an empty gpt answer; template {self.name!r} (LLaVA's conversation.py) would "
                    "render it as a generation prompt without its separator and merge two rounds"
                )
            text = text.strip() if self.strip_content else text
            if role == "human":
                segments.append(Segment(self.user_format.format(content=text), False))
                segments.append(Segment(self.assistant_prefix, self.supervise_assistant_header))
            else:
                segments.append(Segment(self.assistant_format.format(content=text), True))
                segments.append(Segment(self.assistant_suffix, self.supervise_assistant_header))
        return merge_segments(segments)

    def render_text(self, conversations: list[dict[str, Any]], tokenizer: Any = None) -> tuple[str, bool]:
        """(the rendered text, whether anything in it is supervised): what `render` gives, joined."""
        segments = self.render(conversations, tokenizer=tokenizer)
        return "".join(segment.text for segment in segments), any(segment.supervised for segment in segments)

    def _render_plain(self, turns: list[tuple[str, str]]) -> list[Segment]:
        # LLaVA preprocess_plain: exactly one (image, caption) pair; the human text is replaced by the image.
        if len(turns) != 2 or IMAGE_PLACEHOLDER not in turns[0][1]:
            raise ValueError(f"template 'plain' needs exactly one human turn with {IMAGE_PLACEHOLDER} and one gpt turn")
        return [Segment(IMAGE_PLACEHOLDER, False), Segment(turns[1][1] + "\n", True)]


class TokenizerChatTemplate:
    """'auto': the tokenizer's own jinja chat template.

    Assistant spans are found by rendering prefixes: the answer starts where
    `apply_chat_template(messages[:i], add_generation_prompt=True)` ends and stops where
    `apply_chat_template(messages[:i + 1])` ends (trailing whitespace after the end-of-turn token is left
    unsupervised, matching the named templates). With `max_length`, the search stops once the text
    through an answer holds max_length tokens (later tokens are truncated anyway), so a long conversation
    costs what its first max_length tokens cost.
    """

    name = "auto"
    prefix_bos = False  # chat templates write bos_token themselves
    image_placement = "llava_next"  # LLaVA-NeXT renders conversations with chat templates
    supervised_tokens: tuple[str, ...] = ()

    @staticmethod
    def _messages(conversations: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, str]]:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'auto' needs a tokenizer with a chat_template")
        system, turns = normalize_conversation(conversations)
        messages = [] if system is None else [{"role": "system", "content": system}]
        return messages + [{"role": "user" if role == "human" else "assistant", "content": text} for role, text in turns]

    @staticmethod
    def _apply(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except TemplateError as error:  # raise_exception(...) in the template: the conversation is refused
            raise ValueError(f"the tokenizer's chat template refuses this conversation: {error}") from None

    def render_text(self, conversations: list[dict[str, Any]], tokenizer: Any = None) -> tuple[str, bool]:
        """(the rendered text, whether it holds an answer), from one render of the whole conversation: the
        length pre-pass's view, linear in the conversation (`render` renders a prefix per answer)."""
        messages = self._messages(conversations, tokenizer)
        return self._apply(tokenizer, messages, False), any(m["role"] == "assistant" for m in messages)

    def render(self, conversations: list[dict[str, Any]], tokenizer: Any = None, max_length: int | None = None) -> list[Segment]:
        messages = self._messages(conversations, tokenizer)

        def render_text(upto: int, generation_prompt: bool) -> str:
            return self._apply(tokenizer, messages[:upto], generation_prompt)

        def inconsistent() -> ValueError:
            return ValueError("the tokenizer's chat template does not render conversation prefixes consistently; use a named template")

        # Each rendered prefix must extend the previous one (so all are prefixes of the full text).
        segments, cursor, rendered = [], 0, ""
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = render_text(index, True)
            if not before.startswith(rendered):
                raise inconsistent()
            if max_length is not None and len(tokenizer(before, add_special_tokens=False)["input_ids"]) >= max_length:
                # The kept tokens all lie before this answer (which separates them from the cut).
                segments.append(Segment(before[cursor:], False))
                return merge_segments(segments)
            through = render_text(index + 1, False)
            if not through.startswith(before):
                raise inconsistent()
            start, end = len(before), len(through.rstrip())
            segments += [Segment(through[cursor:start], False), Segment(through[start:end], True)]
            cursor, rendered = end, through
        full = render_text(len(messages), False)
        if not full.startswith(rendered):
            raise inconsistent()
        segments.append(Segment(full[cursor:], False))
        return merge_segments(segments)


LLAVA_NEXT_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)

TEMPLATES: dict[str, ConversationTemplate | TokenizerChatTemplate] = {
    "plain": ConversationTemplate(name="plain", plain=True),
    "vicuna_v1": ConversationTemplate(
        name="vicuna_v1",
        system="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        system_format="{system} ",
        user_format="USER: {content} ",
        assistant_prefix="ASSISTANT:",
        assistant_format=" {content}</s>",
        refuse_empty_answer=True,
    ),
    "llama_3": ConversationTemplate(
        name="llama_3",
        system=LLAVA_NEXT_SYSTEM,
        system_format="<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        user_format="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant_format="{content}<|eot_id|>",
        strip_content=True,
        prefix_bos=False,
        image_placement="llava_next",
        # preprocess_llama3 also lists "\n\n", but convert_tokens_to_ids("\n\n") finds no byte-level token
        # of that spelling, so LLaVA-NeXT never unmasks it.
        published_unmasked=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    "qwen_1_5": ConversationTemplate(
        name="qwen_1_5",
        system="You are a helpful assistant.",
        system_format="<|im_start|>system\n{system}<|im_end|>\n",
        user_format="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_prefix="<|im_start|>assistant\n",
        assistant_format="{content}<|im_end|>",
        assistant_suffix="\n",
        image_placement="llava_next",
        # preprocess_qwen: `unmask_tokens_idx = [198, im_start, im_end]`, 198 being "\n" in Qwen's vocabulary.
        published_unmasked=("\n", "<|im_start|>", "<|im_end|>"),
    ),
    "chatml_direct": ConversationTemplate(
        name="chatml_direct",
        system="Answer the questions.",
        system_format="<|im_start|>system\n{system}<|im_end|>",
        user_format="<|im_start|>user\n{content}<|im_end|>",
        assistant_prefix="<|im_start|>assistant\n",
        assistant_format="{content}<|im_end|>",
        refuse_empty_answer=True,
    ),
    "mistral_instruct": ConversationTemplate(
        name="mistral_instruct",
        user_format="[INST] {content} [/INST]",
        assistant_format=" {content} </s>",
        refuse_empty_answer=True,
    ),
    "auto": TokenizerChatTemplate(),
}
# LLaVA's llava_v1: vicuna_v1's format with the "curious human" system prompt.
TEMPLATES["llava_v1"] = replace(
    TEMPLATES["vicuna_v1"], name="llava_v1",
    system="A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
)
ALIASES = {"v1": "vicuna_v1", "qwen": "qwen_1_5", "qwen_2": "qwen_1_5", "chatml": "qwen_1_5",
           "llava_llama_3": "llama_3", "mistral": "mistral_instruct"}


LABEL_MASKINGS = ("answers", "llava_next")


def published_masking(template: ConversationTemplate | TokenizerChatTemplate) -> ConversationTemplate:
    """LLaVA-NeXT's preprocess_qwen / preprocess_llama3 labels: the whole assistant turn is supervised (header,
    answer, end-of-turn token and, for ChatML, the `\\n` after it), and so is every one of the template's
    `published_unmasked` tokens anywhere, system and user turns included."""
    if not isinstance(template, ConversationTemplate) or not template.published_unmasked:
        raise ValueError(
            f"label_masking 'llava_next' is LLaVA-NeXT's preprocess_qwen / preprocess_llama3 rule (templates "
            f"{', '.join(n for n, t in TEMPLATES.items() if getattr(t, 'published_unmasked', ()))}); "
            f"template {template.name!r} is not one"
        )
    return replace(template, supervise_assistant_header=True, supervised_tokens=template.published_unmasked)


def place_image(text: str, placement: str) -> str:
    """The message holding a row's one `<image>` placeholder, as LLaVA's preprocess_multimodal leaves it.

    LLaVA-1.5 ("llava"): the placeholder is removed, the rest stripped, and `<image>\\n` put in front (the
    result stripped once more, so a message of only `<image>` stays `<image>`). LLaVA-NeXT ("llava_next"):
    the same, except that a message already starting with `<image>` is left exactly as written.
    """
    if placement == "llava_next" and text.startswith(IMAGE_PLACEHOLDER):
        return text
    return (IMAGE_PLACEHOLDER + "\n" + text.replace(IMAGE_PLACEHOLDER, "").strip()).strip()


def supervised_token_ids(template: ConversationTemplate | TokenizerChatTemplate, tokenizer: Any) -> set[int]:
    """Ids of the template's `supervised_tokens`; each must be one token of this tokenizer."""
    ids = set()
    for text in getattr(template, "supervised_tokens", ()):
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ValueError(f"template {template.name!r}: {text!r} is {len(encoded)} tokens for this tokenizer, expected 1")
        ids.add(encoded[0])
    return ids


def template_names() -> list[str]:
    return sorted([*TEMPLATES, *ALIASES])


def get_template(name: str) -> ConversationTemplate | TokenizerChatTemplate:
    """The conversation template registered as `name` (or one of its aliases)."""
    key = ALIASES.get(name, name)
    if key not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; valid: {', '.join(template_names())}")
    return TEMPLATES[key]
