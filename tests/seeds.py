"""Seeds for the tests' random cases that are the same in every process and on every machine.

Python salts ``hash()`` of a str per process (PYTHONHASHSEED), so a seed made with it cannot be
replayed; ``stable_seed`` hashes the parts' text with CRC-32 instead. A test that draws a random
case names its seed in its assertion messages, so a failure can be rerun exactly.
"""

from __future__ import annotations

import zlib


def stable_seed(*parts: object) -> int:
    """A 32-bit seed determined by the text of ``parts`` (for example a test's name and its parameters)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode("utf-8"))
