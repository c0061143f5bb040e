"""The formatter: canonical, idempotent, comment-preserving, and meaning-preserving."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from pvgen.fmt import format_tree
from pvgen.parser import parse_text
from pvgen.syntax import Entry, SyntaxFile
from tests.conftest import ROOT, run_cli

SPEC_FILES = sorted((ROOT / "spec").rglob("*.pvspec"))


def _parse(path: str, text: str) -> SyntaxFile:
    tree, error = parse_text(path, text)
    assert error is None, error
    assert tree is not None
    return tree


def _shape(entry: Entry) -> tuple[object, ...]:
    """An entry without its spans: what the formatter must keep."""
    groups = tuple(tuple((v.kind, v.value) for v in g) for g in entry.groups)
    params = (
        None
        if entry.params is None
        else tuple((tuple(v.value for v in p.words), tuple(v.value for v in p.annotation)) for p in entry.params)
    )
    children = None if entry.children is None else tuple(_shape(c) for c in entry.children)
    return (entry.docs, entry.keyword, groups, params, children)


@pytest.mark.parametrize("path", SPEC_FILES, ids=[str(p.relative_to(ROOT)) for p in SPEC_FILES])
def test_spec_file_is_canonical(path: Path) -> None:
    text = path.read_text()
    tree = _parse(str(path), text)
    assert format_tree(tree) == text, "run `pvgen fmt spec` to format it"


@pytest.mark.parametrize("path", SPEC_FILES, ids=[str(p.relative_to(ROOT)) for p in SPEC_FILES])
def test_round_trip_keeps_meaning_and_comments(path: Path) -> None:
    tree = _parse("a", path.read_text())
    again = _parse("a", format_tree(tree))
    assert [_shape(e) for e in again.entries] == [_shape(e) for e in tree.entries]
    assert [c.text.rstrip() for c in again.comments] == [c.text.rstrip() for c in tree.comments]


MESSY = '''// header comment

/// doc one
arch   a{pointer_size 8 ;  // trailing
registers r1,r2,
   r3 ;


// a lone comment
  template x , y;}
op  unsigned long *f( const struct s * p , int  n ){
   native asm """
        mov r8 = r9
          nop
   """;
}
'''

CANONICAL = '''// header comment

/// doc one
arch a {
    pointer_size 8;  // trailing
    registers r1, r2, r3;

    // a lone comment
    template x, y;
}
op unsigned long *f(const struct s *p, int n) {
    native asm """
        mov r8 = r9
          nop
    """;
}
'''


def test_messy_input_becomes_canonical() -> None:
    formatted = format_tree(_parse("m", MESSY))
    assert formatted == CANONICAL
    assert format_tree(_parse("m", formatted)) == formatted


def test_long_lists_wrap_and_stay_stable() -> None:
    names = ", ".join(f"register{i}" for i in range(40))
    text = f"arch a {{\n    registers {names};\n}}\n"
    formatted = format_tree(_parse("w", text))
    assert all(len(line) <= 100 for line in formatted.splitlines())
    assert format_tree(_parse("w", formatted)) == formatted
    assert [_shape(e) for e in _parse("w", formatted).entries] == [_shape(e) for e in _parse("w", text).entries]


def test_fmt_check_reports_and_fmt_rewrites(tmp_path: Path) -> None:
    spec = tmp_path / "x.pvspec"
    spec.write_text(MESSY)
    code, out, _ = run_cli("fmt", "--check", str(spec), cwd=tmp_path)
    assert code == 1 and "would reformat" in out
    assert spec.read_text() == MESSY
    code, out, _ = run_cli("fmt", str(spec), cwd=tmp_path)
    assert code == 0 and spec.read_text() == CANONICAL
    stamp = spec.stat().st_mtime_ns
    code, out, _ = run_cli("fmt", str(spec), cwd=tmp_path)
    assert code == 0 and out == "" and spec.stat().st_mtime_ns == stamp


def test_fmt_refuses_broken_files(tmp_path: Path) -> None:
    spec = tmp_path / "bad.pvspec"
    spec.write_text("arch a {\n")
    code, _, err = run_cli("fmt", str(spec), cwd=tmp_path)
    assert code == 1 and "bad.pvspec:1:9: error: unexpected end of file" in err
    assert spec.read_text() == "arch a {\n"


def test_entries_are_attrs_frozen() -> None:
    tree = _parse("a", "x y;")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        tree.entries[0].keyword = "z"  # type: ignore[misc]
