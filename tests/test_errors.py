"""The expected-error corpus: one small spec per error, with its exact rendered diagnostic."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT, check_golden, run_cli

CASES = sorted((ROOT / "tests" / "errors").glob("*.pvspec"))


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_error_case(case: Path) -> None:
    code, out, err = run_cli("check", f"tests/errors/{case.name}")
    assert code == 1, f"expected a spec error (exit 1), got {code}\n{err}"
    assert out == ""
    assert "Traceback" not in err
    check_golden(case.with_suffix(".err"), err)


def test_base_is_clean() -> None:
    code, _, err = run_cli("check", "tests/errors/base/base.pvspec")
    assert code == 0, err
