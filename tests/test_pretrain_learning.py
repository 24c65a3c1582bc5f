"""Learning test: from one random-init tiny CLIP, READ (hard negatives + reconstruction + alignment) vs plain
contrastive on the synthetic compositional data, evaluated on held-out swap items.

What it measures, on held-out images and captions (`swap_eval.parquet`: a caption and a bag-of-words
identical negative with the colours, the shapes or the two noun phrases swapped), for both runs:

* image swap accuracy: sim(image, caption) > sim(image, negative). A bag-of-words model scores 50%.
* text swap separation: mean cos(text(caption), text(negative)). A bag-of-words text encoder gives ~1.

Asserted: READ's text encoder separates swapped captions clearly more than plain contrastive's (its
reconstruction target is another caption of the image, so the embedding has to keep which colour goes
with which shape and in which order). Printed, not asserted: the image swap accuracies. At this CPU
budget (a few hundred steps of a 32-wide CLIP trained from scratch) neither run gets the vision tower
past a bag of colours and shapes (a linear probe for "colour of the left object" stays at the 50% that
knowing the two colours gives), so both image accuracies stay near 50%. The image-side effect of hard
negatives is tested in test_hard_negative_learning.py, on a world built for it (docs/LEARNING_STUDY.md).
"""

from __future__ import annotations

import re
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import T5Config, T5ForConditionalGeneration

from pretrain_helpers import learnable_tiny_clip, recipe, single_thread, swap_pair_embeddings
from reasonclip_llava.data import build_tiny_t5_tokenizer, generate_synthetic
from reasonclip_llava.data.synthetic import _a  # the generator's own article rule
from reasonclip_llava.pretrain.trainer import pretrain_from_yaml

NUM_IMAGES, STEPS, BATCH, LR = 2500, 400, 32, "2e-3"


def _tiny_t5(out_dir):
    tokenizer = build_tiny_t5_tokenizer(out_dir)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(config).save_pretrained(out_dir)
    return out_dir


def _as_training_template(caption: str) -> str:
    """'the red circle is left of the blue square' -> 'a red circle left of a blue square' (the tb template)."""
    match = re.fullmatch(r"the (.+) is (.+) the (.+)", caption)
    return f"{_a(match[1])} {match[2]} {_a(match[3])}"


def _swap_scores(checkpoint, swap_eval, image_root, template) -> tuple[float, float]:
    """(image swap accuracy, mean cos(text(caption), text(negative))) on the held-out swap items."""
    rows = pq.read_table(swap_eval).to_pylist()
    images, positive, negative = swap_pair_embeddings(checkpoint, [image_root / r["image_path"] for r in rows],
                                                      [template(r["caption"]) for r in rows],
                                                      [template(r["negative_caption"]) for r in rows])
    accuracy = ((images * positive).sum(-1) > (images * negative).sum(-1)).float().mean().item()
    return accuracy, (positive * negative).sum(-1).mean().item()


@pytest.mark.slow
def test_read_objectives_teach_the_text_encoder_composition(tmp_path):
    data = generate_synthetic(tmp_path / "synthetic", num_images=NUM_IMAGES, image_size=32)
    rows = pq.read_table(data["reasonlite"]).to_pylist()
    # Each image's attribute caption and relation caption ("a red circle left of a blue square"); READ
    # contrasts one, reconstructs / aligns with the other. The symmetric "A and B" caption is left out
    # (its noun-phrase swap would be a true caption, i.e. a false negative).
    pairs = tmp_path / "synthetic" / "pairs.parquet"
    pq.write_table(pa.table({"image_path": [r["image_path"] for r in rows], "captions": [[r["tb"][1], r["tb"][2]] for r in rows]}), pairs)
    clip, t5 = learnable_tiny_clip(tmp_path / "clip"), _tiny_t5(tmp_path / "t5")
    common = [f"--model.name_or_path={clip}", f"--data.train={pairs}", "--data.caption_columns=captions", f"--data.batch_size={BATCH}",
              f"--schedule.max_steps={STEPS}", "--schedule.warmup_ratio=0.05", f"--optim.lr={LR}", "--optim.lr_logit_scale=1e-2",
              "--optim.weight_decay=0", "--runtime.save_every=0", "--runtime.report_to=", f"--stage.t5_model={t5}"]
    runs, seconds = {}, {}
    with single_thread():
        for name, extra in (("plain", ["--stage.name=stage0", "--stage.hard_negatives=0"]),
                            ("read", ["--stage.name=read", "--stage.hard_negatives=3"])):
            start = time.perf_counter()
            runs[name] = pretrain_from_yaml(recipe("read"), [*common, *extra, f"--runtime.output_dir={tmp_path / name}"])
            seconds[name] = time.perf_counter() - start
        scores = {(name, template_name): _swap_scores(path, data["swap_eval"], data["root"], template)
                  for name, path in runs.items()
                  for template_name, template in (("training template", _as_training_template), ("eval template", lambda c: c))}
    for (name, template_name), (accuracy, cosine) in scores.items():
        print(f"{name:5s} ({seconds[name]:.0f} s) {template_name:17s}: image swap accuracy {accuracy:.1%} "
              f"(bag of words: 50%), cos(caption, swapped caption) {cosine:.3f}")
    for template_name in ("training template", "eval template"):
        plain_cos, read_cos = scores[("plain", template_name)][1], scores[("read", template_name)][1]
        assert read_cos < plain_cos - 0.1, f"{template_name}: READ cos {read_cos:.3f} vs plain {plain_cos:.3f}"
