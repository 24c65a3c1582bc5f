"""The prompt ids `eval vqa` feeds, per harness: `--prompts llava` feeds what LLaVA's eval scripts feed
(model_vqa_loader: conv_templates[...].get_prompt() through `llava.mm_utils.tokenizer_image_token`, the image
token expanded as the processor expands it) and what training tokenizes for the same user turn; `--prompts
lmms_eval` feeds what lmms-eval's llava_hf feeds (`processor(images=..., text=prompt)`). For a
SentencePiece tokenizer with legacy=False (Llama-2 / Vicuna-v1.5, the LLaVA-1.5 LM) the two differ by the `▁`
that LLaVA puts after the image; for byte-level BPE (Qwen2) they are the same ids. Both architectures, saved
checkpoints reloaded as evaluation loads them; batched answers equal one-by-one answers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

from reasonclip_llava.evaluation.benchmarks import VQAQuestion
from reasonclip_llava.evaluation.generate import build_prompt, generate_answers, llava_prompt_inputs, prepare_inputs
from reasonclip_llava.mllm_train.data import IGNORE_INDEX, LlavaConversationDataset
from reasonclip_llava.mllm_train.templates import get_template, place_image
from reasonclip_llava.testing.tiny_lm import TINY_LM_SIZE, build_tiny_lm, build_tiny_sentencepiece_tokenizer
from reasonclip_llava.vlm.architectures import get_architecture
from reasonclip_llava.vlm.build import build_llava, save_llava

ARCHS = ("llava", "llava_next")
# LLaVA's conv_vicuna_v1 (llava/conversation.py, SeparatorStyle.TWO) for one user turn + the generation prompt:
# "{system} USER: {message} ASSISTANT:". The prompt text is asserted equal to LLaVA's own get_prompt below.
VICUNA_V1_JINJA = (
    "{{ \"A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.\" }}"
    "{% for message in messages %} USER: {{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)
# tokenizer -> (training template, eval conv_template (None: the checkpoint's own), LLaVA conv_templates key or None)
TOKENIZERS = {
    "sentencepiece legacy=False": ("vicuna_v1", VICUNA_V1_JINJA, "vicuna_v1"),
    "byte-level BPE (Qwen2)": ("qwen_1_5", None, None),
}
# (height, width): different anyres grids and unpadded counts; one tall, one wide, one square, one tiny.
IMAGE_SIZES = [(40, 90), (100, 30), (64, 64), (20, 20)]
PROMPTS = ["What colour is the cat?", "How many birds are there?\nAnswer the question using a single word or phrase.",
           " Is there a red ball above the table? ", "Which one is on the right?\nA. dog\nB. cat"]


def save_sentencepiece_lm(out_dir: Path) -> Path:
    """A tiny Llama whose tokenizer is the Llama-2-style SentencePiece one with legacy=False (wide init, so
    that answers depend on the prompt)."""
    tokenizer = build_tiny_sentencepiece_tokenizer(legacy=False)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, initializer_range=0.5, tie_word_embeddings=False, **TINY_LM_SIZE)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_clip_dir) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("llava_tokens")
    lms = {"sentencepiece legacy=False": save_sentencepiece_lm(root / "lm_sp"),
           "byte-level BPE (Qwen2)": build_tiny_lm(root / "lm_qwen2", "qwen2")}
    out = {}
    for name, lm in lms.items():
        for arch in ARCHS:
            model, processor = build_llava(lm, tiny_clip_dir, arch=arch)
            out[name, arch] = save_llava(model, processor, root / f"{arch}-{name.split()[0]}")
    return out


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> list[VQAQuestion]:
    folder = tmp_path_factory.mktemp("llava_token_images")
    rng = np.random.default_rng(0)
    items = []
    for i, ((height, width), prompt) in enumerate(zip(IMAGE_SIZES, PROMPTS)):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        items.append(VQAQuestion(f"img-{i}", str(folder / f"{i}.png"), prompt, max_new_tokens=6))
    return items + [VQAQuestion(f"text-{i}", None, prompt, max_new_tokens=6) for i, prompt in enumerate(PROMPTS[:2])]


def real_ids(inputs, row: int = 0) -> list[int]:
    return inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()


def llava_reference(prompt: str, processor, image: Image.Image | None) -> list[int]:
    """LLaVA's eval-script ids (`tokenizer_image_token`), IMAGE_TOKEN_INDEX expanded to the count the processor's
    own expansion gives for this image (counted in the processor's output, not by our code)."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token

    ids = tokenizer_image_token(prompt, processor.tokenizer, IMAGE_TOKEN_INDEX)
    if image is None:
        return ids
    count = processor(images=[image], text=prompt, return_tensors="pt")["input_ids"][0].tolist().count(processor.image_token_id)
    at = ids.index(IMAGE_TOKEN_INDEX)
    return ids[:at] + [processor.image_token_id] * count + ids[at + 1:]


def llava_script_prompt(conv_mode: str, question: VQAQuestion) -> str:
    """model_vqa_loader's prompt: `<image>\\n` + the question as the user message, then the generation prompt."""
    from llava.conversation import conv_templates

    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], ("<image>\n" if question.image else "") + question.prompt)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def same_turn(question: VQAQuestion, template: str) -> VQAQuestion:
    """The question whose user message is the one training's `place_image` makes of `<image>\n` + its prompt."""
    if question.image is None:
        return question
    placed = place_image("<image>\n" + question.prompt, get_template(template).image_placement)
    return replace(question, prompt=placed.removeprefix("<image>\n"))


