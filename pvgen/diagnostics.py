"""Diagnostics: collected, sorted and rendered as `path:line:col: error: ...` with a caret."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from pvgen.source import SourceFile, SourceSpan


@attrs.frozen
class Note:
    """A secondary location of a diagnostic: the first definition, a cycle member."""

    message: str
    span: SourceSpan | None = None


@attrs.frozen
class Diagnostic:
    """One error, with the notes that name every other party to it."""

    span: SourceSpan
    message: str
    notes: tuple[Note, ...] = ()
    severity: str = "error"

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.span.path, self.span.line, self.span.col, self.message)


class Diagnostics:
    """Collects diagnostics over a whole run; never stops at the first one."""

    def __init__(self) -> None:
        self._items: list[Diagnostic] = []

    def error(self, span: SourceSpan, message: str, *notes: Note) -> None:
        self._items.append(Diagnostic(span, message, tuple(notes)))

    def extend(self, items: Iterable[Diagnostic]) -> None:
        self._items.extend(items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def sorted(self) -> list[Diagnostic]:
        unique = {(d.sort_key(), d.notes): d for d in self._items}
        return [unique[key] for key in sorted(unique, key=lambda k: k[0])]


def expected_one_of(words: Iterable[str]) -> str:
    """'expected one of: a, b, c', the allowed set in sorted order."""
    allowed = sorted(set(words))
    if not allowed:
        return "nothing is declared that could match"
    return "expected one of: " + ", ".join(allowed)


def _caret_lines(span: SourceSpan, files: Mapping[str, SourceFile]) -> list[str]:
    source = files.get(span.path)
    if source is None:
        return []
    text = source.line_text(span.line)
    if not text:
        return []
    end = span.end_col if span.end_line == span.line else len(text) + 1
    width = max(1, end - span.col)
    prefix = "".join(ch if ch == "\t" else " " for ch in text[: span.col - 1])
    return [text, prefix + "^" + "~" * (width - 1)]


def render(diagnostic: Diagnostic, files: Mapping[str, SourceFile]) -> str:
    """The full text of one diagnostic: header, source line, caret, notes."""
    lines = [f"{diagnostic.span}: {diagnostic.severity}: {diagnostic.message}"]
    lines += _caret_lines(diagnostic.span, files)
    for note in diagnostic.notes:
        if note.span is None:
            lines.append(f"note: {note.message}")
        else:
            lines.append(f"{note.span}: note: {note.message}")
            lines += _caret_lines(note.span, files)
    return "\n".join(lines)


def render_all(diagnostics: Sequence[Diagnostic], files: Mapping[str, SourceFile]) -> str:
    body = "\n".join(render(d, files) for d in diagnostics)
    count = len(diagnostics)
    summary = f"{count} error{'s' if count != 1 else ''} generated."
    return f"{body}\n{summary}\n" if body else ""
