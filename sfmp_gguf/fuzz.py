"""Mutation fuzzer for the SFMP loader path: malformed GGUF files fed to the sanitizer-built harness.

``python -m sfmp_gguf.fuzz --cases 10000 [--seed N]`` takes a valid SFMP GGUF, and for every case
writes a copy with one to three mutations: flipped bytes anywhere, a truncation, or rewritten SFMP
block fields (the fp16 scale, NaN and Inf included; upgrade flags, which set each sub-block's
precision; amplitudes; code bytes) in rows of every SFMP type the file holds. Each copy goes to
``sfmp_fuzz_loader`` (tests/native/fuzz_loader.c, built by ``python -m sfmp_gguf.llama.build
--sanitize``), which loads it through llama.cpp's loader with tensor validation on and, when the file
is accepted, dequantizes and dots every SFMP tensor. Required: a clean rejection or a finite result
for every case, no sanitizer report, no crash.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sfmp_gguf.format import BY_ID
from sfmp_gguf.paths import CONVERTER

MUTATIONS = ("flip", "truncate", "scale", "flags", "amplitude", "codes")
_SPECIAL_SCALES = (b"\x00\x7c", b"\x00\xfc", b"\x01\x7c", b"\xff\x7b", b"\x01\x00", b"\x00\x00")  # Inf, -Inf, NaN, max, tiny, 0


@dataclass
class Region:
    """One SFMP tensor's bytes in the file."""

    offset: int
    n_bytes: int
    type_id: int


@dataclass
class Outcome:
    cases: int = 0
    accepted: int = 0
    rejected: int = 0
    by_mutation: Counter[str] = field(default_factory=Counter)

    def __add__(self, other: Outcome) -> Outcome:
        return Outcome(self.cases + other.cases, self.accepted + other.accepted, self.rejected + other.rejected,
                       self.by_mutation + other.by_mutation)


def harness_path() -> Path:
    """The sanitizer build's harness (``python -m sfmp_gguf.llama.build --sanitize --target sfmp_fuzz_loader``)."""
    from sfmp_gguf.llama.build import current_build

    return current_build("asan").bin_dir.parent / "sfmp_fuzz_loader"


def sfmp_regions(path: Path) -> list[Region]:
    from gguf import GGUFReader

    from sfmp_gguf import gguf_types

    gguf_types.register()
    reader = GGUFReader(path)
    return [Region(int(t.data_offset), int(t.n_bytes), int(t.tensor_type)) for t in reader.tensors
            if int(t.tensor_type) in BY_ID]


def mutate(data: bytearray, regions: list[Region], rng: random.Random) -> tuple[bytearray, list[str]]:
    """One to three mutations. Byte flips stay in the tensor data: flips in the metadata reach
    llama.cpp's own vocabulary loader, which aborts on some (see the README), not SFMP's code."""
    applied = []
    data_start = min(r.offset for r in regions)
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(MUTATIONS)
        applied.append(kind)
        if kind == "flip":
            for _ in range(rng.randint(1, 16)):
                if len(data) > data_start:
                    data[rng.randrange(data_start, len(data))] ^= 1 << rng.randrange(8)
            continue
        if kind == "truncate":
            del data[rng.randrange(len(data)):]
            continue
        region = rng.choice(regions)
        t = BY_ID[region.type_id]
        block = region.offset + t.type_size * rng.randrange(region.n_bytes // t.type_size)
        if block + t.type_size > len(data):
            continue  # cut off by an earlier truncation
        if kind == "scale":
            data[block:block + 2] = rng.choice(_SPECIAL_SCALES) if rng.random() < 0.7 else rng.randbytes(2)
        elif kind == "flags":
            j = block + t.sc_offset + rng.randrange(t.n_sub)
            data[j] ^= 0x80
        elif kind == "amplitude":
            j = block + t.sc_offset + rng.randrange(t.n_sub)
            data[j] = rng.randrange(256)
        else:
            start = block + t.base_offset
            data[start:block + t.type_size] = rng.randbytes(block + t.type_size - start)
    return data, applied


def _run_worker(data: bytes, regions: list[Region], harness: Path, cases: int, seed: int, tick) -> Outcome:
    rng = random.Random(seed)
    outcome = Outcome()
    # UBSan checks recover by default: halt_on_error turns the first report into a crash.
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1")
    with tempfile.TemporaryDirectory(prefix="sfmp-fuzz-") as tmp, open(Path(tmp) / "stderr.log", "w+") as log:
        case_path = Path(tmp) / "case.gguf"
        # stderr goes to a file: a pipe nobody reads fills up and blocks the harness mid-run.
        proc = subprocess.Popen([str(harness)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                text=True, env=env)
        try:
            for _ in range(cases):
                mutated, applied = mutate(bytearray(data), regions, rng)
                case_path.write_bytes(mutated)
                proc.stdin.write(f"{case_path}\n")
                proc.stdin.flush()
                answer = proc.stdout.readline().strip()
                if answer not in ("accepted", "rejected"):
                    proc.kill()
                    proc.wait()
                    log.seek(0)
                    tail = log.read()[-4000:]
                    crash = Path(tempfile.gettempdir()) / f"sfmp-fuzz-crash-{seed}-{outcome.cases}.gguf"
                    crash.write_bytes(mutated)
                    raise RuntimeError(f"case {outcome.cases} of seed {seed} ({'+'.join(applied)}) crashed the "
                                       f"harness; input kept at {crash}\n{tail}")
                outcome.cases += 1
                setattr(outcome, answer, getattr(outcome, answer) + 1)
                outcome.by_mutation.update(applied)
                tick()
        finally:
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait(timeout=60)
    return outcome


def run(base: Path, harness: Path, cases: int, seed: int, workers: int = 2, progress=None) -> Outcome:
    """``cases`` mutated files split over ``workers`` harness processes; worker k draws from seed
    (seed, k), so a run is reproducible for a given worker count."""
    from concurrent.futures import ThreadPoolExecutor

    data = base.read_bytes()
    regions = sfmp_regions(base)
    if not regions:
        raise ValueError(f"{base}: holds no SFMP tensor to mutate")
    tick = progress.update if progress is not None else (lambda n=1: None)
    shares = [cases // workers + (k < cases % workers) for k in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda k: _run_worker(data, regions, harness, shares[k], seed * 1000 + k, tick),
                              range(workers)))
    return sum(parts, Outcome())


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="harness processes in parallel")
    parser.add_argument("--base", type=Path, help="a valid SFMP GGUF (default: the fuzz base model)")
    args = parser.parse_args(argv)
    harness = harness_path()
    if not harness.is_file():
        print(f"error: {harness}: not built; run `python -m sfmp_gguf.llama.build --sanitize "
              f"--target sfmp_fuzz_loader`", file=sys.stderr)
        return 1
    base = args.base or fuzz_base()
    start = time.monotonic()
    with tqdm(total=args.cases, unit="case", disable=None) as bar:
        try:
            outcome = run(base, harness, args.cases, args.seed, args.workers, bar)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    print(f"{outcome.cases} cases ({outcome.accepted} accepted, {outcome.rejected} rejected), 0 crashes, "
          f"0 sanitizer reports, in {time.monotonic() - start:.0f} s with {args.workers} workers; "
          f"mutations applied: {dict(sorted(outcome.by_mutation.items()))}")
    return 0


