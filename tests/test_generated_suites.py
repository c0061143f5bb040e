"""The generated suites catch mistakes: a spec mutated on purpose makes a generated test fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "spec", tmp_path / "spec")
    shutil.copytree(ROOT / "generated", tmp_path / "generated")
    return tmp_path


def _mutate(workspace: Path, relative: str, old: str, new: str) -> None:
    path = workspace / "spec" / relative
    text = path.read_text()
    assert old in text, f"the mutation's anchor {old!r} is gone from {relative}"
    path.write_text(text.replace(old, new, 1))


def _run_suite(workspace: Path, suite: str, selection: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(workspace / "generated" / "tests" / suite),
            "-k",
            selection,
        ],
        capture_output=True,
        text=True,
        cwd=workspace,
    )


def test_unmutated_suite_passes(workspace: Path) -> None:
    result = _run_suite(workspace, "test_x86_64_native.py", "irq_disable or queued_spin_unlock")
    assert result.returncode == 0, result.stdout + result.stderr


def test_wrong_template_fails_an_effect(workspace: Path) -> None:
    """irq_disable natively written as `sti`: it assembles and fits, but interrupts stay on."""
    _mutate(workspace, "x86_64/irq.pvspec", 'native asm "cli";', 'native asm "sti";')
    code, _, err = run_cli("build", cwd=workspace)
    assert code == 0, err  # nothing static is wrong with it
    result = _run_suite(workspace, "test_x86_64_native.py", "irq_disable")
    assert result.returncode == 1, result.stdout
    assert "test_declared_effect[irq.irq_disable" in result.stdout
    assert "effect `not IF` does not hold" in result.stdout


def test_wrong_clobbers_fail_the_clobber_check(workspace: Path) -> None:
    """queued_spin_unlock's template writes %rdx, outside its callee-save clobbers (rax).

    The build's static check rejects it; built with --no-verify, the generated suite must
    catch it by running the template on the model.
    """
    _mutate(
        workspace,
        "x86_64/lock.pvspec",
        'native asm "movb $0, (%rdi)";',
        'native asm "movb $0, (%rdi); xorl %edx, %edx";',
    )
    code, _, err = run_cli("build", cwd=workspace)
    assert code == 1 and "writes rdx, outside the op's clobbers (rax)" in err
    code, _, err = run_cli("build", "--no-verify", cwd=workspace)
    assert code == 0, err
    result = _run_suite(workspace, "test_x86_64_native.py", "queued_spin_unlock")
    assert result.returncode == 1, result.stdout
    assert "test_template_respects_its_clobbers[lock.queued_spin_unlock]" in result.stdout
    assert "changes ['rdx']" in result.stdout
