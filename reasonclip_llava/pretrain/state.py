"""The run's own training state in a checkpoint, as JSON and safetensors: nothing of ours is a pickle.

accelerate's `save_state` writes the optimizer and scheduler (torch.save, read back with weights_only=True,
and checked opcode by opcode before that: io_utils.scan_pickle) and, as pickles, the RNG states and every
object given to `register_for_checkpointing` (read back with weights_only=False, i.e. able to run code).
So the trainer registers nothing and writes, beside accelerate's files in trainer_state/:

    progress.json                     optimizer steps done, exact data position, best held-out loss
    rng_state_{process}.safetensors   python / numpy / torch (and CUDA) generator states of that process

and removes accelerate's random_states_{process}.pkl. A resume reads both back; a missing or unreadable
one is an UnreadableFileError naming the file (`latest` then falls back to the previous checkpoint):
without them the run would continue, but not as it would have.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io_utils import UnreadableFileError, load_error_text

PROGRESS_FILE = "progress.json"
ACCELERATE_RNG_PICKLE = "random_states_{}.pkl"


def rng_file(state_dir: Path, process_index: int) -> Path:
    return Path(state_dir) / f"rng_state_{process_index}.safetensors"


@dataclass
class TrainingProgress:
    """The run's position that accelerate does not save itself."""

    step: int = 0  # optimizer steps done
    data: dict[str, Any] = field(default_factory=dict)  # TrainData.state_dict(): exact sample position, skipped images
    best_eval_loss: float = float("inf")  # lowest held-out loss so far (the weights in best/)
    best_step: int = 0
    accelerator_step: int = 0  # accelerate's micro-step counter (gradient accumulation phase)

    def save(self, state_dir: Path) -> Path:
        record = {"step": self.step, "data": self.data, "best_step": self.best_step, "accelerator_step": self.accelerator_step,
                  "best_eval_loss": self.best_eval_loss if math.isfinite(self.best_eval_loss) else None}
        path = Path(state_dir) / PROGRESS_FILE
        path.write_text(json.dumps(record, indent=2))
        return path

    def load(self, state_dir: Path) -> None:
        path = Path(state_dir) / PROGRESS_FILE
        if not path.is_file():
            raise UnreadableFileError(f"{path}: missing; the checkpoint was written by an older reasonclip-llava (its progress "
                                      "was a pickle, which is never loaded): start the run again or resume a newer checkpoint")
        try:
            record = json.loads(path.read_text())
            self.step, self.data = int(record["step"]), dict(record["data"])
            best = record.get("best_eval_loss")
            self.best_eval_loss = float("inf") if best is None else float(best)
            self.best_step, self.accelerator_step = int(record.get("best_step", 0)), int(record.get("accelerator_step", 0))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise UnreadableFileError(f"{path}: not a training progress record ({type(error).__name__}: {error})") from None


def save_rng_state(state_dir: Path, process_index: int) -> Path:
    """This process's generator states; accelerate's pickled copy of them is removed."""
    python_version, python_keys, python_gauss = random.getstate()
    numpy_name, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    tensors = {
        "python": torch.tensor(python_keys, dtype=torch.int64),
        "numpy": torch.from_numpy(np.asarray(numpy_keys, dtype=np.int64)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        tensors.update({f"cuda_{index}": state for index, state in enumerate(torch.cuda.get_rng_state_all())})
    metadata = {"python": json.dumps([python_version, python_gauss]),
                "numpy": json.dumps([numpy_name, int(numpy_pos), int(numpy_has_gauss), float(numpy_gauss)])}
    path = rng_file(state_dir, process_index)
    save_file(tensors, str(path), metadata=metadata)
    (Path(state_dir) / ACCELERATE_RNG_PICKLE.format(process_index)).unlink(missing_ok=True)
    return path


def restore_rng_state(state_dir: Path, process_index: int) -> None:
    """Set every generator to the saved state; a missing or malformed file is named (the resume would not be exact)."""
    path = rng_file(state_dir, process_index)
    if not path.is_file():
        raise UnreadableFileError(f"{path}: missing; without the generator states the resumed run would not continue exactly")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        python_version, python_gauss = json.loads(metadata["python"])
        numpy_name, numpy_pos, numpy_has_gauss, numpy_gauss = json.loads(metadata["numpy"])
        random.setstate((python_version, tuple(int(v) for v in tensors["python"].tolist()), python_gauss))
        np.random.set_state((numpy_name, tensors["numpy"].numpy().astype(np.uint32), numpy_pos, numpy_has_gauss, numpy_gauss))
        torch.set_rng_state(tensors["torch"])
        if torch.cuda.is_available():
            saved = [tensors[f"cuda_{index}"] for index in range(torch.cuda.device_count()) if f"cuda_{index}" in tensors]
            if len(saved) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(saved)
    except UnreadableFileError:
        raise
    except Exception as error:  # noqa: BLE001 - any malformed content: named, never resumed as if exact
        raise UnreadableFileError(f"{path}: generator states cannot be restored ({load_error_text(error)}); "
                                  "the resumed run would not continue exactly") from None
