"""Our ggml patch: our own source files, copied into the tree, plus the hunks that register them.

``ggml_patch/files/`` mirrors the llama.cpp layout and holds only our code. ``ggml_patch/register.patch``
holds only the hunks that hook it in (enums, type-traits rows, dispatch cases, CMake lists).

Applying works out each touched file's desired content from the pristine tree first, then writes
only files whose content differs. So re-applying is a no-op that leaves mtimes alone (the build stays
incremental), a changed patch replaces the old one cleanly, and a tree that differs from the one
the patch was written for fails before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sfmp_gguf.paths import FILES_DIR, HUNKS_FILE, REPO_ROOT, patched_tree

STATE_FILE = ".sfmp-patch.json"
_PATCHED_FILE = re.compile(r"^\+\+\+ b/(\S+)", re.M)


class PatchError(RuntimeError):
    """A one-line, user-facing reason why the patch cannot be applied."""


@dataclass(frozen=True)
class PatchResult:
    changed: tuple[str, ...]
    patch_hash: str


def our_files() -> dict[str, Path]:
    """Tree-relative path of each of our own source files."""
    return {str(p.relative_to(FILES_DIR)): p for p in sorted(FILES_DIR.rglob("*")) if p.is_file()}


def patched_paths(hunks: str) -> list[str]:
    return sorted(set(_PATCHED_FILE.findall(hunks)))


def patch_hash() -> str:
    """Hash of everything the patch puts into a tree; a build is stale when it changes."""
    digest = hashlib.sha256(HUNKS_FILE.read_bytes())
    for rel, path in our_files().items():
        digest.update(rel.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _failed_hunks(stderr: str) -> str:
    failures = re.findall(r"patch failed: (\S+)", stderr)
    if failures:
        return ", ".join(f"hunk at {where}" for where in failures)
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    return lines[0].removeprefix("error: ") if lines else stderr.strip() or "unknown git apply error"


def _desired_contents(pristine: Path, hunks: str, touched: set[str]) -> dict[str, bytes | None]:
    """Content every touched file should have after patching (None: the file must not exist)."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for rel in touched:
            src = pristine / rel
            if src.is_file():
                (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, scratch / rel)
        result = subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], input=hunks, text=True,
                                cwd=scratch, capture_output=True)
        if result.returncode != 0:
            raise PatchError(f"{HUNKS_FILE.relative_to(REPO_ROOT)}: {_failed_hunks(result.stderr)} "
                             f"does not apply to {pristine}")
        desired = {rel: (scratch / rel).read_bytes() if (scratch / rel).is_file() else None for rel in touched}
    for rel, path in our_files().items():
        desired[rel] = path.read_bytes()
    return desired


def apply_patch(pristine: Path, tree: Path) -> PatchResult:
    """Bring ``tree`` (a copy of ``pristine``) to pristine + our patch, writing only what differs."""
    hunks = HUNKS_FILE.read_text()
    state_path = tree / STATE_FILE
    previously = set(json.loads(state_path.read_text())["touched"]) if state_path.is_file() else set()
    touched = previously | set(patched_paths(hunks)) | set(our_files())
    desired = _desired_contents(pristine, hunks, touched)
    changed = []
    for rel, content in sorted(desired.items()):
        target = tree / rel
        current = target.read_bytes() if target.is_file() else None
        if current == content:
            continue
        changed.append(rel)
        if content is None:
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    now_touched = sorted(rel for rel, content in desired.items() if content != _pristine_bytes(pristine, rel))
    current_hash = patch_hash()
    state = json.dumps({"touched": now_touched, "patch_hash": current_hash}, indent=1)
    if not state_path.is_file() or state_path.read_text() != state:
        state_path.write_text(state)
    return PatchResult(changed=tuple(changed), patch_hash=current_hash)


def _pristine_bytes(pristine: Path, rel: str) -> bytes | None:
    path = pristine / rel
    return path.read_bytes() if path.is_file() else None


def sync_tree(pristine: Path, tree: Path) -> None:
    """Mirror ``pristine`` into ``tree``, copying only files whose size or mtime differ.

    Files the patch touched are left to ``apply_patch``, which owns their content.
    """
    state_path = tree / STATE_FILE
    owned = set(json.loads(state_path.read_text())["touched"]) if state_path.is_file() else set()
    for src in pristine.rglob("*"):
        if not src.is_file() or src.is_symlink():
            continue
        rel = str(src.relative_to(pristine))
        if rel in owned:
            continue
        dst = tree / rel
        stat = src.stat()
        if dst.is_file():
            dstat = dst.stat()
            if dstat.st_size == stat.st_size and int(dstat.st_mtime) == int(stat.st_mtime):
                continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def render_hunks(pristine: Path, edited: Path, paths: list[str]) -> str:
    """register.patch content for ``paths`` as edited in ``edited`` (for developers changing the hooks)."""
    chunks = []
    for rel in sorted(set(paths)):
        result = subprocess.run(["diff", "-u", "--label", f"a/{rel}", "--label", f"b/{rel}",
                                 str(pristine / rel), str(edited / rel)], capture_output=True, text=True)
        if result.returncode > 1:
            raise PatchError(f"diff failed on {rel}: {result.stderr.strip()}")
        chunks.append(result.stdout)
    return "".join(chunks)


def main(argv: list[str] | None = None) -> int:
    """Developer workflow: edit files in the cached patched tree, then rebuild register.patch from them."""
    import argparse
    import sys

    from sfmp_gguf.llama.source import llama_source

    parser = argparse.ArgumentParser(description="Regenerate ggml_patch/register.patch from hand edits "
                                                 "made in the cached patched tree")
    parser.add_argument("paths", nargs="*", help="tree-relative files to add to the patch")
    args = parser.parse_args(argv)
    source = llama_source()
    paths = patched_paths(HUNKS_FILE.read_text()) + list(args.paths)
    HUNKS_FILE.write_text(render_hunks(source.tree, patched_tree(source.key), paths))
    print(f"wrote {HUNKS_FILE} ({len(set(paths))} files)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
