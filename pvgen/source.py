"""Source files and spans: where every AST and IR node came from."""

from __future__ import annotations

import attrs


@attrs.frozen(order=True)
class SourceSpan:
    """A region of a spec file: 1-based line and column, end exclusive."""

    path: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"

    @property
    def location(self) -> str:
        """`path:line`, the form used in generated back-references."""
        return f"{self.path}:{self.line}"

    def to(self, other: SourceSpan) -> SourceSpan:
        """The span from the start of self to the end of other."""
        return SourceSpan(self.path, self.line, self.col, other.end_line, other.end_col)


@attrs.frozen
class SourceFile:
    """One spec file as read: its display path and text."""

    path: str
    text: str

    def line_text(self, line: int) -> str:
        # Lines end at \n only, as the lexer counts them (not at \f, \v or U+2028).
        lines = self.text.split("\n")
        return lines[line - 1] if 0 < line <= len(lines) else ""
