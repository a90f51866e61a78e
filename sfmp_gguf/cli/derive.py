"""sfmp_derive: a lower-rate SFMP GGUF from a higher-rate one, in seconds, without the source model.

The file's recorded allocation profile drives the same global allocation as the converter's, over
the types each tensor's codes can be cut down to; each tensor is then requantized from the values
the file decodes to, or its codes are cut (``sfmp_gguf.derive``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from sfmp_gguf.errors import InputError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sfmp_derive", description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="an SFMP GGUF written by sfmp_to_gguf (format version 4 or later)")
    parser.add_argument("--bpw", type=float, required=True,
                        help="average bits per weight over the SFMP tensors, at most the input's own")
    parser.add_argument("-o", "--output", type=Path,
                        help="output GGUF (default: <input>-<bpw>bpw.gguf next to the input)")
    parser.add_argument("--method", choices=("requantize", "cut"), default="requantize",
                        help="requantize (default): the quantizer, with the recorded importance, on the values the "
                             "input decodes to; cut: the codes cut to fewer bits (faster, a little less precise)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.output is None:
        args.output = args.input.with_name(f"{args.input.name.removesuffix('.gguf')}-{args.bpw:g}bpw.gguf")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    try:
        from sfmp_gguf import gguf_package

        gguf_package.select()
        from sfmp_gguf import derive, pipeline
        from sfmp_gguf.gguf_io import check_output

        if args.output.resolve() == args.input.resolve():
            raise InputError(f"{args.output}: is the input; write the derived file elsewhere")
        check_output(args.output)
        source = derive.read_source(args.input)
        result = derive.derive(source, args.bpw, args.output, args.method, args.threads,
                               progress=lambda outputs: pipeline.weight_progress("derive+write", outputs))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    size = args.output.stat().st_size
    print(f"wrote {args.output}: {size / 2**20:.1f} MiB, {result.bpw:.3f} bpw over the SFMP tensors (from "
          f"{source.bpw:.3f}), {source.sensitivity} profile, {args.method}, in {time.monotonic() - start:.1f} s")
    return 0
