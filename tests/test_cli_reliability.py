"""Nothing lost, nothing silently wrong: the commands a user types, given the wrong thing.

Wrong model types, an existing --out, a crash or a full disk mid-write, truncated / pickle weight files,
out-of-range values, non-UTF-8 data and missing paths: each is one line naming the problem (exit 2),
and nothing that existed before is changed.
"""

from __future__ import annotations

import errno
import json
import pickle
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

from crash_helpers import one_error_line
from reasonclip_llava.cli import main
from reasonclip_llava.testing.tiny_lm import build_tiny_lm


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("lm") / "qwen2")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory, lm_dir, tiny_clip_dir):
    out = tmp_path_factory.mktemp("llava") / "built"
    assert main(["llava-build", "--lm", str(lm_dir), "--encoder", str(tiny_clip_dir), "--out", str(out)]) == 0
    return out


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---- 1: the model type and the keys of what is loaded ------------------------------------------------
def test_swap_and_build_check_what_they_are_given(tiny_clip_dir, lm_dir, tmp_path, capsys):
    # `swap --llava <a CLIP dir>` used to write a LLaVA-NeXT with every weight random, exit 0
    assert main(["swap", "--llava", str(tiny_clip_dir), "--encoder", str(tiny_clip_dir), "--out", str(tmp_path / "x")]) == 2
    assert "is a 'clip' checkpoint; expected a LLaVA-NeXT checkpoint" in one_error_line(capsys)
    assert main(["llava-build", "--lm", str(tiny_clip_dir), "--encoder", str(tiny_clip_dir), "--out", str(tmp_path / "y")]) == 2
    assert "language model" in one_error_line(capsys)
    # an LM directory whose weights lack a tensor: named, not initialised at random
    broken = tmp_path / "broken_lm"
    shutil.copytree(lm_dir, broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.norm.weight"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    assert main(["llava-build", "--lm", str(broken), "--encoder", str(tiny_clip_dir), "--out", str(tmp_path / "z")]) == 2
    assert "missing_keys=1 ['model.norm.weight']" in one_error_line(capsys)
    assert not any((tmp_path / name).exists() for name in "xyz")


def test_swap_refuses_a_llava_checkpoint_with_unexpected_weights(llava_dir, tiny_clip_dir, tmp_path, capsys):
    odd = tmp_path / "odd_llava"
    shutil.copytree(llava_dir, odd)
    tensors = load_file(odd / "model.safetensors")
    tensors["model.extra_adapter.weight"] = tensors[next(iter(tensors))].clone()
    save_file(tensors, odd / "model.safetensors", metadata={"format": "pt"})
    assert main(["swap", "--llava", str(odd), "--encoder", str(tiny_clip_dir), "--out", str(tmp_path / "out")]) == 2
    assert "unexpected_keys=1" in one_error_line(capsys)


# ---- 2: an existing --out, a crash mid-write, a full disk ----------------------------------------------
def test_model_writers_refuse_a_non_empty_out_unless_overwrite(llava_dir, lm_dir, tiny_clip_dir, tmp_path, capsys):
    trained = tmp_path / "trained"
    shutil.copytree(llava_dir, trained)
    (trained / "checkpoint-5").mkdir()
    (trained / "checkpoint-5" / "optimizer.pt").write_bytes(b"old")
    (trained / "trainer_state.json").write_text("{}")
    before = snapshot(trained)
    build = ["llava-build", "--lm", str(lm_dir), "--encoder", str(tiny_clip_dir), "--out", str(trained)]
    commands = {
        "llava-build": build,
        "swap": ["swap", "--llava", str(llava_dir), "--encoder", str(tiny_clip_dir), "--out", str(trained)],
        "llava-merge": ["llava-merge", str(llava_dir), str(trained)],
    }
    for name, command in commands.items():
        assert main(command) == 2, name
        assert "is not empty; pass --overwrite" in one_error_line(capsys), name
        assert snapshot(trained) == before, name
    # --overwrite replaces the directory as a whole: no stale checkpoint or trainer state is left beside it
    assert main([*build, "--overwrite"]) == 0
    assert not (trained / "checkpoint-5").exists() and not (trained / "trainer_state.json").exists()
    LlavaNextForConditionalGeneration.from_pretrained(trained)
    assert not list(tmp_path.glob(".trained.tmp-*"))


def test_a_crash_or_full_disk_mid_write_leaves_the_old_out(llava_dir, tiny_clip_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "swapped"
    shutil.copytree(llava_dir, out)
    before = snapshot(out)
    swap = ["swap", "--llava", str(llava_dir), "--encoder", str(tiny_clip_dir), "--out", str(out), "--overwrite"]

    def full_disk(self, directory, *args, **kwargs):  # noqa: ANN001, ANN202
        (Path(directory) / "tokenizer.json").write_text("{")  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(directory) / "tokenizer.json"))

    monkeypatch.setattr(LlavaNextProcessor, "save_pretrained", full_disk)
    assert main(swap) == 2
    line = one_error_line(capsys)
    assert f"writing {out} failed: No space left on device" in line and "partial copy was removed" in line
    assert snapshot(out) == before and not list(tmp_path.glob(".swapped.tmp-*"))

    def crash(self, directory, *args, **kwargs):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt  # killed mid-write
    monkeypatch.setattr(LlavaNextProcessor, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        main(swap)
    assert snapshot(out) == before and not list(tmp_path.glob(".swapped.tmp-*"))


def test_card_keeps_a_foreign_readme_and_replaces_it_only_with_overwrite(llava_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(llava_dir, model)
    (model / "README.md").write_text("hand-written")
    (model / "README.previous.md").write_text("older")
    assert main(["card", str(model)]) == 2
    assert "--overwrite" in one_error_line(capsys)
    assert (model / "README.md").read_text() == "hand-written"
    assert main(["card", str(model), "--overwrite"]) == 0
    assert "hand-written" not in (model / "README.md").read_text() and (model / "README.previous.md").read_text() == "older"


# ---- 5: corrupt or unreadable weight files -------------------------------------------------------------
class _Payload:
    """Unpickling this writes a file: the proof that a pickle was (or was not) executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled!"))


@pytest.mark.parametrize("damage", ["truncated", "pickle", "pickle_only"])
def test_unreadable_weights_are_one_line_naming_the_file(tiny_clip_dir, lm_dir, tmp_path, capsys, damage):
    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_clip_dir, encoder)
    weights = encoder / "model.safetensors"
    marker = tmp_path / "unpickled.txt"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        expected = f"{weights}: not a complete safetensors file"
    elif damage == "pickle":
        weights.write_bytes(pickle.dumps(_Payload(marker)))
        expected = f"{weights}: a pickle (torch.save) file where safetensors is expected; it is not unpickled"
    else:
        weights.unlink()
        (encoder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
        expected = "has only pickle weights"
    for command in (
        ["export", str(encoder), str(tmp_path / "export")],
        ["llava-build", "--lm", str(lm_dir), "--encoder", str(encoder), "--out", str(tmp_path / "llava")],
        ["eval", "clip", "--model", str(encoder), "--benchmark", "zeroshot", "--images", str(tmp_path)],
        ["verify", str(encoder), "--base", str(tiny_clip_dir)],
    ):
        assert main(command) == 2, command
        assert expected in one_error_line(capsys), command
    assert not marker.exists()  # never unpickled
    assert not (tmp_path / "export").exists() and not (tmp_path / "llava").exists()


# ---- 7: value ranges -----------------------------------------------------------------------------------
@pytest.mark.parametrize("override,message", [
    ("--optim.lr=-1", "config key 'optim.lr' must be > 0 (got -1.0)"),
    ("--runtime.log_every=0", "config key 'runtime.log_every' must be >= 1 (got 0)"),
    ("--runtime.save_every=-1", "config key 'runtime.save_every' must be >= 0 (got -1)"),
    ("--data.max_length=0", "config key 'data.max_length' must be >= 1 (got 0)"),
    ("--optim.betas=[0.9,1.5]", "config key 'optim.betas' must be [0, 1)"),
    ("--schedule.warmup_ratio=2", "config key 'schedule.warmup_ratio' must be [0, 1]"),
])
def test_pretrain_values_out_of_range_name_the_key(tmp_path, capsys, override, message):
    args = ["pretrain", "train/tiny_stage1.yaml", "--model.name_or_path=x", f"--data.train={tmp_path}", f"--runtime.output_dir={tmp_path}"]
    assert main([*args, override]) == 2
    assert message in one_error_line(capsys)


@pytest.mark.parametrize("override,message", [
    ("--learning_rate=-1", "config key 'learning_rate' must be > 0"),
    ("--model_max_length=0", "config key 'model_max_length' must be >= 1"),
    ("--logging_steps=0", "config key 'logging_steps' must be >= 1"),
    ("--lora_dropout=1", "config key 'lora_dropout' must be [0, 1)"),
])
def test_llava_train_values_out_of_range_name_the_key(tmp_path, capsys, override, message):
    data = tmp_path / "data.json"
    data.write_text("[]")
    assert main(["llava-train", "--model_name_or_path=x", f"--data_path={data}", override]) == 2
    assert message in one_error_line(capsys)


def test_select_layer_and_max_length_are_checked_against_the_model(lm_dir, llava_dir, tiny_clip_dir, tmp_path, capsys):
    assert main(["llava-build", "--lm", str(lm_dir), "--encoder", str(tiny_clip_dir), "--out", str(tmp_path / "o"), "--select-layer", "99"]) == 2
    layers = json.loads((tiny_clip_dir / "config.json").read_text())["vision_config"]["num_hidden_layers"]
    assert f"99 is outside the tower's hidden states: it has {layers} layers" in one_error_line(capsys)
    positions = json.loads((llava_dir / "config.json").read_text())["text_config"]["max_position_embeddings"]
    data = tmp_path / "data.json"
    data.write_text("[]")
    assert main(["llava-train", f"--model_name_or_path={llava_dir}", f"--data_path={data}", f"--model_max_length={positions + 1}",
                 f"--output_dir={tmp_path / 'run'}"]) == 2
    assert f"config key 'model_max_length' must be <= {positions}" in one_error_line(capsys)


# ---- 8: non-UTF-8 data, missing paths --------------------------------------------------------------------
def test_non_utf8_jsonl_names_file_and_line(tmp_path):
    from reasonclip_llava.data.rows import RowTable
    from reasonclip_llava.mllm_train.data import load_rows

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"image_path": "a.png", "captions": ["ok"]}\n{"image_path": "b.png", "captions": ["caf\xe9"]}\n')
    with pytest.raises(ValueError, match=rf"^{path}:2: not UTF-8 text \(byte 0xe9 at column 42\)"):
        load_rows(path)
    with pytest.raises(ValueError, match=rf"^{path}:2: not UTF-8 text"):
        len(RowTable(path, required=["image_path"]))


def test_verify_on_a_missing_dir_says_so(tiny_clip_dir, tmp_path, capsys):
    missing = tmp_path / "no_such_export"
    assert main(["verify", str(missing), "--base", str(tiny_clip_dir)]) == 2
    line = one_error_line(capsys)
    assert f"{missing}: path does not exist" in line and "Repo id" not in line
