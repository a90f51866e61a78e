"""Mixture of experts: quality and speed of SFMP on a synthetic Qwen3-MoE against llama.cpp's types.

The model (``assets/synthetic.py``, MOE: 32 experts, 4 active) is random and heavy-tailed, so its
KLD is measured against its own F32 file, on the evaluation text, as the dense rows are. llama.cpp:
Q4_K_M, IQ4_XS and Q6_K (its mixed presets) with an imatrix of that model on the calibration text.
SFMP: the converter's default (Fisher on the built-in text) at several sizes, analysed once. Speed:
``llama-bench`` of each stock file and the SFMP file nearest it in size, in one run (the SFMP
expert tensors run MUL_MAT_ID from the SFMP_X8 buffer).

    python -m sfmp_gguf.bench.moe [--smoke --out DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from datetime import date
from pathlib import Path

from sfmp_gguf.atomic import write_text
from sfmp_gguf.bench import add_output_args, cached_file, cpu_name, output_dir
from sfmp_gguf.paths import cache_dir

STOCK = ("Q4_K_M", "IQ4_XS", "Q6_K")
SFMP_BPW = (4.0, 4.25, 4.5, 5.0, 6.5)
CTX, CHUNKS = 512, 12
SMOKE = {"stock": ("Q4_K_M",), "bpw": (4.5,), "ctx": 128, "chunks": 2, "prompt": 32, "gen": 8, "reps": 1}
FULL = {"stock": STOCK, "bpw": SFMP_BPW, "ctx": CTX, "chunks": CHUNKS, "prompt": 512, "gen": 128, "reps": 2}
TINY_MOE = {"hidden_size": 256, "moe_intermediate_size": 256, "intermediate_size": 512, "num_experts": 8,
            "num_experts_per_tok": 2, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 64}


def run(out_dir: Path, smoke: bool, threads: int, log=print) -> dict:
    from sfmp_gguf.model_source import use_pinned_gguf_py

    use_pinned_gguf_py()
    from sfmp_gguf import allocation, pipeline
    from sfmp_gguf.assets.austen import austen_texts
    from sfmp_gguf.assets.synthetic import synthetic_moe, teacher_vocab, write_hf_model
    from sfmp_gguf.bench import quality, speed
    from sfmp_gguf.bench.roundtrip import _sha256, quantize_model
    from sfmp_gguf.format import GRIDS
    from sfmp_gguf.imatrix_io import run_imatrix
    from sfmp_gguf.model_source import open_model

    settings = SMOKE if smoke else FULL
    texts = austen_texts()
    with tempfile.TemporaryDirectory(prefix="sfmp-bench-moe-") as tmp_dir:
        tmp = Path(tmp_dir)
        if smoke:
            from transformers import Qwen3MoeConfig

            hf_dir = tmp / "hf"
            write_hf_model(Qwen3MoeConfig(**TINY_MOE, **teacher_vocab(), tie_word_embeddings=False), hf_dir)
        else:
            hf_dir = synthetic_moe()
        source = open_model(hf_dir)
        n_weights = sum(t.n_elements for t in source.tensors)
        identity = (hf_dir / "model.safetensors.index.json").read_text() + (hf_dir / "config.json").read_text()
        log("F32 file")
        if smoke:
            f32 = tmp / "f32.gguf"
            pipeline.write_float(source, f32)
        else:
            f32 = cached_file("moe-f32", identity, ".gguf", lambda p: pipeline.write_float(source, p))
        f32_sha = _sha256(f32)
        log("imatrix")
        imatrix = cached_file("moe-imatrix", f32_sha + _sha256(texts.calib_text), ".gguf", lambda p: run_imatrix(
            f32, texts.calib_text, p, 512, 64, threads))
        base = quality.teacher_logits(f32, texts.eval_text, settings["ctx"], settings["chunks"], threads)
        args = (base, texts.eval_text, n_weights, settings["ctx"], settings["chunks"], threads)

        scores, files = [], {}
        folder = "moe-smoke" if smoke else "moe"
        for qtype in settings["stock"]:
            log(f"llama.cpp + imatrix {qtype}")
            files[qtype] = quantize_model(f32, f32_sha, imatrix, qtype, cache_dir() / "bench" / folder, threads,
                                          pure=False)
            scores.append(quality.score(files[qtype], base, texts.eval_text, qtype, "llama.cpp + imatrix",
                                        n_weights, settings["ctx"], settings["chunks"], threads))
        log("SFMP: analysis")
        prepared = pipeline.prepare(hf_dir, None, None, None, threads)
        family = f"SFMP {prepared.sensitivity}"
        for bpw in settings["bpw"]:
            log(f"{family} {bpw:g} bpw")
            out = tmp / f"sfmp-{bpw:g}.gguf"
            plan = allocation.no_larger(lambda b: pipeline.plan(prepared, b, GRIDS), bpw)
            scores.append(quality.write_and_score(prepared, plan, out, *args, label=f"{bpw:g}", family=family))
            files[f"sfmp {bpw:g} bpw"] = out

        sizes = {name: path.stat().st_size for name, path in files.items()}
        sfmp_names = tuple(n for n in files if n.startswith("sfmp"))
        matched = speed.pairs(sizes, settings["stock"][:2], sfmp_names)
        measured = {name: files[name] for pair in matched for name in pair}
        log("llama-bench")
        speeds = speed.bench_files(measured, settings["prompt"], settings["gen"], settings["reps"], threads)
        results = {name: speed.Result(name, sizes[name], *speeds[name]) for name in measured}

    machine = f"{date.today().isoformat()}, {cpu_name()}, {threads} threads"
    setup = (f"Synthetic Qwen3-MoE ({'tiny, smoke' if smoke else 'assets/synthetic.py MOE'}), "
             f"{n_weights / 1e6:.0f}M weights; KLD against its own F32 file, `llama-perplexity --kl-divergence "
             f"-c {settings['ctx']} --chunks {settings['chunks']}` on the Austen evaluation text; {machine}.")
    speed_setup = (f"`llama-bench -t {threads} -p {settings['prompt']} -n {settings['gen']} -r {settings['reps']}`, "
                   f"one run; {machine}.")
    raw = {"setup": setup, "speed_setup": speed_setup, "scores": [asdict(s) for s in scores],
           "speed": [asdict(r) for r in results.values()], "matched": matched}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "moe.json", json.dumps(raw, indent=1))
    render(out_dir)
    return raw


def render(out_dir: Path) -> None:
    """moe.md, moe-quality.png and moe-speed.png from moe.json."""
    from sfmp_gguf.bench import quality, speed

    raw = json.loads((out_dir / "moe.json").read_text())
    scores = [quality.Score(**s) for s in raw["scores"]]
    results = {r["name"]: speed.Result(**r) for r in raw["speed"]}
    matched = [tuple(pair) for pair in raw["matched"]]
    title = "Mixture of experts: quality at equal size"
    text = (quality.markdown(scores, title, raw["setup"]) +
            "\n## Each SFMP file against llama.cpp's frontier (with imatrix) at its size\n\n" +
            quality.target_table(scores) + "\n" +
            speed.markdown(results, matched, "Mixture of experts: speed at equal size", raw["speed_setup"])
            .replace("# Mixture", "## Mixture", 1))
    write_text(out_dir / "moe.md", text)
    quality.plot(scores, out_dir / "moe-quality.png", title)
    speed.plot(results, out_dir / "moe-speed.png", "Mixture of experts: speed at equal size")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_args(parser, "a tiny model, one size and one stock type (checks the pipeline, not the numbers)")
    args = parser.parse_args(argv)
    run(output_dir(parser, args), args.smoke, args.threads, log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
