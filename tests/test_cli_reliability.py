"""Nothing lost, nothing silently wrong: the commands a user types, given the wrong thing.

Wrong model types, an existing --out, a crash or a full disk mid-write, truncated / pickle weight files,
out-of-range values, non-UTF-8 data and missing paths: each is one line naming the problem (exit 2),
and nothing that existed before is changed.
"""

from __future__ import annotations

import errno
import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

from crash_helpers import WEIGHT_DAMAGES, Payload, damage_weights, one_error_line
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
    line = one_error_line(capsys)
    assert "model_type 'clip' (tower 'clip_vision_model') is not a VLM family" in line
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
@pytest.mark.parametrize("damage", WEIGHT_DAMAGES)
def test_unreadable_weights_are_one_line_naming_the_file(tiny_clip_dir, lm_dir, tmp_path, capsys, damage):
    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_clip_dir, encoder)
    marker = tmp_path / "unpickled.txt"
    named = damage_weights(encoder / "model.safetensors", damage, marker, "pytorch_model.bin")
    expected = {"truncated": f"{named}: not a complete safetensors file",
                "pickled": f"{named}: a pickle (torch.save) file where safetensors is expected; it is not unpickled",
                "pickle_only": f"{named}: "}[damage]  # "... {what} {encoder} has only pickle weights", what per command
    for command in (
        ["export", str(encoder), str(tmp_path / "export")],
        ["llava-build", "--lm", str(lm_dir), "--encoder", str(encoder), "--out", str(tmp_path / "llava")],
        ["eval", "clip", "--model", str(encoder), "--benchmark", "zeroshot", "--images", str(tmp_path)],
        ["verify", str(encoder), "--base", str(tiny_clip_dir)],
    ):
        assert main(command) == 2, command
        line = one_error_line(capsys)
        assert expected in line and (damage != "pickle_only" or "has only pickle weights" in line), command
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
    ("--optim.lr=inf", "config key 'optim.lr' expects a finite float, got 'inf'"),  # used to pass '> 0'
    ("--optim.max_grad_norm=nan", "config key 'optim.max_grad_norm' expects a finite float, got 'nan'"),
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
    ("--learning_rate=inf", "config key 'learning_rate' expects a finite float, got 'inf'"),
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


# ---- issue 23: nothing wrong passes as a result ------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
SUGARCREPE = ["--benchmark", "sugarcrepe", "--data", str(REPO / "tests/fixtures/encoder/sugarcrepe"),
              "--images", str(REPO / "tests/fixtures/encoder/images/val2017")]


def edited_encoder(source: Path, out: Path, config_edit=None, tensor_edit=None) -> Path:  # noqa: ANN001
    shutil.copytree(source, out)
    if config_edit is not None:
        config = json.loads((out / "config.json").read_text())
        config_edit(config)
        (out / "config.json").write_text(json.dumps(config))
    if tensor_edit is not None:
        tensors = load_file(out / "model.safetensors")
        tensor_edit(tensors)
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_a_safetensors_header_length_starting_with_0x80_is_read_not_sniffed(tiny_clip_dir, tmp_path):
    # About 1 file in 256: the 8-byte little-endian header length starts with 0x80, the byte a pickle starts with.
    from reasonclip_llava.io_utils import check_safetensors

    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_clip_dir, encoder)
    tensors = load_file(encoder / "model.safetensors")
    for padding in range(512):
        save_file(tensors, encoder / "model.safetensors", metadata={"format": "pt", "pad": "x" * padding})
        head = (encoder / "model.safetensors").read_bytes()[:8]
        if head[0] == 0x80:
            break
    assert head[0] == 0x80 and int.from_bytes(head, "little") > 0x80  # e.g. 0x2080, as the probe's LlavaNext had
    check_safetensors(encoder / "model.safetensors")
    assert main(["export", str(encoder), str(tmp_path / "export")]) == 0
    assert load_file(tmp_path / "export" / "model.safetensors").keys() == tensors.keys()


@pytest.mark.parametrize("text,message", [
    ("model: {name_or_path: x\n", ":2:1: not valid YAML (expected ',' or '}'"),
    ("model: !!python/object/apply:pathlib.Path.write_text [MARKER, x]\n",
     ":1:8: not valid YAML (the tag tag:yaml.org,2002:python/object/apply:pathlib.Path.write_text would build a Python object"),
])
def test_recipe_syntax_errors_and_python_tags_are_one_line(tmp_path, capsys, text, message):
    marker = tmp_path / "tagged.txt"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text.replace("MARKER", str(marker)))
    for command in (["pretrain", str(recipe)], ["llava-train", str(recipe)]):
        assert main(command) == 2
        assert f"{recipe}{message}" in one_error_line(capsys)
    assert not marker.exists()


