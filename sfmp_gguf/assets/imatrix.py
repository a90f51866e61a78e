"""The teacher's importance matrix: llama-imatrix on the calibration text, cached like any asset.

Reading and computing imatrix files is the core's (``sfmp_gguf.imatrix_io``).
"""

from __future__ import annotations

from pathlib import Path

from sfmp_gguf.assets.austen import austen_texts
from sfmp_gguf.assets.cache import artifact_files, ensure_artifact, sha256_file
from sfmp_gguf.assets.teacher import ARTIFACT as TEACHER_ARTIFACT
from sfmp_gguf.assets.teacher import GGUF_NAME as TEACHER_GGUF
from sfmp_gguf.assets.teacher import teacher
from sfmp_gguf.imatrix_io import load_imatrix, run_imatrix

ARTIFACT = "imatrix-teacher"
IMATRIX_NAME = "imatrix.gguf"
CTX = 512
CHUNKS = 64
THREADS = 2
VERSION = "imatrix-v1"  # bump when the command below changes


def teacher_imatrix() -> Path:
    """The teacher's imatrix (GGUF format), computed once on the calibration text and cached."""
    model = teacher()
    calib = austen_texts().calib_text
    recipe = {
        # the teacher's manifest records its GGUF's sha256 (verified by teacher() just above)
        "teacher_sha256": artifact_files(TEACHER_ARTIFACT)[TEACHER_GGUF],
        "calib_sha256": sha256_file(calib),
        "ctx": CTX,
        "chunks": CHUNKS,
        "version": VERSION,
    }
    folder = ensure_artifact(
        ARTIFACT, recipe,
        lambda tmp: run_imatrix(model.gguf_path, calib, tmp / IMATRIX_NAME, CTX, CHUNKS, THREADS))
    return folder / IMATRIX_NAME


if __name__ == "__main__":
    imatrix = teacher_imatrix()
    entries = load_imatrix(imatrix)
    print(f"imatrix: {imatrix} ({len(entries)} entries)")
