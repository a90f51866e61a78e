"""Quality measurements through llama.cpp's own llama-perplexity."""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from sfmp_gguf.llama.build import current_build

_FINAL_PPL = re.compile(r"Final estimate: PPL = ([0-9.]+|nan|inf) \+/- ([0-9.]+|nan|inf)")


class EvaluationError(RuntimeError):
    """llama-perplexity failed or printed no estimate."""


def perplexity(model: Path, text: str, ctx: int = 512, chunks: int | None = None,
               threads: int = 2, extra_args: tuple[str, ...] = ()) -> tuple[float, float]:
    """(PPL, its standard error) of ``model`` on ``text``, scored as llama-perplexity does;
    ``extra_args`` go to llama-perplexity as they are (``--no-repack``, for example)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        cmd = [str(current_build().tool("llama-perplexity")), "-m", str(model), "-f", f.name,
               "-c", str(ctx), "-b", str(max(ctx, 512)), "-t", str(threads)]
        if chunks is not None:
            cmd += ["--chunks", str(chunks)]
        cmd += list(extra_args)
        result = subprocess.run(cmd, capture_output=True, text=True)
    found = _FINAL_PPL.search(result.stdout + result.stderr)
    if result.returncode != 0 or not found:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise EvaluationError(f"{model}: llama-perplexity failed: {tail}")
    return float(found.group(1)), float(found.group(2))


def main(argv: list[str] | None = None) -> int:
    from sfmp_gguf.assets.austen import austen_texts
    from sfmp_gguf.assets.teacher import teacher

    parser = argparse.ArgumentParser(description="Perplexity of a GGUF on the Austen evaluation text")
    parser.add_argument("model", nargs="?", type=Path, help="GGUF to score (default: the F32 teacher)")
    parser.add_argument("-c", "--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=None)
    args = parser.parse_args(argv)
    model = args.model or teacher().gguf_path
    text = austen_texts().eval_text.read_text(encoding="utf-8")
    try:
        ppl, err = perplexity(model, text, args.ctx, args.chunks)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not math.isfinite(ppl):
        print(f"error: {model}: perplexity is not finite", file=sys.stderr)
        return 1
    print(f"{model.name}: PPL = {ppl:.4f} +/- {err:.4f} (ctx {args.ctx}, Austen eval text)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
