#!/usr/bin/env python3
"""Convert a Hugging Face model folder (or F32/F16/BF16 GGUF) to an SFMP GGUF."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfmp_gguf.cli.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
