"""Build the patched llama.cpp tools and our kernel library, in a cache outside the clone.

The build folder is keyed by the llama.cpp source (the pinned sdist hash, or the checkout path); the
patch hash is recorded beside it. A changed patch rewrites only the files it touches, so ninja and
ccache rebuild only what changed instead of the ~15-minute full build.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sfmp_gguf import paths
from sfmp_gguf.llama import bindings
from sfmp_gguf.llama.patch import PatchError, apply_patch, sync_tree
from sfmp_gguf.llama.source import LlamaSource, SourceError, llama_source
from sfmp_gguf.paths import KERNEL_LIBRARY, KERNEL_LIBRARY_AVX_VNNI, KERNEL_LIBRARY_VNNI, REPO_ROOT, cache_dir

TOOLS = ("llama-cli", "llama-server", "llama-quantize", "llama-perplexity", "llama-imatrix", "llama-bench",
         "test-quantize-fns", "test-backend-ops")


def not_built(path: Path, folder: Path) -> FileNotFoundError:
    """The one-line error for a program missing from build folder ``folder`` (``build-<variant>``),
    naming the command that builds that variant."""
    variant = folder.name.removeprefix("build-")
    command = "python -m sfmp_gguf.llama.build" + ("" if variant == "cpu" else f" --variant {variant}")
    return FileNotFoundError(f"{path}: not built; run `{command}`")


@dataclass(frozen=True)
class Build:
    """Where a finished build's programs live."""

    folder: Path

    @property
    def bin_dir(self) -> Path:
        return self.folder / "bin"

    def tool(self, name: str) -> Path:
        path = self.bin_dir / name
        if not path.is_file():
            raise not_built(path, self.folder)
        return path

    @property
    def kernel_library(self) -> Path:
        return self.folder / KERNEL_LIBRARY

    @property
    def kernel_library_vnni(self) -> Path:
        return self.folder / KERNEL_LIBRARY_VNNI

    @property
    def kernel_library_avx_vnni(self) -> Path:
        return self.folder / KERNEL_LIBRARY_AVX_VNNI


def patched_tree(source: LlamaSource) -> Path:
    """Where the patched copy of ``source`` lives (not brought up to date)."""
    return paths.patched_tree(source.key)


def prepare_tree(source: LlamaSource) -> Path:
    """The patched copy of ``source``, brought up to date."""
    tree = patched_tree(source)
    tree.mkdir(parents=True, exist_ok=True)
    sync_tree(source.tree, tree)
    apply_patch(source.tree, tree)
    return tree


# Debian's cross compiler; the target's libraries live under its sysroot.
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")
_AARCH64 = ("-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
            "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc", "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++",
            f"-DCMAKE_FIND_ROOT_PATH={AARCH64_SYSROOT}", "-DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER",
            "-DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY", "-DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY",
            "-DSFMP_NATIVE=OFF")
# x86-64 with AVX2 and nothing newer: what most laptops run (no AVX-512, no VNNI, no AMX).
_PLAIN_AVX2 = ("-DSFMP_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
               "-DGGML_BMI2=ON", "-DGGML_AVX_VNNI=OFF", "-DGGML_AVX512=OFF", "-DGGML_AVX512_VBMI=OFF",
               "-DGGML_AVX512_VNNI=OFF", "-DGGML_AVX512_BF16=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF",
               "-DGGML_AMX_BF16=OFF")
# The same with AVX-VNNI, the 256-bit VEX form that laptops from Alder Lake on have without AVX-512.
_AVX_VNNI = tuple(option.replace("-DGGML_AVX_VNNI=OFF", "-DGGML_AVX_VNNI=ON") for option in _PLAIN_AVX2)


@dataclass(frozen=True)
class Variant:
    """One build flavour: its CMake options and the targets built when none are named."""

    name: str
    cmake: tuple[str, ...]
    targets: tuple[str, ...]
    cross: bool = False