def training_prompt_ids(root: Path, processor, template: str, arch: str, question: VQAQuestion) -> list[int]:
    """The ids LlavaConversationDataset trains on for the same user turn: the row's ids before its first
    supervised label (the answer), image tokens expanded by the dataset itself."""
    row = {"id": question.question_id, "conversations": [
        {"from": "human", "value": ("<image>\n" if question.image else "") + question.prompt}, {"from": "gpt", "value": "Yes."}]}
    if question.image:
        row["image"] = question.image
    path = root / f"{question.question_id}.json"
    path.write_text(json.dumps([row]))
    dataset = LlavaConversationDataset(path, None, processor, template, 4096,
                                       image_aspect_ratio=get_architecture(arch).image_aspect_ratios[0])
    item = dataset[0]
    first_answer = next(i for i, label in enumerate(item["labels"].tolist()) if label != IGNORE_INDEX)
    return item["input_ids"][:first_answer].tolist()


def test_prompt_ids_per_harness(checkpoints, questions, tmp_path, capsys):
    table = {}
    for (name, arch), checkpoint in checkpoints.items():
        template, conv_template, conv_mode = TOKENIZERS[name]
        processor = get_architecture(arch).processor_class.from_pretrained(checkpoint)  # what evaluation loads
        counts = dict.fromkeys(("llava: = tokenizer_image_token", "llava: = training", "lmms_eval: = llava_hf",
                                "llava == lmms_eval"), 0)
        placed = 0
        for question in questions:
            prompt = build_prompt(processor, question.prompt, question.image is not None, conv_template)
            if conv_mode is not None:  # the prompt text itself is LLaVA's (a precondition of comparing ids)
                assert prompt == llava_script_prompt(conv_mode, question), (name, question.question_id)
            image = Image.open(question.image).convert("RGB") if question.image else None
            llava_inputs = prepare_inputs(processor, [question], conv_template=conv_template, special_tokens="once")
            ours_llava = real_ids(llava_inputs)
            ours_lmms = prepare_inputs(processor, [question], conv_template=conv_template, special_tokens="always")
            llava_hf = processor(images=image, text=prompt, return_tensors="pt")  # lmms-eval llava_hf's own call
            counts["llava: = tokenizer_image_token"] += ours_llava == llava_reference(prompt, processor, image)
            # The same user turn: the message as training's placement rule leaves it (LLaVA-1.5's strips the text
            # around `<image>\n`, its model_vqa_loader does not: a text difference, LLaVA's own, counted apart).
            turn = same_turn(question, template)
            placed += turn != question
            turn_ids = ours_llava if turn == question else real_ids(prepare_inputs(processor, [turn], conv_template=conv_template))
            counts["llava: = training"] += turn_ids == training_prompt_ids(tmp_path, processor, template, arch, turn)
            counts["lmms_eval: = llava_hf"] += real_ids(ours_lmms) == llava_hf["input_ids"][0].tolist()
            counts["llava == lmms_eval"] += ours_llava == real_ids(ours_lmms)
            if image is not None:  # the processor's pixel inputs in both modes
                assert all(torch.equal(inputs[key], llava_hf[key]) for key in llava_hf if key not in ("input_ids", "attention_mask")
                           for inputs in (llava_inputs, ours_lmms))
            if name.startswith("sentencepiece") and image is not None:
                # The seam itself: in context the processor drops the `▁` LLaVA's pieces start with after the image.
                last_image = len(ours_llava) - 1 - ours_llava[::-1].index(processor.image_token_id)
                assert processor.tokenizer.convert_ids_to_tokens(ours_llava[last_image + 1]) == "▁"
                assert ours_llava[:last_image + 1] + ours_llava[last_image + 2:] == real_ids(ours_lmms)
        table[name, arch] = counts
        assert placed == (1 if template == "vicuna_v1" else 0)  # only the prompt with outer spaces, only LLaVA-1.5's rule
    with capsys.disabled():
        print(f"\n{'tokenizer':28} {'arch':11} " + "  ".join(table[next(iter(table))]) + f"   (of {len(questions)} prompts)")
        for (name, arch), counts in table.items():
            print(f"{name:28} {arch:11} " + "  ".join(f"{n:>{len(k)}}" for k, n in counts.items()))
    n = len(questions)
    for (name, arch), counts in table.items():
        assert counts["llava: = tokenizer_image_token"] == counts["llava: = training"] == counts["lmms_eval: = llava_hf"] == n, (name, arch)
        # byte-level: one id sequence whichever harness; SentencePiece legacy=False: every image prompt differs
        assert counts["llava == lmms_eval"] == (n if name.startswith("byte") else n - len(IMAGE_SIZES)), (name, arch)


