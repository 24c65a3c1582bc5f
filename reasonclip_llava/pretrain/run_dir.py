"""Run directories: what a run is, whether an output_dir may take it, and which checkpoint it resumes.

A run records its identity in output_dir (and in every checkpoint it writes) as RUN_FILE: the resolved
config and a hash of the keys that decide what the run computes. Then:

  * a fresh run into a non-empty output_dir is refused, unless `runtime.resume_from` (continue it) or
    `runtime.overwrite` (remove the old run's checkpoints, final/ and logs first) is given;
  * a resume compares the config with the checkpoint's: a difference in a key that changes the run's
    meaning (schedule, data, model, stage, optimizer, seed, precision) is refused, naming the keys;
    HARMLESS_KEYS (logging, save cadence, paths, workers, compilation) may change;
  * `keep_last` prunes only checkpoints of this run (same identity hash), never those it did not write;
  * `resume_from: latest` takes the newest checkpoint whose files are readable and whose state loads,
    saying so when it has to skip a corrupt one (a planted pickle included: io_utils.check_state_dir reads
    every file of a checkpoint before anything loads it, and unpickles none).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable

from ..config_utils import changed_keys
from ..io_utils import UnreadableFileError, check_state_dir, is_non_empty_dir, load_error_text
from .config import PretrainConfig

RUN_FILE = "reasonclip_run.json"
LEGACY_CONFIG_FILE = "pretrain_config.json"  # written by every run; read when a checkpoint has no RUN_FILE

# Keys that do not change what a run computes: a resume may change them.
HARMLESS_KEYS = frozenset({
    "runtime.output_dir", "runtime.resume_from", "runtime.overwrite", "runtime.save_every", "runtime.keep_last",
    "runtime.log_every", "runtime.report_to", "runtime.progress_bar", "runtime.recipe",
    "data.num_workers", "model.torch_compile", "model.gradient_checkpointing",
})
# What a run writes into output_dir; `runtime.overwrite` removes exactly these (other files stay).
RUN_OUTPUTS = ("checkpoint-*", ".tmp-*", "final", "best", "last", "logs", LEGACY_CONFIG_FILE, RUN_FILE)


def flat_config(config: PretrainConfig | dict[str, Any]) -> dict[str, Any]:
    """{'optim.lr': 1e-4, ...} from a config or its to_dict()."""
    sections = config.to_dict() if isinstance(config, PretrainConfig) else config
    return {f"{section}.{key}": value for section, values in sections.items() for key, value in values.items()}


def identity_hash(flat: dict[str, Any]) -> str:
    """sha256 over the keys that decide what the run computes (harmless keys left out)."""
    meaning = {key: value for key, value in sorted(flat.items()) if key not in HARMLESS_KEYS}
    return hashlib.sha256(json.dumps(meaning, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_record(config: PretrainConfig) -> dict[str, Any]:
    flat = flat_config(config)
    return {"identity": identity_hash(flat), "config": config.to_dict()}


def write_run_record(directory: Path, config: PretrainConfig) -> Path:
    path = Path(directory) / RUN_FILE
    path.write_text(json.dumps(run_record(config), indent=2, default=str))
    return path


def read_run_record(directory: Path) -> dict[str, Any] | None:
    """The record in a checkpoint or output_dir; a legacy pretrain_config.json is turned into one."""
    for name in (RUN_FILE, LEGACY_CONFIG_FILE):
        path = Path(directory) / name
        if path.is_file():
            try:
                loaded = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise UnreadableFileError(f"{path}: not valid JSON ({error})") from None
            config = loaded["config"] if name == RUN_FILE else loaded
            return {"identity": identity_hash(flat_config(config)), "config": config}
    return None


def meaning_differences(recorded: dict[str, Any], config: PretrainConfig) -> list[str]:
    """'key: old -> new' for every key outside HARMLESS_KEYS whose value differs (keys added since count as differing only when set)."""
    return changed_keys(flat_config(recorded), flat_config(config), HARMLESS_KEYS, flat_config(PretrainConfig()))


def is_own_checkpoint(checkpoint: Path, config: PretrainConfig) -> bool:
    """True when `checkpoint` was written by a run with this config's identity."""
    path = Path(checkpoint) / RUN_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("identity") == run_record(config)["identity"]
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def check_output_dir(config: PretrainConfig, has_checkpoint: bool) -> None:
    """Refuse a fresh run into an output_dir that holds something else (see the module docstring)."""
    runtime = config.runtime
    output_dir = Path(runtime.output_dir)
    if not is_non_empty_dir(output_dir) or runtime.overwrite:
        return
    recorded = read_run_record(output_dir)
    if has_checkpoint:
        # Continuing: the output_dir must hold this run (or none), never another one.
        if recorded is not None and recorded["identity"] != run_record(config)["identity"]:
            raise FileExistsError(
                f"config key 'runtime.output_dir': {output_dir} holds another run ({_differences_text(recorded, config)}); "
                "use another output_dir or pass --runtime.overwrite=true"
            )
        return
    if runtime.resume_from == "latest" and recorded is not None and recorded["identity"] == run_record(config)["identity"]:
        return  # the same run, stopped before its first checkpoint: start it again
    what = f"a run ({_differences_text(recorded, config)})" if recorded is not None else "files"
    raise FileExistsError(
        f"config key 'runtime.output_dir': {output_dir} is not empty, it holds {what}; pass "
        "--runtime.resume_from=latest to continue that run or --runtime.overwrite=true to replace it"
    )