VARIANTS = {v.name: v for v in (
    Variant("cpu", (), ("sfmp_tools",)),
    Variant("cuda", ("-DSFMP_CUDA=ON",), ("sfmp_tools",)),
    Variant("asan", ("-DSFMP_SANITIZE=ON",), ("sfmp_fuzz_loader",)),
    Variant("avx2", _PLAIN_AVX2, ("llama-bench", "llama-cli")),
    Variant("avx-vnni", _AVX_VNNI, ("llama-bench",)),
    Variant("aarch64-dotprod", _AARCH64 + ("-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod",),
            ("llama-cli", "llama-perplexity"), cross=True),
    Variant("aarch64-i8mm", _AARCH64 + ("-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+i8mm",),
            ("llama-cli", "llama-perplexity"), cross=True),
)}
assert tuple(VARIANTS) == paths.BUILD_VARIANTS


def build_folder(source: LlamaSource, variant: str = "cpu") -> Path:
    """paths.build_folder, where the core (kernels.py) looks for the library without importing this module."""
    return paths.build_folder(source.key, variant)


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CCACHE_DIR", str(cache_dir() / "ccache"))
    # Relative paths in ccache's hash let a rebuilt tree at the same place reuse every object.
    env.setdefault("CCACHE_BASEDIR", str(cache_dir()))
    env.setdefault("CCACHE_MAXSIZE", "5G")
    return env


def build(variant: str = "cpu", jobs: int | None = None, targets: tuple[str, ...] | None = None,
          cuda_archs: str | None = None) -> Build:
    flavour = VARIANTS[variant]
    source = llama_source()
    tree = prepare_tree(source)
    folder = build_folder(source, variant)
    configure = ["cmake", "-S", str(REPO_ROOT), "-B", str(folder), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DSFMP_LLAMA_CPP_DIR={tree}", *flavour.cmake]
    if cuda_archs:
        configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_archs}")
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    if shutil.which("ccache"):
        configure += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache",
                      "-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"]
    env = _build_env()
    if not (folder / "CMakeCache.txt").is_file():
        subprocess.run(configure, check=True, env=env)
    cmd = ["cmake", "--build", str(folder), "--target", *(targets or flavour.targets),
           "-j", str(jobs or os.cpu_count() or 2)]
    subprocess.run(cmd, check=True, env=env)
    return Build(folder)


def current_build(variant: str = "cpu") -> Build:
    """The cached ``variant`` build for the current source, without building or fetching the source."""
    return Build(paths.build_folder(variant=variant))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=tuple(VARIANTS), default="cpu",
                        help="the build flavour, each in its own folder: cpu (this machine's SIMD), cuda, "
                             "asan (AddressSanitizer + UndefinedBehaviorSanitizer, the fuzz harness), avx2 (plain "
                             "AVX2 as on most laptops), avx-vnni (AVX2 with AVX-VNNI, as on newer laptops), "
                             "aarch64-dotprod and aarch64-i8mm (cross-compiled, run under qemu)")
    parser.add_argument("--cuda", action="store_const", dest="variant", const="cuda", help="--variant cuda")
    parser.add_argument("--sanitize", action="store_const", dest="variant", const="asan", help="--variant asan")
    parser.add_argument("--jobs", "-j", type=int, default=None)
    parser.add_argument("--cuda-archs", help="CMAKE_CUDA_ARCHITECTURES, e.g. 90 (default: llama.cpp's list)")
    parser.add_argument("--target", action="append", help="build only these targets (default: all tools)")
    parser.add_argument("--prepare-only", action="store_true", help="print the patched tree's path and stop")
    parser.add_argument("--python-bindings", action="store_true",
                        help="build nothing: install llama-cpp-python into this Python, running this build's "
                             "libraries (the CPU build, or the CUDA one with --cuda)")
    args = parser.parse_args(argv)
    if args.python_bindings and args.variant not in ("cpu", "cuda"):
        parser.error("--python-bindings runs the CPU or CUDA build")
    try:
        if args.prepare_only:
            print(prepare_tree(llama_source()))
            return 0
        if args.python_bindings:
            command = bindings.BUILD_COMMAND + (" --cuda" if args.variant == "cuda" else "")
            print(bindings.install(current_build(args.variant).bin_dir, command))
            return 0
        start = time.monotonic()
        result = build(args.variant, jobs=args.jobs, targets=tuple(args.target) if args.target else None,
                       cuda_archs=args.cuda_archs)
    except (SourceError, PatchError, bindings.BindingsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as err:
        print(f"error: build step failed ({' '.join(map(str, err.cmd[:3]))} ...), see output above", file=sys.stderr)
        return 1
    print(f"built {result.folder} in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
