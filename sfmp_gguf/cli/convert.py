"""sfmp_to_gguf: a Hugging Face model folder (or F32/F16/BF16 GGUF) to one quantized GGUF.

Until the sensitivity analysis and the global allocator land, every quantizable tensor gets one
SFMP type (sfmp425_k, or sfmp450_s on rows that are not a multiple of 256) through
the patched llama-quantize; the per-block precision inside each block is already SFMP's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sfmp_gguf.hf_import import InputError, hf_to_gguf
from sfmp_gguf.llama.build import current_build

INTERIM_TYPE = "SFMP425_K"


def _source_gguf(model: Path, workdir: Path) -> Path:
    if model.is_file() and model.suffix == ".gguf":
        return model
    f32 = workdir / "source-f32.gguf"
    hf_to_gguf(model, f32)
    return f32


def convert(model: Path, out: Path, threads: int) -> None:
    out_dir = out.parent.resolve()
    if not out_dir.is_dir():
        raise InputError(f"{out}: output folder {out_dir} does not exist")
    with tempfile.TemporaryDirectory(prefix="sfmp-convert-") as tmp:
        source = _source_gguf(model, Path(tmp))
        # Written next to the target so the final rename is atomic; removed on any failure.
        partial = out_dir / f".{out.name}.sfmp-partial-{os.getpid()}"
        try:
            cmd = [str(current_build().tool("llama-quantize")), str(source), str(partial),
                   INTERIM_TYPE, str(threads)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                lines = result.stderr.strip().splitlines() or ["no output"]
                raise InputError(f"{source}: llama-quantize failed: {lines[-1]}")
            partial.replace(out)
        finally:
            partial.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sfmp_to_gguf", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="Hugging Face model folder, or an F32/F16/BF16 GGUF")
    parser.add_argument("-o", "--output", type=Path, help="output GGUF (default: <model>-sfmp.gguf)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    out = args.output or args.model.with_name(args.model.name.removesuffix(".gguf") + "-sfmp.gguf")
    start = time.monotonic()
    try:
        convert(args.model, out, args.threads)
    except (InputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    size = out.stat().st_size
    print(f"wrote {out} ({size / 2**20:.1f} MiB) in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