def check_resume_config(checkpoint: Path, config: PretrainConfig) -> None:
    """Refuse to resume `checkpoint` with a config that changes what the run computes."""
    recorded = read_run_record(checkpoint) or read_run_record(Path(checkpoint).parent)
    if recorded is None:
        print(f"note: {checkpoint} has no {RUN_FILE}; its config cannot be compared with this one")
        return
    differences = meaning_differences(recorded["config"], config)
    if differences:
        raise ValueError(
            f"config key(s) differ from the run in {checkpoint} and change what it computes: {'; '.join(differences[:5])}"
            f"{'; ...' if len(differences) > 5 else ''} (resume with the run's values, or start a fresh run)"
        )


def clear_run_outputs(output_dir: Path) -> None:
    """`runtime.overwrite`: remove what a previous run wrote (RUN_OUTPUTS), nothing else."""
    for pattern in RUN_OUTPUTS:
        for path in Path(output_dir).glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def readable_checkpoints(candidates: list[Path], explicit: bool) -> list[Path]:
    """The candidates whose every file reads as what it should be (nothing is loaded or unpickled).

    An explicitly named checkpoint with a bad file is a one-line error naming the file; `latest` skips
    such checkpoints with a notice, and fails only when none is left.
    """
    readable = []
    for checkpoint in candidates:
        try:
            check_state_dir(checkpoint)
        except UnreadableFileError as error:
            if explicit:
                raise
            print(f"note: skipping unreadable checkpoint {checkpoint.name}: {error}")
            continue
        readable.append(checkpoint)
    if candidates and not readable:
        raise UnreadableFileError(f"no checkpoint in {candidates[0].parent} can be loaded (all {len(candidates)} are unreadable)")
    return readable


def clear_stale_temp_dirs(output_dir: Path) -> None:
    """Remove the `.tmp-*` staging dirs a killed run left (call only while holding the run directory's claim)."""
    for path in Path(output_dir).glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)


def restore_newest_loadable(candidates: list[Path], load: Callable[[Path], None], explicit: bool) -> Path | None:
    """Load the newest checkpoint (last of `candidates`, whose files readable_checkpoints checked); return it.

    `latest` (explicit False) skips a checkpoint whose state does not load with a one-line notice and
    falls back to the previous one; an explicitly named one is a one-line error naming the file.
    None: no candidate.
    """
    for checkpoint in reversed(candidates):
        try:
            try:
                load(checkpoint)
            except (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError) as error:  # torch.load / safetensors
                if isinstance(error, UnreadableFileError):
                    raise
                raise UnreadableFileError(f"{checkpoint}: training state cannot be loaded ({load_error_text(error)})") from None
        except UnreadableFileError as error:
            if explicit:
                raise
            print(f"note: skipping unreadable checkpoint {checkpoint.name}: {error}")
            continue
        return checkpoint
    if candidates and not explicit:
        raise UnreadableFileError(f"no checkpoint in {candidates[0].parent} can be loaded (all {len(candidates)} are unreadable)")
    return None


def _differences_text(recorded: dict[str, Any], config: PretrainConfig) -> str:
    differences = meaning_differences(recorded["config"], config)
    if not differences:
        return "the same config"
    return f"differing in {'; '.join(differences[:3])}{'; ...' if len(differences) > 3 else ''}"
