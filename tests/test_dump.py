"""Golden IR dumps (`pvgen dump --json`) of the real spec and of a small one."""

from __future__ import annotations

import json

from tests.conftest import ROOT, check_golden, run_cli


def test_dump_of_spec_matches_golden() -> None:
    code, out, err = run_cli("dump", "--json")
    assert code == 0, err
    check_golden(ROOT / "tests" / "golden" / "spec.json", out)


def test_dump_of_small_spec_matches_golden() -> None:
    code, out, err = run_cli("dump", "--json", "tests/errors/base/base.pvspec")
    assert code == 0, err
    check_golden(ROOT / "tests" / "golden" / "base.json", out)


def test_dump_is_stable_and_versioned() -> None:
    first = run_cli("dump", "--json")[1]
    assert first == run_cli("dump", "--json")[1]
    document = json.loads(first)
    assert document["format"] == "pvgen-ir" and document["format_version"] == 1
    op = document["spec"]["groups"][0]["ops"][0]
    assert set(op) >= {"name", "group", "arch", "span", "category", "impls", "index", "qualname"}
    assert op["span"].startswith("spec/") and op["span"].count(":") == 2
