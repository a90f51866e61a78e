"""The patch mechanism: applies, re-applies as a no-op, repairs drift, refuses a different tree."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from sfmp_gguf import codegen
from sfmp_gguf.format import FIRST_TYPE_ID
from sfmp_gguf.llama import patch
from sfmp_gguf.llama.build import prepare_tree
from sfmp_gguf.llama.source import checkout_source, SourceError


def _mini_pristine(source, dest: Path) -> Path:
    """Just the files the patch touches, copied from the real pinned tree."""
    for rel in patch.patched_paths(patch.HUNKS_FILE.read_text()):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source.tree / rel, dest / rel)
    return dest


def _snapshot(tree: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(tree)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in tree.rglob("*") if p.is_file()}


@pytest.mark.integration
def test_apply_then_reapply_is_a_noop(source, tmp_path):
    pristine = _mini_pristine(source, tmp_path / "pristine")
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree)

    first = patch.apply_patch(pristine, tree)
    assert set(patch.our_files()) <= set(first.changed)
    assert set(patch.patched_paths(patch.HUNKS_FILE.read_text())) <= set(first.changed)
    for rel, path in patch.our_files().items():
        assert (tree / rel).read_bytes() == path.read_bytes()

    before = _snapshot(tree)
    second = patch.apply_patch(pristine, tree)
    assert second.changed == ()
    assert _snapshot(tree) == before


@pytest.mark.integration
def test_apply_repairs_a_hand_edited_tree(source, tmp_path):
    pristine = _mini_pristine(source, tmp_path / "pristine")
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree)
    patch.apply_patch(pristine, tree)
    expected = _snapshot(tree)
    edited = next(iter(patch.our_files()))
    (tree / edited).write_text("/* stale */\n")

    result = patch.apply_patch(pristine, tree)
    assert result.changed == (edited,)
    assert {k: v[0] for k, v in _snapshot(tree).items()} == {k: v[0] for k, v in expected.items()}


@pytest.mark.integration
def test_different_tree_fails_naming_the_hunk_and_writes_nothing(source, tmp_path):
    pristine = _mini_pristine(source, tmp_path / "pristine")
    target = pristine / "ggml/src/CMakeLists.txt"
    target.write_text(target.read_text().replace("ggml-quants.h", "ggml-quants-renamed.h"))
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree)
    before = _snapshot(tree)

    with pytest.raises(patch.PatchError, match=r"register\.patch: hunk at ggml/src/CMakeLists\.txt:\d+"):
        patch.apply_patch(pristine, tree)
    assert _snapshot(tree) == before


@pytest.mark.integration
def test_cached_tree_carries_the_current_patch(source):
    tree = prepare_tree(source)
    state = json.loads((tree / patch.STATE_FILE).read_text())
    assert state["patch_hash"] == patch.patch_hash()
    assert set(patch.our_files()) <= set(state["touched"])


@pytest.mark.unit
def test_checkout_at_another_commit_warns(tmp_path, capsys):
    checkout = tmp_path / "llama.cpp"
    (checkout / "ggml/include").mkdir(parents=True)
    (checkout / "ggml/include/ggml.h").write_text("/* not the pinned tree */\n")
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)

    found = checkout_source(checkout)
    assert not found.pinned and found.tree == checkout.resolve()
    assert "not the pinned 0c1e570" in capsys.readouterr().err


@pytest.mark.unit
def test_checkout_that_is_not_llama_cpp_is_refused(tmp_path):
    with pytest.raises(SourceError, match="not a llama.cpp checkout"):
        checkout_source(tmp_path)


@pytest.mark.integration
def test_generated_c_table_is_current(source):
    upstream = codegen.upstream_type_count(source.tree)
    assert upstream == 43  # the pinned sdist's ggml.h
    assert codegen.TYPES_INC.read_text() == codegen.render_types_inc(upstream)
    with pytest.raises(ValueError, match="past SFMP's first id"):
        codegen.render_types_inc(FIRST_TYPE_ID + 1)


@pytest.mark.unit
def test_a_missing_tool_names_the_command_that_builds_its_variant(tmp_path):
    from sfmp_gguf.llama.build import not_built

    for folder, command in (("build-cpu", "python -m sfmp_gguf.llama.build"),
                            ("build-avx2", "python -m sfmp_gguf.llama.build --variant avx2")):
        path = tmp_path / folder / "bin" / "llama-bench"
        assert str(not_built(path, tmp_path / folder)) == f"{path}: not built; run `{command}`"