@pytest.mark.parametrize("edit,message,build_message", [
    (lambda c: c["vision_config"].update(hidden_size=0), "config.json field 'vision_config.hidden_size' must be an integer >= 1 (got 0)", None),
    (lambda c: c["vision_config"].update(image_size=-32), "config.json field 'vision_config.image_size' must be an integer >= 1 (got -32)", None),
    (lambda c: c.update(model_type="llama"), "is a 'llama' checkpoint", "vision model_type 'llama' is not supported"),
    # SigLIP config on CLIP weights
    (lambda c: c.update(model_type="siglip"), "weights do not match", "is a 'siglip' checkpoint but its vision_config is 'clip_vision_model'"),
    # a config that drops layers of an unchanged checkpoint: eval clip used to score 46 of 94 tensors,
    # llava-build to build a tower with 1 of its layers
    (lambda c: c["vision_config"].update(num_hidden_layers=1), "unexpected_keys=32 ['vision_model.encoder.layers.1.",
     "weights do not match CLIPVisionModel: unexpected_keys=32 ['encoder.layers.1."),
])
def test_hostile_config_values_are_one_line_for_every_loader(tiny_clip_dir, lm_dir, tmp_path, capsys, edit, message, build_message):
    assert json.loads((tiny_clip_dir / "config.json").read_text())["vision_config"]["num_hidden_layers"] == 3  # 2 layers x 16 tensors cut
    encoder = edited_encoder(tiny_clip_dir, tmp_path / "encoder", config_edit=edit)
    for command, expected in (
        (["eval", "clip", "--model", str(encoder), *SUGARCREPE], message),
        (["export", str(encoder), str(tmp_path / "export")], message),
        (["llava-build", "--lm", str(lm_dir), "--encoder", str(encoder), "--out", str(tmp_path / "llava")], build_message or message),
    ):
        assert main(command) == 2, command
        assert expected in one_error_line(capsys), command
    assert not (tmp_path / "export").exists() and not (tmp_path / "llava").exists()


def test_non_finite_weights_and_embeddings_are_no_result(tiny_clip_dir, lm_dir, tmp_path, capsys):
    def one_nan(tensors):  # noqa: ANN001, ANN202
        tensors["vision_model.encoder.layers.0.mlp.fc1.weight"][0, 0] = float("nan")

    nan = edited_encoder(tiny_clip_dir, tmp_path / "nan", tensor_edit=one_nan)
    for command in (["llava-build", "--lm", str(lm_dir), "--encoder", str(nan), "--out", str(tmp_path / "llava")],
                    ["eval", "clip", "--model", str(nan), *SUGARCREPE]):
        assert main(command) == 2  # used to build (exit 0) / report 0.0 % as a result
        assert "encoder.layers.0.mlp.fc1.weight' holds 1 NaN/inf value(s)" in one_error_line(capsys)
    assert not (tmp_path / "llava").exists()

    def overflowing(tensors):  # noqa: ANN001, ANN202 - finite weights whose image embeddings overflow to inf
        tensors["visual_projection.weight"].fill_(3e38)

    huge = edited_encoder(tiny_clip_dir, tmp_path / "huge", tensor_edit=overflowing)
    assert main(["eval", "clip", "--model", str(huge), *SUGARCREPE, "--out", str(tmp_path / "scores")]) == 2
    assert "image embeddings are NaN/inf" in one_error_line(capsys)
    assert not list(tmp_path.glob("scores/*.json"))


