"""Our LlavaNext checkpoints run in lmms-eval as `--model llava_hf --model_args pretrained=DIR`.

lmms-eval's own `llava_hf` model class (lmms-eval installed --no-deps; it imports decord, loguru,
pytz, datasets, evaluate) loads a tiny checkpoint of ours and answers a question; the answer equals
a plain transformers greedy generation on the prompt lmms-eval builds ("<image>\\n" + question in the
tokenizer's chat template).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

pytest.importorskip("lmms_eval", reason="lmms-eval is installed with --no-deps by the README's test command")


def test_llava_hf_loads_our_checkpoint_and_answers(tmp_path):
    from lmms_eval.api.instance import Instance
    from lmms_eval.models.simple.llava_hf import LlavaHf
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    from reasonclip_llava.testing.tiny_llava import save_tiny_llava_next

    checkpoint = save_tiny_llava_next(tmp_path / "tiny_llava")
    model = LlavaHf(pretrained=str(checkpoint), device="cpu", device_map="cpu", dtype="float32")
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    model.task_dict = {"toy": {"test": [{"image": image}]}}
    request = Instance(request_type="generate_until", idx=0, metadata={"task": "toy", "doc_id": 0, "repeats": 1},
                       arguments=("What colour is it?", {"max_new_tokens": 5, "do_sample": False, "temperature": 0},
                                  lambda doc: [doc["image"]], 0, "toy", "test"))
    (answer,) = model.generate_until([request])

    processor = AutoProcessor.from_pretrained(checkpoint)
    reference = LlavaNextForConditionalGeneration.from_pretrained(checkpoint).eval()
    text = processor.tokenizer.apply_chat_template([{"role": "user", "content": "<image>\nWhat colour is it?"}],
                                                   tokenize=False, add_generation_prompt=True)
    inputs = processor(images=[image], text=text, return_tensors="pt")
    with torch.no_grad():
        output = reference.generate(**inputs, max_new_tokens=5, do_sample=False)
    expected = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer and answer == expected
