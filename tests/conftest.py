"""Shared test helpers: running the CLI in-process and comparing against golden files."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from pvgen.cli import main

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = os.environ.get("PVGEN_REGENERATE") == "1"


def run_cli(*args: str, cwd: Path = ROOT) -> tuple[int, str, str]:
    """Runs `pvgen ARGS` in-process from cwd; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit_:
                code = int(exit_.code or 0)
    finally:
        os.chdir(previous)
    return code, out.getvalue(), err.getvalue()


def check_golden(path: Path, actual: str) -> None:
    """Compares actual with the golden file; PVGEN_REGENERATE=1 rewrites it instead."""
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    if not path.exists():
        pytest.fail(f"golden file {path.relative_to(ROOT)} is missing; run with PVGEN_REGENERATE=1 to create it")
    expected = path.read_text()
    if actual != expected:
        pytest.fail(
            f"output differs from {path.relative_to(ROOT)}; if the change is intended, "
            f"rerun with PVGEN_REGENERATE=1\n--- expected\n{expected}\n--- actual\n{actual}"
        )
