"""Install llama-cpp-python, the pinned sdist's own Python package, so that it runs our patched build.

``python -m sfmp_gguf.llama.build --python-bindings`` installs the ``llama_cpp`` package of the very
sdist we take llama.cpp from (0.3.36) into the running Python, without compiling its llama.cpp
(``CMAKE_ARGS=-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF``), and fills the package's ``lib`` folder, where
``llama_cpp`` loads ``libllama.so``, ``libggml.so`` and ``libmtmd.so`` from, with symbolic links to
the libraries of our build (``build-cpu/bin``, or ``build-cuda/bin`` with ``--cuda``).

Why this rather than compiling the sdist with its vendored tree replaced by our patched one:

- The package's ctypes declarations are written for the llama.cpp commit we pin; the patch only adds
  enum values to llama.h and ggml.h (no struct or signature changes), so the ABI is the same.
- Python then runs the very files llama-cli runs: same compiler flags, same kernels, same numbers.
  A second compile would use llama-cpp-python's own CMake settings and could differ, and would cost
  about 10 minutes on 2 cores (CI time) where this takes seconds.
- Links, not copies: the built libraries carry an absolute RUNPATH to their build folder, so a copy
  of ``libllama.so`` would still load its ggml libraries from there. A rebuild (a changed patch) is
  picked up with no reinstall.

The links and a marker naming the build are added to the package's RECORD, so ``pip uninstall
llama-cpp-python`` removes them too. A second run that finds the package and its links in place
does nothing. Nothing is downloaded but the pinned sdist, when it is not cached yet.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from sfmp_gguf import paths
from sfmp_gguf.llama.source import PINNED_COMMIT, SDIST_FILE, SDIST_VERSION, pinned_sdist

DISTRIBUTION = "llama_cpp_python"
SDIST_ROOT = f"llama_cpp_python-{SDIST_VERSION}"
MARKER = ".sfmp-build"  # in llama_cpp/lib: the build folder the links point into
REQUIRED_LIBRARIES = ("libllama.so", "libggml.so", "libggml-base.so")
BUILD_COMMAND = "python -m sfmp_gguf.llama.build"
# Module -> requirement: the sdist's build backend (pip runs it without build isolation) and the
# package's runtime dependencies (installed with --no-deps). pyproject.toml's `bindings` extra.
REQUIREMENTS = {
    "scikit_build_core": "scikit-build-core>=0.10",
    "diskcache": "diskcache>=5.6.1",
    "jinja2": "jinja2>=2.11.3",
    "typing_extensions": "typing-extensions>=4.5.0",
    "numpy": "numpy>=1.20.0",
}


class BindingsError(RuntimeError):
    """A one-line, user-facing problem installing the Python bindings."""


def libraries(bin_dir: Path, build_command: str = BUILD_COMMAND) -> list[str]:
    """The library names llama_cpp loads that the build at ``bin_dir`` provides; BindingsError when it
    is not built."""
    for name in REQUIRED_LIBRARIES:
        if not (bin_dir / name).exists():
            raise BindingsError(f"{bin_dir / name}: not built; run `{build_command}` first")
    names = {p.name for p in bin_dir.glob("libggml*.so")} | {"libllama.so"}
    if (bin_dir / "libmtmd.so").exists():
        names.add("libmtmd.so")
    return sorted(names)


def _installed_package() -> Path | None:
    """The installed llama_cpp folder when the pinned version is installed in this Python, else None."""
    importlib.invalidate_caches()
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    package = Path(dist.locate_file("llama_cpp"))
    if dist.version != SDIST_VERSION or not (package / "llama_cpp.py").is_file():
        return None
    return package


def _linked(lib_dir: Path, bin_dir: Path, names: list[str]) -> bool:
    marker = lib_dir / MARKER
    if not marker.is_file() or marker.read_text().strip() != str(bin_dir):
        return False
    return all((lib_dir / name).is_symlink() and os.readlink(lib_dir / name) == str(bin_dir / name)
               for name in names)


def _check_requirements() -> None:
    missing = [req for module, req in REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
    if missing:
        quoted = " ".join(f"'{req}'" for req in missing)
        raise BindingsError(f"llama-cpp-python needs Python packages that are missing: pip install {quoted}")


def _pip_install(sdist: Path) -> None:
    """Install the sdist's Python package, without its vendored llama.cpp, from no index."""
    with tempfile.TemporaryDirectory(prefix=".llama-cpp-python.", dir=paths.cache_dir()) as tmp:
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if not m.name.startswith(f"{SDIST_ROOT}/vendor/")]
            tar.extractall(tmp, members=members, filter="data")
        env = dict(os.environ, CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF")
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps", "--no-index",
               "--force-reinstall", str(Path(tmp) / SDIST_ROOT)]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip() and "WARNING" not in line]
        raise BindingsError(f"pip could not install {SDIST_FILE}: {(lines or ['no output'])[-1].strip()}")


def _link(package: Path, bin_dir: Path, names: list[str]) -> None:
    lib_dir = package / "lib"
    lib_dir.mkdir(exist_ok=True)
    for old in lib_dir.iterdir():
        if old.name.endswith(".so") or ".so." in old.name or old.name == MARKER:
            old.unlink()
    for name in names:
        (lib_dir / name).symlink_to(bin_dir / name)
    (lib_dir / MARKER).write_text(f"{bin_dir}\n")
    _record([f"llama_cpp/lib/{name}" for name in [*names, MARKER]])


def _record(entries: list[str]) -> None:
    """Add ``entries`` (paths relative to site-packages) to the distribution's RECORD."""
    dist = importlib.metadata.distribution(DISTRIBUTION)
    record = next((Path(f.locate()) for f in dist.files or () if f.name == "RECORD"), None)
    if record is None:
        return
    listed = {line.split(",", 1)[0] for line in record.read_text().splitlines()}
    new = [f"{entry},,\n" for entry in entries if entry not in listed]
    if new:
        with record.open("a") as out:
            out.writelines(new)


def install(bin_dir: Path, build_command: str = BUILD_COMMAND) -> str:
    """Make ``import llama_cpp`` in this Python run the libraries in ``bin_dir``, which ``build_command``
    builds; returns a summary line."""
    start = time.monotonic()
    bin_dir = bin_dir.resolve()
    names = libraries(bin_dir, build_command)
    package = _installed_package()
    if package is not None and _linked(package / "lib", bin_dir, names):
        return f"llama_cpp {SDIST_VERSION} already runs {bin_dir}"
    if paths.checkout_dir() is not None:
        print(f"warning: llama-cpp-python {SDIST_VERSION} is written for llama.cpp {PINNED_COMMIT}; "
              f"this build is of {paths.checkout_dir()}", file=sys.stderr)
    if package is None or not (package / "lib" / MARKER).is_file():
        _check_requirements()
        _pip_install(pinned_sdist())
        package = _installed_package()
        if package is None:
            raise BindingsError(f"pip installed {SDIST_FILE}, but {DISTRIBUTION} {SDIST_VERSION} is not importable "
                                f"from {sys.executable}")
    _link(package, bin_dir, names)
    return f"llama_cpp {SDIST_VERSION} runs {bin_dir} (set up in {time.monotonic() - start:.0f} s)"
