#!/usr/bin/env python3
"""Derive a lower-rate SFMP GGUF from a higher-rate one, without the source model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfmp_gguf.cli.derive import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
