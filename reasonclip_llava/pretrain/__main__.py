"""`python -m reasonclip_llava.pretrain CONFIG.yaml [--key=value ...]` (what the launch scripts run)."""

from __future__ import annotations

import sys

from ..entry import quiet_library_notices

quiet_library_notices()  # before torch / transformers are imported (see entry.py)
from .trainer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
