"""llama-perplexity scores the F32 teacher on a slice of the Austen evaluation text."""

from __future__ import annotations

import math

from sfmp_gguf.assets.austen import austen_texts
from sfmp_gguf.assets.teacher import teacher
from sfmp_gguf.evaluate import perplexity


def test_teacher_perplexity_is_finite_and_plausible(build):
    text = austen_texts().eval_text.read_text(encoding="utf-8")[:12_000]
    ppl, err = perplexity(teacher().gguf_path, text, ctx=128, chunks=8)
    assert math.isfinite(ppl) and math.isfinite(err)
    # A working 135M model on Austen: far better than uniform over 49,152 tokens, worse than perfect.
    assert 2.0 < ppl < 200.0
