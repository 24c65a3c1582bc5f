"""Run directories: a fresh run never mixes with an old one, a resume never changes the run, a corrupt
or unwritable checkpoint never costs the good ones. Every case is the command a user types."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import torch

from crash_helpers import PAYLOAD_KINDS, assert_payload_is_live, one_error_line, payload_bytes
from pretrain_helpers import checkpoint_tensors, make_workspace, recipe, single_thread, stage_args
from reasonclip_llava.cli import main
from reasonclip_llava.encoder.modeling import ReasonCLIPForPretraining
from reasonclip_llava.pretrain.run_dir import RUN_FILE


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("run_dir_ws"))


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def pretrain(ws, out: Path, *extra: str) -> int:
    """`reasonclip pretrain train/tiny_stage1.yaml --model.name_or_path=... --runtime.output_dir=OUT ...`."""
    return main(["pretrain", str(recipe("stage1")), *stage_args(ws, "stage1", out, "--schedule.max_steps=4", "--runtime.save_every=1",
                                                                 "--runtime.keep_last=null", "--runtime.progress_bar=false", *extra)])


def test_fresh_run_into_another_runs_dir_is_refused_unless_overwrite(ws, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(ws, out) == 0
    first = checkpoint_tensors(out / "final")
    (out / "checkpoint-99").mkdir()  # a stale checkpoint an overwrite must not leave behind
    (out / "checkpoint-99" / "trainer_state").mkdir()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()

    assert pretrain(ws, out, "--optim.lr=3e-4") == 2
    line = one_error_line(capsys)
    assert "runtime.output_dir" in line and "optim.lr: 0.0005 -> 0.0003" in line and "--runtime.overwrite" in line
    assert all(torch.equal(first[k], v) for k, v in checkpoint_tensors(out / "final").items())  # untouched

    assert pretrain(ws, out, "--optim.lr=3e-4", "--runtime.overwrite=true") == 0
    assert not (out / "checkpoint-99").exists() and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert not all(torch.equal(first[k], v) for k, v in checkpoint_tensors(out / "final").items())


def test_resume_refuses_a_changed_run_and_allows_harmless_changes(ws, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(ws, out) == 0
    reference = checkpoint_tensors(out / "final")
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoint-3")
    capsys.readouterr()
    # The case: another max_steps / lr used to resume the old checkpoint and claim the new steps.
    assert pretrain(ws, out, "--schedule.max_steps=8", "--optim.lr=1e-3", "--runtime.resume_from=latest") == 2
    line = one_error_line(capsys)
    assert "optim.lr: 0.0005 -> 0.001" in line and "schedule.max_steps: 4 -> 8" in line and "checkpoint-2" in line
    assert not (out / "final").exists()
    # Logging and save cadence do not change the run; the resumed run ends where the uninterrupted one did.
    assert pretrain(ws, out, "--runtime.resume_from=latest", "--runtime.log_every=3", "--runtime.save_every=0") == 0
    assert all(torch.equal(reference[k], v) for k, v in checkpoint_tensors(out / "final").items())


def test_keep_last_never_prunes_checkpoints_of_another_run(ws, tmp_path):
    out = tmp_path / "run"
    assert pretrain(ws, out) == 0
    for name in ("final", "checkpoint-3", "checkpoint-2"):
        shutil.rmtree(out / name)
    (out / "checkpoint-1" / RUN_FILE).unlink()  # as written by an older version: not provably this run's
    assert pretrain(ws, out, "--runtime.resume_from=latest", "--runtime.keep_last=1") == 0
    # checkpoint-1 is kept (not ours to delete); of the resumed run's own checkpoints only the newest stays
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-3"]


def test_latest_falls_back_past_a_truncated_optimizer_state(ws, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(ws, out) == 0
    reference = checkpoint_tensors(out / "final")
    shutil.rmtree(out / "final")
    optimizer = out / "checkpoint-3" / "trainer_state" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    capsys.readouterr()
    # Named explicitly: one line naming the file.
    assert pretrain(ws, out, f"--runtime.resume_from={out / 'checkpoint-3'}") == 2
    line = one_error_line(capsys)
    assert "optimizer.bin" in line and "truncated" in line
    # latest: a notice, then the previous complete checkpoint, then the same final weights.
    assert pretrain(ws, out, "--runtime.resume_from=latest") == 0
    captured = capsys.readouterr().out
    assert "skipping unreadable checkpoint checkpoint-3" in captured and "optimizer.bin" in captured
    assert all(torch.equal(reference[k], v) for k, v in checkpoint_tensors(out / "final").items())


def test_full_disk_during_a_checkpoint_keeps_earlier_ones(ws, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    original = ReasonCLIPForPretraining.save_pretrained
    calls = []

    def full_disk_on_second_save(self, out_dir, source=None):  # noqa: ANN001, ANN202
        calls.append(out_dir)
        if len(calls) == 2:
            original(self, out_dir, source)  # part of it is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(out_dir) / "heads.safetensors"))
        return original(self, out_dir, source)

    monkeypatch.setattr(ReasonCLIPForPretraining, "save_pretrained", full_disk_on_second_save)
    assert pretrain(ws, out) == 2
    line = one_error_line(capsys)
    assert "No space left on device" in line and "checkpoint-2" in line and "partial copy was removed" in line
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not list(out.glob(".tmp-*"))
    ReasonCLIPForPretraining.from_pretrained(out / "checkpoint-1")  # intact


def test_corrupt_start_weights_and_too_long_max_length_are_one_line(ws, tmp_path, capsys):
    broken = tmp_path / "broken_clip"
    shutil.copytree(ws["clip"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["pretrain", str(recipe("stage1")), *stage_args(ws, "stage1", tmp_path / "a", model=broken)]) == 2
    line = one_error_line(capsys)
    assert str(weights) in line and "not a complete safetensors file" in line
    # 78 tokens do not fit CLIP's 77 text positions
    assert pretrain(ws, tmp_path / "b", "--data.max_length=78") == 2
    assert "config key 'data.max_length' must be <= 77" in one_error_line(capsys)


# ---- nothing planted runs, nothing trained is lost (issue 23) -------------------------------------------------
@pytest.fixture(scope="module")
def trained(ws, tmp_path_factory):
    """One finished 4-step run (checkpoints 1-3 + final), shared by the probes below; each probe restores what it changes."""
    out = tmp_path_factory.mktemp("trained") / "run"
    with single_thread():
        assert pretrain(ws, out) == 0
    return out


def test_a_payload_planted_in_any_checkpoint_file_never_runs_and_is_named(ws, trained, tmp_path, capsys):
    assert_payload_is_live(tmp_path)
    checkpoint = trained / "checkpoint-3"
    marker = tmp_path / "unpickled.txt"
    planted = [*sorted(p for p in checkpoint.rglob("*") if p.is_file()),
               checkpoint / "trainer_state" / "custom_checkpoint_0.pkl"]  # what accelerate unpickled with weights_only=False
    names = {p.name for p in planted}
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "progress.json", "rng_state_0.safetensors"} <= names
    assert not list(checkpoint.rglob("*.pkl")), "the trainer writes no pickle of its own"
    capsys.readouterr()
    for path in planted:
        original = path.read_bytes() if path.exists() else None
        for kind in PAYLOAD_KINDS:
            path.write_bytes(payload_bytes(kind, marker))
            try:
                assert pretrain(ws, trained, f"--runtime.resume_from={checkpoint}") == 2, (path, kind)
                line = one_error_line(capsys)
            finally:
                path.unlink() if original is None else path.write_bytes(original)
            assert str(path) in line and "not unpickled" in line, (kind, line)
            assert "weights_only" not in line
            assert not marker.exists(), (path, kind)
    # latest skips the planted checkpoint with a notice and resumes the previous one; the payload never runs
    state = checkpoint / "trainer_state" / "optimizer.bin"
    original = state.read_bytes()
    state.write_bytes(payload_bytes("torch_zip", marker))
    try:
        with single_thread():
            assert pretrain(ws, trained, "--runtime.resume_from=latest") == 0
    finally:
        state.write_bytes(original)
    captured = capsys.readouterr().out
    assert "skipping unreadable checkpoint checkpoint-3" in captured and "resumed from" in captured and "at step 2" in captured
    assert not marker.exists()


def test_a_corrupt_rng_state_is_named_never_resumed_as_exact(ws, trained, capsys):
    # It used to be resumed as if exact: accelerate swallows an RNG load failure ("Could not load random states").
    rng = trained / "checkpoint-3" / "trainer_state" / "rng_state_0.safetensors"
    original = rng.read_bytes()
    header = len(original) - 8 - int.from_bytes(original[:8], "little")  # data bytes: zero the generator states
    rng.write_bytes(original[:8 + int.from_bytes(original[:8], "little")] + bytes(header))
    try:
        assert pretrain(ws, trained, f"--runtime.resume_from={trained / 'checkpoint-3'}") == 2
        line = one_error_line(capsys)
        assert str(rng) in line and "would not continue exactly" in line
        rng.unlink()
        assert pretrain(ws, trained, f"--runtime.resume_from={trained / 'checkpoint-3'}") == 2
        assert f"{rng}: missing" in one_error_line(capsys)
    finally:
        rng.write_bytes(original)


def test_a_weights_only_refusal_falls_back_and_never_suggests_weights_only_false(ws, trained, tmp_path, capsys, monkeypatch):
    # A file our check passes but torch's weights-only unpickler refuses (here: a global we allow, torch does not).
    import reasonclip_llava.io_utils as io_utils

    optimizer = trained / "checkpoint-3" / "trainer_state" / "optimizer.bin"
    original = optimizer.read_bytes()
    torch.save({"state": {}, "param_groups": [{"lr": slice(1, 2)}]}, optimizer)
    monkeypatch.setattr(io_utils, "_ALLOWED_GLOBALS", io_utils._allowed_globals() | {"builtins.slice"})
    try:
        assert pretrain(ws, trained, f"--runtime.resume_from={trained / 'checkpoint-3'}") == 2
        line = one_error_line(capsys)
        assert "checkpoint-3: training state cannot be loaded" in line and "refused, it is not unpickled" in line
        assert "weights_only" not in line and "can still be loaded" not in line
        with single_thread():  # latest: a notice, then the previous checkpoint
            assert pretrain(ws, trained, "--runtime.resume_from=latest") == 0
        captured = capsys.readouterr()
        assert "skipping unreadable checkpoint checkpoint-3" in captured.out and "at step 2" in captured.out
        assert "weights_only" not in captured.out + captured.err
    finally:
        optimizer.write_bytes(original)


def test_two_runs_into_one_output_dir_cannot_both_run(ws, trained, tmp_path, capsys):
    from reasonclip_llava.io_utils import RUN_LOCK, claim_run_directory

    out = tmp_path / "busy"
    with claim_run_directory(out):  # another run holds it (the flock a second process would see)
        assert pretrain(ws, out) == 2
        line = one_error_line(capsys)
        assert f"output directory {out} is in use by another run (pid" in line
        assert not list(out.glob("checkpoint-*")) and not (out / "final").exists()
    # the claim ends with its run, also when the run fails; the next run gets the directory
    assert pretrain(ws, out) == 0 and not (out / RUN_LOCK).exists()
    # a killed run's staging dir is cleaned by the next run of the directory
    (out / ".tmp-checkpoint-9").mkdir()
    (out / ".tmp-checkpoint-9" / "model.safetensors").write_bytes(b"half")
    assert pretrain(ws, out, "--runtime.resume_from=latest") == 0
    assert not (out / ".tmp-checkpoint-9").exists()
