"""Files in exactly the published schemas (written here, see published_files.py) train every stage through
the real trainer; the held-out loss matches a plain CLIPModel reference; best/ is written and exportable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from pretrain_helpers import recipe, single_thread
from published_files import lite_rows, write_published
from reasonclip_llava.cli import main as cli_main
from reasonclip_llava.pretrain.demo import build_tiny_t5
from reasonclip_llava.pretrain.trainer import pretrain_from_yaml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_published(tmp_path_factory.mktemp("published"), num_images=20)


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def _run(stage_recipe, clip, train, out, *extra):
    return pretrain_from_yaml(recipe(stage_recipe), [
        f"--model.name_or_path={clip}", f"--data.train={train}", f"--runtime.output_dir={out}",
        "--data.batch_size=8", "--runtime.report_to=", "--runtime.save_every=0", *extra])


def _steps(final):
    return json.loads((final / "training_summary.json").read_text())["steps"]


@pytest.mark.parametrize("captions, source, extra, samples_per_epoch", [
    # CC12M-Refined: every tb caption its own sample (3 x 20 rows)
    ("descriptive", "refined", [], 60),
    # "ReasonCLIP-58M": ReasonLite trl (3 x 20) + ReasonPro trp (1 x 20), shuffled together
    ("reasoning", "lite", ["sources"], 80),
])
def test_stage0_trains_on_the_published_sources(files, tiny_clip_dir, tmp_path, captions, source, extra, samples_per_epoch):
    sources = [f"--data.sources=[{files['pro']}]"] if extra else []
    final = _run("stage0", tiny_clip_dir, files[source], tmp_path, "--stage.name=stage0", f"--stage.captions={captions}",
                 "--data.samples=all_pairs", "--data.sampler=distinct_images", "--schedule.max_steps=null", "--schedule.epochs=1", *sources)
    assert _steps(final) == samples_per_epoch // 8  # one epoch of the published samples
    assert (final / "model.safetensors").is_file()


def test_stage2_trains_on_published_reasonpro(files, tiny_clip_dir, tmp_path):
    final = _run("stage2", tiny_clip_dir, files["pro"], tmp_path, "--data.samples=all_pairs", "--schedule.max_steps=2")
    heads = load_file(str(final / "heads.safetensors"))
    assert any(k.startswith("category_heads.") for k in heads)
    assert _steps(final) == 2


def test_read_trains_on_coco_style_captions(files, tiny_clip_dir, tmp_path):
    t5 = build_tiny_t5(tmp_path / "tiny_t5")
    final = _run("read", tiny_clip_dir, files["coco"], tmp_path / "run", f"--stage.t5_model={t5}", "--data.caption_columns=[captions]",
                 "--schedule.max_steps=2")
    assert _steps(final) == 2


def _w_published(p):  # METHOD.md: 0.70 while p <= 0.2, linear to 0.50 at p = 0.8, then 0.60
    return 0.70 if p <= 0.2 else 0.70 + (0.50 - 0.70) * (p - 0.2) / 0.6 if p <= 0.8 else 0.60


def _clip(logits):
    labels = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@torch.no_grad()
def _stage1_reference_loss(checkpoint, start, held_rows, p):
    """w CLIP(img, tb) + (1 - w) CLIP(img, trl) + 1e-5 sum (theta - theta0)^2 with CLIPModel's own logits,
    over the held-out rows' 9 pairs each (row order, the authors' pair numbering), batches of 8, sample-weighted."""
    model, base = CLIPModel.from_pretrained(checkpoint).eval(), CLIPModel.from_pretrained(start)
    tokenizer, processor = AutoTokenizer.from_pretrained(checkpoint), AutoImageProcessor.from_pretrained(checkpoint)
    anchored = [n for n, _ in model.named_parameters() if ("vision_model." in n or "text_model." in n)
                and "projection" not in n and "logit_" not in n]
    params, params0 = dict(model.named_parameters()), dict(base.named_parameters())
    anchor = 1e-5 * sum(((params[n] - params0[n]) ** 2).sum() for n in anchored)
    samples = [(row["image_path"], row["tb"][k // 3], row["trl"][k % 3]) for row in held_rows for k in range(9)]
    total, count = 0.0, 0
    for start_index in range(0, len(samples), 8):
        batch = samples[start_index:start_index + 8]
        pixels = processor(images=[Image.open(s[0]).convert("RGB") for s in batch], return_tensors="pt")["pixel_values"]
        logits = {}
        for column, texts in (("tb", [s[1] for s in batch]), ("trl", [s[2] for s in batch])):
            text = tokenizer(texts, padding=True, return_tensors="pt")
            logits[column] = model(pixel_values=pixels, input_ids=text["input_ids"], attention_mask=text["attention_mask"]).logits_per_image
        w = _w_published(p)
        loss = w * _clip(logits["tb"]) + (1 - w) * _clip(logits["trl"]) + anchor
        total, count = total + loss.item() * len(batch), count + len(batch)
    return total / count


def test_stage1_published_samples_holdout_loss_best_and_export(files, tiny_clip_dir, tmp_path):
    out = tmp_path / "run"
    final = _run("stage1", tiny_clip_dir, files["lite"], out, "--data.samples=all_pairs", "--data.sampler=distinct_images",
                 "--data.holdout_ratio=0.2", "--data.eval_every=0.5", "--schedule.max_steps=4")
    log = [json.loads(line) for line in (out / "eval_loss.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [2, 4]  # every 50% of 4 steps

    # The held-out rows: seed 42's split of the 20 rows of both chunks (datasets' train_test_split rule).
    held = sorted(np.random.default_rng(42).permutation(20)[:4].tolist())
    rows = lite_rows(files["images"])
    reference = _stage1_reference_loss(final, tiny_clip_dir, [rows[i] for i in held], p=4 / 4)
    assert log[-1]["eval_loss"] == pytest.approx(reference, rel=1e-4)

    best = out / "best"
    summary = json.loads((best / "eval_summary.json").read_text())
    lowest = min(log, key=lambda entry: entry["eval_loss"])
    assert summary == {"step": lowest["step"], "eval_loss": lowest["eval_loss"]}
    assert json.loads((final / "training_summary.json").read_text())["best_step"] == lowest["step"]
    assert not list(out.glob(".tmp-*"))

    exported = tmp_path / "export_best"
    assert cli_main(["export", str(best), str(exported)]) == 0
    plain, trained = load_file(str(exported / "model.safetensors")), load_file(str(best / "model.safetensors"))
    assert plain.keys() == trained.keys() and all(torch.equal(plain[k], trained[k]) for k in plain)
    same_as_final = all(torch.equal(trained[k], v) for k, v in load_file(str(final / "model.safetensors")).items())
    assert same_as_final == (lowest["step"] == 4)


def test_resume_keeps_the_best_held_out_loss(files, tiny_clip_dir, tmp_path):
    args = ("--data.samples=all_pairs", "--data.sampler=distinct_images", "--data.holdout_ratio=0.2", "--data.eval_every=1",
            "--schedule.max_steps=3", "--runtime.keep_last=null")
    first = _run("stage1", tiny_clip_dir, files["lite"], tmp_path / "a", *args, "--runtime.save_every=1")
    resumed = _run("stage1", tiny_clip_dir, files["lite"], tmp_path / "b", *args, f"--runtime.resume_from={tmp_path / 'a' / 'checkpoint-2'}")
    log_a = [json.loads(line) for line in (tmp_path / "a" / "eval_loss.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (tmp_path / "b" / "eval_loss.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log_a] == [1, 2, 3] and [e["step"] for e in log_b] == [3]
    assert log_b[0] == log_a[2]  # same weights, same held-out loss, and "best" judged against the restored best
    summary = lambda final: {k: v for k, v in json.loads((final / "training_summary.json").read_text()).items() if k.startswith("best")}  # noqa: E731
    assert summary(resumed) == summary(first)


def test_two_processes_match_one_with_distinct_images_and_holdout(files, tiny_clip_dir, tmp_path):
    # The distinct-image order is global and rank-strided, so 2 ranks x 4 see the same global batches as
    # 1 x 8, in training and in the held-out pass (whose loss is reduced over the ranks).
    import os
    import socket
    import subprocess
    import sys

    from pretrain_helpers import REPO, checkpoint_tensors

    args = ["--data.samples=all_pairs", "--data.sampler=distinct_images", "--data.holdout_ratio=0.2", "--data.eval_every=2",
            "--schedule.max_steps=2", "--optim.lr=1e-4"]
    single = _run("stage1", tiny_clip_dir, files["lite"], tmp_path / "one", *args)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    overrides = [f"--model.name_or_path={tiny_clip_dir}", f"--data.train={files['lite']}", f"--runtime.output_dir={tmp_path / 'two'}",
                 "--data.batch_size=4", "--runtime.report_to=", "--runtime.save_every=0", *args]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                             f"--master_port={port}", "-m", "reasonclip_llava.pretrain", str(recipe("stage1")), *overrides],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one_log = json.loads((tmp_path / "one" / "eval_loss.jsonl").read_text())
    two_log = json.loads((tmp_path / "two" / "eval_loss.jsonl").read_text())
    assert two_log["step"] == one_log["step"] == 2
    assert two_log["eval_loss"] == pytest.approx(one_log["eval_loss"], rel=1e-4)
    expected, got = checkpoint_tensors(single), checkpoint_tensors(tmp_path / "two" / "final")
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) < 1e-5
