"""Jane Austen's six novels as plain text, from Debian's r-cran-janeaustenr, read without R.

The artifact holds ``<novel>.txt`` for each novel plus a fixed split: ``eval.txt`` (the opening of
Pride and Prejudice) and ``calib.txt`` (all of Emma), so evaluation and calibration never share text.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sfmp_gguf.assets.cache import ensure_artifact, sha256_file
from sfmp_gguf.assets.rdata import read_lazyload_db
from sfmp_gguf.paths import cache_dir

PACKAGE = "r-cran-janeaustenr"
PACKAGE_VERSION = "1.0.0-1"
DEB_FILE = "r-cran-janeaustenr_1.0.0-1_all.deb"
DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
DATA_DIR = "usr/lib/R/site-library/janeaustenr/data"
ARTIFACT = "austen"
RECIPE = {"deb_sha256": DEB_SHA256, "version": "austen-1"}  # bump version when the build changes

NOVELS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice",
          "sensesensibility")
EVAL_NOVEL = "prideprejudice"
EVAL_CHARS = 100_000
CALIB_NOVEL = "emma"


class AustenError(RuntimeError):
    """A one-line, user-facing problem fetching or reading the Austen package."""


@dataclass(frozen=True)
class AustenTexts:
    """The built artifact: one text file per novel, and the eval/calib split."""

    folder: Path
    eval_text: Path
    calib_text: Path

    def novel(self, name: str) -> Path:
        if name not in NOVELS:
            raise KeyError(f"unknown novel {name!r}; expected one of {', '.join(NOVELS)}")
        return self.folder / f"{name}.txt"


def fetch_deb(dest: Path) -> Path:
    """Download the pinned .deb into ``dest`` with apt-get (reusing a verified copy) and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    deb = dest / DEB_FILE
    if deb.is_file() and sha256_file(deb) == DEB_SHA256:
        return deb
    spec = f"{PACKAGE}={PACKAGE_VERSION}"
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        # apt warns that it downloads unsandboxed as root here; harmless, so stderr is only kept.
        try:
            result = subprocess.run(["apt-get", "download", spec], cwd=tmp, capture_output=True, text=True)
        except OSError as e:
            raise AustenError(f"apt-get could not download {spec}: {e}") from None
        fetched = Path(tmp) / DEB_FILE
        if result.returncode != 0 or not fetched.is_file():
            errors = [ln for ln in result.stderr.splitlines() if ln.startswith("E:")]
            last = (errors or result.stderr.strip().splitlines() or ["no output"])[-1]
            raise AustenError(f"apt-get could not download {spec}: {last}")
        digest = sha256_file(fetched)
        if digest != DEB_SHA256:
            raise AustenError(f"{DEB_FILE}: sha256 {digest} differs from the pinned {DEB_SHA256}")
        fetched.replace(deb)
    return deb


def _read_novels(deb: Path) -> dict[str, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(["dpkg-deb", "-x", str(deb), tmp], capture_output=True, text=True)
        if result.returncode != 0:
            raise AustenError(f"dpkg-deb could not extract {deb.name}: {result.stderr.strip()}")
        data = Path(tmp) / DATA_DIR
        db = read_lazyload_db(data / "Rdata.rdx", data / "Rdata.rdb")
    if sorted(db) != sorted(NOVELS):
        raise AustenError(f"{deb.name}: expected novels {sorted(NOVELS)}, found {sorted(db)}")
    novels: dict[str, list[str]] = {}
    for name in NOVELS:
        lines = db[name]
        if not isinstance(lines, list) or not all(isinstance(s, str) for s in lines):
            raise AustenError(f"{deb.name}: {name} is not a character vector without NA")
        novels[name] = lines
    return novels


def _head(lines: list[str], chars: int) -> str:
    """The shortest run of opening lines whose joined text reaches ``chars`` characters."""
    total = -1  # the first line has no "\n" before it
    for i, line in enumerate(lines):
        total += len(line) + 1
        if total >= chars:
            return "\n".join(lines[:i + 1])
    raise AustenError(f"text has only {total} characters, fewer than {chars}")


def _build(folder: Path) -> None:
    novels = _read_novels(fetch_deb(cache_dir() / "downloads"))
    for name, lines in novels.items():
        (folder / f"{name}.txt").write_bytes("\n".join(lines).encode("utf-8"))
    (folder / "eval.txt").write_bytes(_head(novels[EVAL_NOVEL], EVAL_CHARS).encode("utf-8"))
    (folder / "calib.txt").write_bytes("\n".join(novels[CALIB_NOVEL]).encode("utf-8"))


def austen_texts() -> AustenTexts:
    """Build (once, then from the cache) and return the Austen text artifact."""
    folder = ensure_artifact(ARTIFACT, RECIPE, _build)
    return AustenTexts(folder=folder, eval_text=folder / "eval.txt", calib_text=folder / "calib.txt")


def main() -> None:
    texts = austen_texts()
    print(f"folder: {texts.folder}")
    print(f"eval:   {texts.eval_text}")
    print(f"calib:  {texts.calib_text}")
    for name in NOVELS:
        print(f"{name}: {texts.novel(name)}")


if __name__ == "__main__":
    main()
