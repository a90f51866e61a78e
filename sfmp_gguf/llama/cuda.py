"""CUDA without a GPU: compile-check our CUDA code here, and pack a device run for a lent GPU.

The whole ggml-cuda backend takes hours on two cores, so CI compiles only the CUDA files that the
patch adds or changes, for sm_80 and sm_90. This machine's CUDA toolkit has no cuBLAS headers, which
ggml-cuda includes; they come from the nvidia-cublas wheel on PyPI (hash-checked, headers only kept).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from sfmp_gguf.assets.cache import ensure_artifact, sha256_file
from sfmp_gguf.llama.build import prepare_tree
from sfmp_gguf.llama.patch import HUNKS_FILE, our_files, patched_paths
from sfmp_gguf.llama.source import llama_source
from sfmp_gguf.paths import REPO_ROOT, cache_dir

CUBLAS_WHEEL = "nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_x86_64.whl"
CUBLAS_SHA256 = "0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c"
CUBLAS_HEADER_PREFIX = "nvidia/cu13/include/"
DEFAULT_ARCHS = (80, 90)
CUDA_DIR = "ggml/src/ggml-cuda/"
NVCC_FLAGS = ["-std=c++17", "-O3", "-use_fast_math", "-extended-lambda"]
# Parts of the llama.cpp tree a CUDA build needs; the rest (models, docs, web UI assets) stays here.
# tools/ui keeps only its CMakeLists.txt, which configures a server without the embedded UI.
DEVICE_TREE_PARTS = ("CMakeLists.txt", "cmake", "common", "ggml", "include", "src", "tests", "tools", "vendor",
                     "licenses", "LICENSE", "scripts/ui-assets.cmake")


def _device_member(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "/ui/" in info.name and info.name != "tools/ui/CMakeLists.txt" else info


class CudaError(RuntimeError):
    """A one-line, user-facing problem with the CUDA checks."""


def _fetch_cublas_headers(folder: Path) -> None:
    downloads = cache_dir() / "downloads"
    with tempfile.TemporaryDirectory(dir=downloads if downloads.is_dir() else None) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
               "--platform", "manylinux_2_27_x86_64", "nvidia-cublas==13.0.2.14", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(tmp) / CUBLAS_WHEEL
        if result.returncode != 0 or not wheel.is_file():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise CudaError(f"pip could not download nvidia-cublas 13.0.2.14: {last}")
        if sha256_file(wheel) != CUBLAS_SHA256:
            raise CudaError(f"{CUBLAS_WHEEL}: sha256 differs from the pinned {CUBLAS_SHA256}")
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.startswith(CUBLAS_HEADER_PREFIX) and name.endswith(".h"):
                    (folder / Path(name).name).write_bytes(archive.read(name))


def cublas_include_dir() -> Path:
    return ensure_artifact("cublas-headers", {"wheel_sha256": CUBLAS_SHA256, "version": 1}, _fetch_cublas_headers)


def changed_cuda_files() -> list[str]:
    """The .cu files the patch adds or changes (headers are compiled through them)."""
    paths = set(patched_paths(HUNKS_FILE.read_text())) | set(our_files())
    return sorted(p for p in paths if p.startswith(CUDA_DIR) and p.endswith(".cu"))


def compile_check(archs: tuple[int, ...] = DEFAULT_ARCHS, out_dir: Path | None = None) -> list[Path]:
    """Compile every changed CUDA file of the patched tree for ``archs``; returns the objects."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise CudaError("nvcc not found: install the CUDA toolkit to compile-check the CUDA code")
    tree = prepare_tree(llama_source())
    out_dir = out_dir or cache_dir() / "cuda-check"
    out_dir.mkdir(parents=True, exist_ok=True)
    launcher = [shutil.which("ccache")] if shutil.which("ccache") else []
    gencode = [arg for a in archs for arg in ("-gencode", f"arch=compute_{a},code=sm_{a}")]
    includes = [f"-I{tree / 'ggml/include'}", f"-I{tree / 'ggml/src'}", f"-I{tree / CUDA_DIR}",
                f"-I{cublas_include_dir()}"]
    objects = []
    for rel in changed_cuda_files():
        obj = out_dir / (Path(rel).stem + ".o")
        cmd = [*launcher, nvcc, *NVCC_FLAGS, *gencode, *includes, "-c", str(tree / rel), "-o", str(obj)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line]
            raise CudaError(f"{rel}: nvcc failed: {(errors or result.stderr.splitlines() or ['?'])[0]}")
        objects.append(obj)
    missing = missing_sfmp_symbols(objects)
    if missing:
        name = subprocess.run(["c++filt", missing[0]], capture_output=True, text=True).stdout.strip() or missing[0]
        raise CudaError(f"{name}: the patched CUDA code calls it but no object defines it (a missing template "
                        f"instance: the link would fail)")
    return objects


def _symbols(obj: Path, which: str) -> set[str]:
    listing = subprocess.run(["nm", which, str(obj)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in listing.splitlines() if line.strip()}


def missing_sfmp_symbols(objects: list[Path]) -> list[str]:
    """The SFMP functions that ``objects`` call and none of them defines (mangled names)."""
    defined = set().union(*(_symbols(obj, "--defined-only") for obj in objects))
    called = set().union(*(_symbols(obj, "--undefined-only") for obj in objects))
    return sorted(name for name in called - defined if "sfmp" in name)


def pack_device_source(dest: Path) -> Path:
    """A tarball of the pinned llama.cpp parts a CUDA build needs, small enough to travel to a GPU."""
    source = llama_source()
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    with tarfile.open(partial, "w:xz") as tar:
        for part in DEVICE_TREE_PARTS:
            if (source.tree / part).exists():
                tar.add(source.tree / part, arcname=part, filter=_device_member)
    partial.replace(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="compile the CUDA files the patch adds or changes")
    check.add_argument("--arch", type=int, action="append", help="SM version (default: 80 and 90)")
    pack = sub.add_parser("pack-device", help="pack the llama.cpp source for a GPU machine")
    pack.add_argument("-o", "--output", type=Path, default=REPO_ROOT / ".device" / "llama-src.tar.xz")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            for obj in compile_check(tuple(args.arch or DEFAULT_ARCHS)):
                print(f"compiled {obj}")
        else:
            print(pack_device_source(args.output))
    except CudaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
