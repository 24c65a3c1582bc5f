"""`python -m reasonclip_llava.pretrain CONFIG.yaml [--key=value ...]` (what the launch scripts run)."""

from __future__ import annotations

import sys

from .trainer import main

if __name__ == "__main__":
    sys.exit(main())