def fuzz_base() -> Path:
    """The fuzz base: a slice of the demo teacher (its tokenizer, and the first 64 of its 576 hidden
    dimensions of two layers' weights), converted at 5.0 bpw, where both grids and both super-block sizes appear; cached.
    Small, so that a sanitizer build loads it thousands of times in minutes."""
    from sfmp_gguf.assets.cache import ensure_artifact
    from sfmp_gguf.assets.teacher import teacher

    def make(tmp: Path) -> None:
        small = tmp / "hf"
        slice_teacher(teacher().hf_dir, small)
        subprocess.run([sys.executable, str(CONVERTER), str(small), "-o", str(tmp / "fuzz-base.gguf"), "--bpw", "5.0",
                        "--sensitivity", "weights"],
                       check=True, capture_output=True)
        for p in small.iterdir():
            p.unlink()
        small.rmdir()

    folder = ensure_artifact("fuzz-base", {"layers": SLICE_LAYERS, "hidden": SLICE_HIDDEN, "ffn": SLICE_FFN,
                                           "bpw": 5.0, "version": "fuzz-base-v3"}, make)
    return folder / "fuzz-base.gguf"


SLICE_LAYERS, SLICE_HIDDEN, SLICE_FFN = 2, 64, 256


def slice_teacher(hf_dir: Path, out: Path) -> None:
    """A Hugging Face folder holding a slice of the teacher: its tokenizer and the leading rows and
    columns of its first layers' weights (one attention head of 64)."""
    import json
    import shutil

    from safetensors.numpy import load_file, save_file

    out.mkdir(parents=True)
    config = json.loads((hf_dir / "config.json").read_text())
    config.update(num_hidden_layers=SLICE_LAYERS, hidden_size=SLICE_HIDDEN, intermediate_size=SLICE_FFN,
                  num_attention_heads=1, num_key_value_heads=1)
    (out / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(hf_dir / name, out / name)
    keep = {}
    for name, value in load_file(str(hf_dir / "model.safetensors")).items():
        if name.startswith("model.layers.") and int(name.split(".")[2]) >= SLICE_LAYERS:
            continue
        rows = SLICE_FFN if ("gate_proj" in name or "up_proj" in name) else SLICE_HIDDEN
        cols = SLICE_FFN if "down_proj" in name else SLICE_HIDDEN
        if "embed_tokens" in name:
            keep[name] = value[:, :SLICE_HIDDEN].copy()
        elif value.ndim == 2:
            keep[name] = value[:rows, :cols].copy()
        else:
            keep[name] = value[:SLICE_HIDDEN].copy()
    save_file(keep, str(out / "model.safetensors"))


if __name__ == "__main__":
    sys.exit(main())