def test_llava_inputs_are_the_processors_but_for_the_pieces(checkpoints, questions):
    """Byte-level BPE: the LLaVA-style batch is the processor's batch exactly (ids, mask, pixels, image_sizes),
    left-padded; so the image-token count and the pixel inputs are the processor's own, batched too."""
    images = [Image.open(q.image).convert("RGB") for q in questions[:len(IMAGE_SIZES)]]
    for arch in ARCHS:
        processor = get_architecture(arch).processor_class.from_pretrained(checkpoints["byte-level BPE (Qwen2)", arch])
        prompts = [build_prompt(processor, q.prompt, True) for q in questions[:len(IMAGE_SIZES)]]
        ours = llava_prompt_inputs(processor, prompts, images)
        theirs = processor(text=prompts, images=images, padding=True, padding_side="left", return_tensors="pt")
        assert set(ours) == set(theirs), arch
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), arch
        assert (ours["attention_mask"][:, -1] == 1).all() and (ours["attention_mask"][:, 0] == 0).any()
        with pytest.raises(ValueError, match=r"^question q: the prompt holds 0 <image> tokens for 1 image"):
            llava_prompt_inputs(processor, ["no placeholder"], images[:1], owners=["question q"])


@pytest.mark.parametrize("arch", ARCHS)
def test_sentencepiece_batched_answers_equal_one_by_one(checkpoints, questions, arch, tmp_path):
    checkpoint = checkpoints["sentencepiece legacy=False", arch]
    single = generate_answers(checkpoint, questions, tmp_path / "b1.jsonl", batch_size=1, progress=False,
                              conv_template=VICUNA_V1_JINJA)
    batched = generate_answers(checkpoint, questions, tmp_path / "b3.jsonl", batch_size=3, progress=False,
                               conv_template=VICUNA_V1_JINJA)
    rows = [[json.loads(line) for line in path.read_text().splitlines()[1:]] for path in (single, batched)]
    answers = [{row["question_id"]: row["text"] for row in file_rows} for file_rows in rows]
    assert answers[0] == answers[1]
    assert len(set(answers[0].values())) > len(questions) // 2  # answers depend on the prompt
