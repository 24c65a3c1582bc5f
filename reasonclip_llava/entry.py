"""What every command-line entry point does first (`reasonclip`, `python -m reasonclip_llava.pretrain`,
`python -m reasonclip_llava.mllm_train.train`): keep the libraries' notices about themselves off the screen.

Importing transformers / accelerate pulls in torchao and DeepSpeed, which print, on every command and
before every error line, that optional CUDA kernels are missing, that an Enum registration is
deprecated, that no accelerator was found, that torchvision is absent. None of it is about the user's
input, so an error would not be one line. Each notice is dropped by a logging filter on its own logger
(matched by its text, so the library's other warnings still show); library deprecation warnings are
ignored. Must run before those libraries are imported.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

# (logger name, what the notice says): installed before the libraries create their loggers.
LIBRARY_NOTICES: tuple[tuple[str, str], ...] = (
    ("torchao", r"^Failed to load .*\.so"),  # optional CUDA kernels of a wheel built for another Python / CUDA
    ("torch.utils._pytree", r"register_constant\(\) on Enum subclasses is deprecated"),  # torchao's import
    ("DeepSpeed", r"^Setting accelerator to CPU"),
    ("transformers.utils.import_utils", r"requires torchvision \(not installed\); falling back"),
)
LIBRARY_MODULES = r"(torch|torchao|transformers|accelerate|peft|deepspeed|datasets|huggingface_hub)(\.|$)"


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def quiet_library_notices() -> None:
    """Install the filters once per process (repeated calls add nothing)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name, pattern in LIBRARY_NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARY_MODULES)
