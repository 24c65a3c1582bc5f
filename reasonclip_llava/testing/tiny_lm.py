"""Tiny random causal LMs with offline tokenizers, for tests and the offline demo.

Each family keeps the structure that matters to LLaVA: the model class (Qwen2 / Llama / Mistral), the
special tokens and the jinja chat template of the real checkpoints (Qwen1.5 ChatML, Llama-3,
Mistral-Instruct), and a byte-level BPE tokenizer trained here on a small embedded English corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    LlamaTokenizer,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

TINY_LM_FAMILIES = ("qwen2", "llama", "mistral")
TINY_LM_VOCAB = 1000
TINY_LM_SIZE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)

# Words LLaVA-style data uses: colours, shapes, positions, counting, yes/no, question words, and the
# system prompts / role names of the chat templates, so that prompts stay short in tokens.
CORPUS = """
A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful,
detailed, and polite answers to the human's questions. You are a helpful assistant. You are a helpful
language and vision assistant. You are able to understand the visual content that the user provides,
and assist the user with a variety of tasks using natural language.
system user assistant USER ASSISTANT Human Assistant human gpt image picture photo photograph
What is in the image? What colour is the cat? What color is the car? Where is the dog? How many birds
are there? Which object is on the left? Which one is on the right? Who is holding the cup? Why is the
man smiling? When was this taken? Is there a red ball above the table? Is the blue box below the shelf?
Yes. No. Yes, there is. No, there is not. Maybe. I think so. I do not know.
red orange yellow green blue purple pink brown black white gray grey gold silver dark light bright
circle square triangle rectangle star heart oval cube sphere cone cylinder line shape shapes round
left right above below behind in front of next to near far top bottom middle center inside outside
between under over on off up down small large big tiny huge tall short long wide narrow
zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 10 11 12 20 42 100 2024
cat dog bird horse cow sheep person man woman child people car bus truck bike train plane boat
table chair bed sofa cup bottle plate bowl book clock phone laptop tree flower grass sky cloud sun
water road street house building window door wall floor kitchen room park beach city field
The cat is sitting on the mat. The dog is running in the park. A red car is parked next to a blue bus.
There are three birds above the tree. The green square is left of the yellow circle. The small purple
triangle is below the large orange star. Two people are standing in front of the white house.
Describe the image in detail. Describe the image briefly. Answer the question using a single word or
phrase. Answer with the option's letter from the given choices directly. A B C D options choices
The image shows a kitchen with a table, four chairs and a bowl of fruit on the counter.
A man is riding a bike down the street while a woman walks her dog on the sidewalk.
the a an is are was were be this that these those it its there here and or but not with without
of to for from by at as into onto about because so if then than very also only just some many much
what which who whom whose where when why how do does did can could would should will may might
first second third last next before after again count number numbers colour colours color colors
""".split("\n")

# Special tokens and the real chat template of each family (Qwen1.5, Llama-3-Instruct, Mistral-Instruct).
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

FAMILY_TOKENS = {
    # special tokens (in id order, first ids after nothing: they come first in the vocabulary), bos, eos, pad
    "qwen2": dict(
        special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=QWEN2_CHAT_TEMPLATE,
    ),
    "llama": dict(
        special=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|end_of_text|>", chat_template=LLAMA3_CHAT_TEMPLATE,
    ),
    "mistral": dict(
        special=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
        bos="<s>", eos="</s>", pad="</s>", chat_template=MISTRAL_CHAT_TEMPLATE,
    ),
}
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
FAMILY_CONFIG = {"qwen2": Qwen2Config, "llama": LlamaConfig, "mistral": MistralConfig}


def build_tiny_tokenizer(family: str = "qwen2", vocab_size: int = TINY_LM_VOCAB) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on CORPUS, with the special tokens and chat template of `family`.

    Like the real checkpoints, the Llama-3 and Mistral tokenizers prepend their BOS token when
    `add_special_tokens=True`; Qwen2 adds nothing.
    """
    if family not in FAMILY_TOKENS:
        raise ValueError(f"unknown tiny LM family {family!r}; valid: {', '.join(TINY_LM_FAMILIES)}")
    spec = FAMILY_TOKENS[family]
    backend = Tokenizer(models.BPE())
    if family == "qwen2":
        # Qwen2's own pipeline (NFC + its split regex), which AutoTokenizer rebuilds on reload.
        backend.normalizer = normalizers.NFC()
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec["special"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([line for line in CORPUS if line.strip()], trainer=trainer)
    if spec["bos"] is not None:
        bos_id = backend.token_to_id(spec["bos"])
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A $B", special_tokens=[(spec["bos"], bos_id)]
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        unk_token="<unk>" if family == "mistral" else None,
        clean_up_tokenization_spaces=False,
        model_max_length=TINY_LM_SIZE["max_position_embeddings"],
    )
    tokenizer.chat_template = spec["chat_template"]
    return tokenizer


def build_tiny_sentencepiece_tokenizer(legacy: bool = True, vocab_size: int = 900) -> LlamaTokenizer:
    """A Llama-2 / Vicuna / Mistral-v0.2-style tokenizer: transformers' own LlamaTokenizer (SentencePiece-style
    BPE with byte fallback, `▁` word prefix, BOS added), with a vocabulary trained here on CORPUS.

    legacy=True prepends `▁` to the text after a special token as well (the original Llama behaviour);
    legacy=False only at the start of a string. Pad = unk, as LLaVA pads Llama-family LMs.
    """
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=[chr(c) for c in range(33, 127)], show_progress=False)
    backend.train_from_iterator([line for line in CORPUS if line.strip()], trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    # Llama's layout: <unk> <s> </s>, the 256 byte-fallback pieces, then the learned pieces.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{byte:02X}>": 3 + byte for byte in range(256)}}
    for piece, _ in sorted(model["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, legacy=legacy, add_bos_token=True,
                               model_max_length=TINY_LM_SIZE["max_position_embeddings"])
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def build_tiny_lm(out_dir: str | Path, family: str = "qwen2", seed: int = 0) -> Path:
    """Save a tiny random causal LM of `family` plus its offline tokenizer to `out_dir`; return the path.

    Loads back with `AutoModelForCausalLM.from_pretrained(out_dir)` / `AutoTokenizer.from_pretrained(out_dir)`.
    The model vocabulary equals `len(tokenizer)`.
    """
    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(family)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
           (("bos", tokenizer.bos_token), ("eos", tokenizer.eos_token), ("pad", tokenizer.pad_token))
           if token is not None}
    config = FAMILY_CONFIG[family](
        vocab_size=len(tokenizer),
        bos_token_id=ids.get("bos"),
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        tie_word_embeddings=False,
        **TINY_LM_SIZE,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids.get("bos"), eos_token_id=ids["eos"], pad_token_id=ids["pad"]
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
