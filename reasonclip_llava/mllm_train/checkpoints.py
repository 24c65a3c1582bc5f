"""LLaVA training checkpoints that are complete or absent, and the `latest` that resumes a loadable one.

transformers' Trainer writes checkpoint-N/ file by file in place, so a run killed mid-save leaves a
checkpoint-N that `get_last_checkpoint` picks and that then fails to load. Here the Trainer writes into
output_dir/.staging/checkpoint-N, which is renamed to output_dir/checkpoint-N once every file is there
(then transformers' own rotation runs over the real checkpoints). `latest` takes the newest checkpoint
whose files all read (safetensors headers, torch.save archives, trainer_state.json), printing a
one-line notice for each one it skips.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable

from ..io_utils import UnreadableFileError, check_state_dir, replace_directory, write_errors_as_one_line

STAGING_DIR = ".staging"
TRAINER_STATE_FILE = "trainer_state.json"  # the Trainer writes it last: its presence marks a complete checkpoint
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def write_checkpoint_atomically(trainer, write: Callable[[], None]) -> None:  # noqa: ANN001
    """Run `write()` (Trainer._save_checkpoint) into the staging dir, then rename its checkpoint into place.

    `trainer` must send its output dir through `trainer.checkpoint_root` (see LlavaTrainer._get_output_dir).
    A failed write (a full disk) removes the staging dir and is one line; earlier checkpoints stay.
    """
    args = trainer.args
    output_dir = Path(args.output_dir)
    staging = output_dir / STAGING_DIR
    if args.should_save:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    trainer.accelerator.wait_for_everyone()
    trainer.checkpoint_root = staging
    try:
        with write_errors_as_one_line(output_dir / "checkpoint", staging if args.should_save else None):
            write()
    finally:
        trainer.checkpoint_root = None
    trainer.accelerator.wait_for_everyone()
    if args.should_save:
        for written in sorted(staging.glob("checkpoint-*")):
            replace_directory(written, output_dir / written.name)
        shutil.rmtree(staging, ignore_errors=True)
        from transformers.trainer_utils import rotate_checkpoints

        rotate_checkpoints(output_dir=str(output_dir), save_total_limit=args.save_total_limit,
                           best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)
    trainer.accelerator.wait_for_everyone()


def check_checkpoint(checkpoint: Path) -> None:
    """Raise UnreadableFileError (one line) unless the checkpoint is complete and its files read."""
    state = checkpoint / TRAINER_STATE_FILE
    if not state.is_file():
        raise UnreadableFileError(f"{checkpoint}: incomplete, no {TRAINER_STATE_FILE} (its write was interrupted)")
    try:
        json.loads(state.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UnreadableFileError(f"{state}: not valid JSON ({error})") from None
    check_state_dir(checkpoint)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete, readable checkpoint-N in output_dir (None if there is none); skips say why."""
    output_dir = Path(output_dir)
    for interrupted in sorted((output_dir / STAGING_DIR).glob("checkpoint-*")):
        print(f"note: skipping incomplete checkpoint {interrupted} (its write was interrupted)")
    found = sorted((int(m.group(1)), path) for path in output_dir.glob("checkpoint-*")
                   if path.is_dir() and (m := CHECKPOINT_PATTERN.match(path.name)))
    for _, checkpoint in reversed(found):
        try:
            check_checkpoint(checkpoint)
        except UnreadableFileError as error:
            print(f"note: skipping checkpoint {checkpoint.name}: {error}")
            continue
        return checkpoint
    return None

