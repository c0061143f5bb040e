"""The abstract syntax tree: the uniform entry tree of a .pvspec file, with spans."""

from __future__ import annotations

import attrs

from pvgen.source import SourceSpan


@attrs.frozen
class Value:
    """One word of an entry: a name, an integer, a string or a `*`."""

    kind: str  # "name" | "int" | "string" | "star"
    text: str  # as written
    value: str | int
    span: SourceSpan


@attrs.frozen
class Param:
    """One parameter in parentheses: C words (`unsigned long val`) or `name: kind role`."""

    words: tuple[Value, ...]
    annotation: tuple[Value, ...]
    span: SourceSpan


@attrs.frozen
class Comment:
    """A `//` comment, kept so the formatter can put it back."""

    text: str
    span: SourceSpan


@attrs.frozen
class Entry:
    """A property (`args rdi, rsi;`) or a block (`op void halt(void) { ... }`)."""

    docs: tuple[str, ...]
    keyword: str
    keyword_span: SourceSpan
    groups: tuple[tuple[Value, ...], ...]
    params: tuple[Param, ...] | None
    children: tuple[Entry, ...] | None  # None for a property
    span: SourceSpan

    @property
    def is_block(self) -> bool:
        return self.children is not None

    @property
    def values(self) -> tuple[Value, ...]:
        return tuple(v for group in self.groups for v in group)


@attrs.frozen
class SyntaxFile:
    """One parsed file: its entries and its comments."""

    path: str
    entries: tuple[Entry, ...]
    comments: tuple[Comment, ...]
