"""Slow tier: on the demo model, every sensitivity's allocation is no worse than the uniform one at
the same size, by KLD to the F32 teacher through llama-perplexity on a short text."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfmp_gguf.model_source import use_pinned_gguf_py

SIZES = (3.25, 4.25)  # where bench.quality shows every sensitivity clear of uniform (README)
CTX, CHUNKS = 512, 4
SENSITIVITIES = ("weights", "imatrix", "fisher")


@pytest.fixture(scope="module")
def klds(build, tmp_path_factory) -> dict[tuple[str, float], tuple[float, float]]:
    """(sensitivity, target) -> (its KLD, the uniform file's KLD with the same quantizer weights)."""
    use_pinned_gguf_py()
    from gguf import GGUFReader

    from sfmp_gguf import allocation, pipeline
    from sfmp_gguf.assets.austen import austen_texts
    from sfmp_gguf.assets.imatrix import teacher_imatrix
    from sfmp_gguf.assets.teacher import teacher
    from sfmp_gguf.bench import quality
    from sfmp_gguf.format import GRIDS

    model, texts = teacher(), austen_texts()
    n_weights = sum(t.n_elements for t in GGUFReader(model.gguf_path).tensors)
    base = quality.teacher_logits(model.gguf_path, texts.eval_text, CTX, CHUNKS, 2)
    out: Path = tmp_path_factory.mktemp("units") / "sfmp.gguf"

    def kld(prepared, plan) -> float:
        pipeline.write(prepared, plan, out, 2)
        return quality.score(out, base, texts.eval_text, "", "", n_weights, CTX, CHUNKS, 2).kld

    results = {}
    uniform_kld: dict[tuple[str, float], float] = {}
    for sensitivity in SENSITIVITIES:
        prepared = pipeline.prepare(model.hf_dir, sensitivity, teacher_imatrix() if sensitivity == "imatrix" else None,
                                    texts.calib_text if sensitivity == "fisher" else None, 2)
        quantizer = "weights" if prepared.columns is None else "imatrix"
        for bpw in SIZES:
            uniform = allocation.uniform(prepared.profiles, bpw)
            if (quantizer, bpw) not in uniform_kld:
                uniform_kld[quantizer, bpw] = kld(prepared, uniform)
            target = uniform.bpw
            plan = pipeline.plan(prepared, target, GRIDS)
            while plan.bpw > uniform.bpw + 1e-9:  # never more bits than the uniform file
                target -= 0.002
                plan = pipeline.plan(prepared, target, GRIDS)
            assert uniform.bpw - plan.bpw < 0.02
            results[sensitivity, bpw] = (kld(prepared, plan), uniform_kld[quantizer, bpw])
    return results


@pytest.mark.slow
@pytest.mark.parametrize("sensitivity", SENSITIVITIES)
def test_allocation_is_no_worse_than_uniform_at_equal_size(klds, sensitivity):
    for bpw in SIZES:
        ours, uniform = klds[sensitivity, bpw]
        assert ours <= uniform, (sensitivity, bpw, ours, uniform)
