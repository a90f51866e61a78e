"""The demo: convert the built-in SmolLM2-135M teacher and let llama-cli generate from the result."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from sfmp_gguf.assets.teacher import teacher
from sfmp_gguf.llama.build import current_build
from sfmp_gguf.paths import CONVERTER, REPO_ROOT

PROMPT = "The three most useful things to pack for a hike are"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-o", "--output", type=Path, default=REPO_ROOT / "demo-output" / "smollm2-135m-sfmp.gguf")
    parser.add_argument("-p", "--prompt", default=PROMPT)
    parser.add_argument("-n", "--n-predict", type=int, default=64)
    args = parser.parse_args(argv)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    # The same command a user runs, with the defaults (Fisher on the built-in text); its own process,
    # since it loads the pinned converter's gguf-py.
    status = subprocess.run([sys.executable, str(CONVERTER), str(teacher().hf_dir),
                             "-o", str(args.output), "--report", str(args.output.parent / "report")]).returncode
    if status != 0:
        return status
    cli = current_build().tool("llama-cli")
    cmd = [str(cli), "-m", str(args.output), "-p", args.prompt, "-n", str(args.n_predict),
           "--single-turn", "--temp", "0", "-t", "2"]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode


if __name__ == "__main__":
    sys.exit(main())