def test_a_full_disk_inside_safetensors_is_one_line(tiny_clip_dir, tmp_path, capsys):
    # safetensors' SafetensorError is not an OSError: it used to be a traceback. A file-size limit below the
    # weights (EFBIG, as a full quota) makes the real library fail mid-write.
    import resource
    import signal

    out = tmp_path / "export"
    size = (tiny_clip_dir / "model.safetensors").stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, hard))
    try:
        code = main(["export", str(tiny_clip_dir), str(out)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert code == 2
    line = one_error_line(capsys)
    assert f"writing {out} failed: File too large" in line and "partial copy was removed" in line
    assert not out.exists() and not list(tmp_path.glob(".export.tmp-*"))


def test_outputs_follow_symlinks_keep_save_pretrained_modes_clean_stale_staging_and_never_overwrite_an_input(
        tiny_clip_dir, lm_dir, llava_dir, tmp_path, capsys):
    import os
    import socket
    import subprocess
    import sys

    from transformers import CLIPModel

    real, link = tmp_path / "real", tmp_path / "link"
    assert main(["export", str(tiny_clip_dir), str(real)]) == 0
    link.symlink_to(real)
    # a killed writer's staging dir (its pid no longer runs) is removed by the next write
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".real.tmp-{socket.gethostname().replace('-', '_')}-{dead}-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    # --overwrite onto a symlink replaces its target (it used to replace the link and leave the old model behind)
    assert main(["export", str(tiny_clip_dir), str(link), "--overwrite"]) == 0
    assert link.is_symlink() and link.resolve() == real and (real / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no .replaced, no staging left
    # modes as save_pretrained gives them (mkdtemp's 0700 used to be kept)
    CLIPModel.from_pretrained(tiny_clip_dir).save_pretrained(tmp_path / "reference")
    assert (real.stat().st_mode & 0o777) == ((tmp_path / "reference").stat().st_mode & 0o777) == (0o777 & ~_umask())
    # an output that is the input (or holds it) is refused, with --overwrite too: it used to destroy the source
    for command in (
        ["export", str(real), str(real), "--overwrite"],
        ["export", str(real), str(link), "--overwrite"],
        ["llava-build", "--lm", str(lm_dir), "--encoder", str(real), "--out", str(tmp_path), "--overwrite"],
        ["swap", "--llava", str(llava_dir), "--encoder", str(real), "--out", str(real), "--overwrite"],
    ):
        assert main(command) == 2, command
        assert "is the input" in one_error_line(capsys), command
    assert (real / "model.safetensors").is_file() and os.path.isdir(tmp_path / "reference")


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_library_notices_never_precede_the_one_error_line(tiny_clip_dir, tmp_path):
    # torchao's missing optional kernels, torch's _pytree deprecation lines, DeepSpeed's "Setting accelerator
    # to CPU", transformers' torchvision fallback: printed before every error, none about the user's input.
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # an error found after the model is loaded: every library that prints has been imported by then
    encoder = edited_encoder(tiny_clip_dir, tmp_path / "encoder", config_edit=lambda c: c["vision_config"].update(num_hidden_layers=2))
    command = (f"import sys; from reasonclip_llava.cli import main; code = main(['export', {str(encoder)!r}, 'out']); "
               # what pretrain / llava-train reach next: DeepSpeed picks its accelerator (and says so on stdout)
               "from deepspeed.accelerator import get_accelerator; get_accelerator(); "
               "print(sorted(m for m in ('torchao', 'deepspeed', 'transformers') if m in sys.modules)); sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", command], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip() and not re.search(r"\| *\d+/\d+ \[", line)]  # bars aside
    assert len(lines) == 1 and lines[0].startswith("reasonclip export: error: "), run.stderr
    assert "unexpected_keys=16 ['vision_model.encoder.layers.2." in lines[0]
    # the libraries that print were imported by the command, and nothing else reached stdout
    assert run.stdout == "['deepspeed', 'torchao', 'transformers']\n", run.stdout


def test_the_pickle_scan_passes_real_training_state_and_refuses_every_protocol_of_a_payload(tmp_path):
    # What the trainers' libraries really write (the HF Trainer's RNG states, DeepSpeed's ZeRO optimizer
    # bookkeeping) passes; a payload is refused whatever pickle protocol or container carries it.
    import random

    import numpy as np
    import torch
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from reasonclip_llava.io_utils import UnreadableFileError, scan_pickle

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state(),
             "loss_scaler": LossScaler(1.0), "dynamic": DynamicLossScaler(init_scale=2.0**16, scale_window=1000, min_scale=1.0, delayed_shift=2, consecutive_hysteresis=False), "zero_stage": ZeroStageEnum(2),
             "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}], "step": np.int64(3), "lr": [1e-3]}
    torch.save(state, tmp_path / "state.pt")
    scan_pickle(tmp_path / "state.pt")
    marker = tmp_path / "unpickled.txt"
    for protocol in range(6):
        (tmp_path / f"p{protocol}.pkl").write_bytes(pickle.dumps({"ok": [1, 2], "x": Payload(marker)}, protocol=protocol))
        with pytest.raises(UnreadableFileError, match=rf"^{tmp_path / f'p{protocol}.pkl'}: "):
            scan_pickle(tmp_path / f"p{protocol}.pkl")
    torch.save({"optimizer": {"state": {}}, "hook": Payload(marker)}, tmp_path / "nested.pt")
    with pytest.raises(UnreadableFileError, match="would import and call builtins.getattr"):
        scan_pickle(tmp_path / "nested.pt")
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "scripted.pt"))
    with pytest.raises(UnreadableFileError, match="a TorchScript archive"):
        scan_pickle(tmp_path / "scripted.pt")
    assert not marker.exists()
