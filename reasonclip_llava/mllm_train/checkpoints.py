"""LLaVA training checkpoints that are complete or absent, and the `latest` that resumes a loadable one.

transformers' Trainer writes checkpoint-N/ file by file in place, so a run killed mid-save leaves a
checkpoint-N that `get_last_checkpoint` picks and that then fails to load. Here the Trainer writes into
output_dir/.staging/checkpoint-N, which is renamed to output_dir/checkpoint-N once every file is there
(then transformers' own rotation runs over the real checkpoints). `latest` takes the newest checkpoint
whose files all read (safetensors headers, torch.save archives read opcode by opcode so that a planted
pickle is refused before the Trainer, PEFT or DeepSpeed unpickles anything, JSON files), printing a
one-line notice for each one it skips.

The output_dir follows pretraining's rules (pretrain/run_dir.py): a fresh run into a non-empty output_dir
is refused unless `overwrite` (which empties it first) or `resume_from_checkpoint` (continue that run;
a config that changes what it computes is refused, naming the keys). The run claims output_dir while it
trains (io_utils.claim_run_directory), so a second run into it is refused.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from ..config_utils import changed_keys, read_yaml_mapping
from ..io_utils import RUN_LOCK, UnreadableFileError, check_state_dir, is_non_empty_dir, replace_directory, write_errors_as_one_line

STAGING_DIR = ".staging"
TRAINER_STATE_FILE = "trainer_state.json"  # the Trainer writes it last: its presence marks a complete checkpoint
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
RUN_CONFIG_NAME = "reasonclip_llava_train.yaml"  # the resolved config, in output_dir and every checkpoint
# Options that do not change what a run computes: a resume may change them.
HARMLESS_KEYS = frozenset({
    "output_dir", "resume_from_checkpoint", "overwrite", "save_steps", "save_total_limit", "logging_steps",
    "report_to", "dataloader_num_workers", "gradient_checkpointing",
})


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
    for checkpoint in reversed(checkpoints_in(output_dir)):
        try:
            check_checkpoint(checkpoint)
        except UnreadableFileError as error:
            print(f"note: skipping checkpoint {checkpoint.name}: {error}")
            continue
        return checkpoint
    return None



def checkpoints_in(output_dir: str | Path) -> list[Path]:
    """checkpoint-N dirs of output_dir in step order."""
    found = sorted((int(m.group(1)), path) for path in Path(output_dir).glob("checkpoint-*")
                   if path.is_dir() and (m := CHECKPOINT_PATTERN.match(path.name)))
    return [path for _, path in found]


def recorded_run(directory: Path) -> dict[str, Any] | None:
    """The config a run saved in `directory` (a checkpoint, or output_dir: its own record or its newest checkpoint's)."""
    for candidate in (directory, *reversed(checkpoints_in(directory))):
        if (candidate / RUN_CONFIG_NAME).is_file():
            return read_yaml_mapping(candidate / RUN_CONFIG_NAME, "run config")
    return None


def check_run_output_dir(config: Any, resume: Path | None) -> None:
    """May this run write output_dir (and resume `resume`)? Raises one line naming the problem (see module doc)."""
    output_dir = Path(config.output_dir)
    current, defaults = dataclasses.asdict(config), dataclasses.asdict(type(config)())
    if resume is not None:
        recorded = recorded_run(resume)
        differences = changed_keys(recorded, current, HARMLESS_KEYS, defaults) if recorded else []
        if differences:
            raise ValueError(f"config key(s) differ from the run in {resume} and change what it computes: "
                             f"{'; '.join(differences[:5])}{'; ...' if len(differences) > 5 else ''} "
                             "(resume with the run's values, or start a fresh run)")
    if not is_non_empty_dir(output_dir) or config.overwrite:
        return
    recorded = recorded_run(output_dir)
    differences = changed_keys(recorded, current, HARMLESS_KEYS, defaults) if recorded else None
    if differences:
        raise FileExistsError(f"config key 'output_dir': {output_dir} holds another run (differing in {'; '.join(differences[:3])}"
                              f"{'; ...' if len(differences) > 3 else ''}); use another output_dir or pass --overwrite")
    if resume is not None or (config.resume_from_checkpoint is not None and recorded is not None):
        return  # continuing this run (or starting again the same run, stopped before its first checkpoint)
    what = "a finished or interrupted run" if recorded is not None else "files"
    raise FileExistsError(f"config key 'output_dir': {output_dir} is not empty, it holds {what}; pass "
                          "--resume_from_checkpoint=latest to continue that run or --overwrite to replace it")


def clear_output_dir(output_dir: str | Path) -> None:
    """`overwrite`: the old run goes as a whole (checkpoints, weights, state), so nothing of it mixes with the new one."""
    for path in Path(output_dir).iterdir() if Path(output_dir).is_dir() else ():
        if path.name == RUN_LOCK:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
