"""Broken input of any kind gives located errors, never a traceback."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, run_cli

HEADER = re.compile(r"^[^\s:][^:]*:\d+:\d+: error: \S")
TOKENS = [
    "{",
    "}",
    "(",
    ")",
    ";",
    ",",
    ":",
    "*",
    "///",
    "//",
    '"',
    '"""',
    "\n",
    " ",
    "op",
    "arch",
    "group",
    "native",
    "xen",
    "asm",
    "call",
    "0x40",
    "-1",
    "void",
    "unsigned",
    "long",
    "x86_64",
    "irq",
    "category",
    "patchable",
    "include",
    "\\",
    "\t",
    "é",
    "\x00",
]


def _assert_located(code: int, err: str) -> None:
    assert code in (0, 1), err
    assert "Traceback" not in err
    if code == 1:
        headers = [line for line in err.splitlines() if ": error: " in line and not line.startswith(" ")]
        assert headers, err
        for line in headers:
            assert HEADER.match(line), line


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(TOKENS) | st.text(max_size=4), max_size=60))
def test_random_token_soup(tmp_path: Path, pieces: list[str]) -> None:
    (tmp_path / "soup.pvspec").write_text("".join(pieces), encoding="utf-8", errors="surrogatepass")
    _assert_located(*_run(tmp_path, "soup.pvspec"))


def _run(cwd: Path, path: str) -> tuple[int, str]:
    code, _, err = run_cli("check", path, cwd=cwd)
    return code, err


SPEC_FILES = sorted(p.relative_to(ROOT / "spec") for p in (ROOT / "spec").rglob("*.pvspec"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(SPEC_FILES),
    st.lists(st.tuples(st.floats(0, 1), st.integers(0, 12), st.sampled_from(TOKENS)), min_size=1, max_size=4),
)
def test_mutated_real_spec(tmp_path: Path, victim: Path, edits: list[tuple[float, int, str]]) -> None:
    copy = tmp_path / "spec"
    if not copy.exists():
        shutil.copytree(ROOT / "spec", copy)
    target = copy / victim
    original = (ROOT / "spec" / victim).read_text()
    text = original
    for where, cut, insert in edits:
        at = int(where * len(text))
        text = text[:at] + insert + text[at + cut :]
    target.write_text(text)
    try:
        _assert_located(*_run(tmp_path, "spec/pvops.pvspec"))
    finally:
        target.write_text(original)
